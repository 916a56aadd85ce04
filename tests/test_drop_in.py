"""nn.LSTM's calling conventions: flatten_parameters, hx=, unbatched input, PackedSequence
(sorted and unsorted, batch_first or not), against nn.LSTM on the same weights; unbatched input
and PackedSequence for every cell (the `cell` fixture) against its nn peer (nn.LSTM, nn.LSTM
with proj_size, nn.GRU); a packed chunk inside a stream against the reference (every cell);
and the bad input of each."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence

from tbptt_cuda import TruncatedLSTM
from tbptt_cuda.reference import ReferenceStream

from helpers import (TOLERANCE, fresh_leaves, leaf_state, make_rnn, nn_pair, out_size, rel_err,
                     split_state, state_loss)

DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]


def _pair(device, dtype, layers=2, batch_first=False, I=3, H=5, k2=None):
    theirs = nn.LSTM(I, H, layers, batch_first=batch_first).to(device, dtype)
    ours = TruncatedLSTM(I, H, layers, batch_first=batch_first, k2=k2, device=device, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


def test_flatten_parameters_is_a_no_op(device):
    lstm = TruncatedLSTM(3, 4, 2, device=device)
    assert lstm.flatten_parameters() is None
    lstm = lstm.to(device)
    assert lstm.flatten_parameters() is None
    out, _ = lstm(torch.randn(2, 1, 3, device=device))
    assert out.shape == (2, 1, 4)


def test_hx_keyword_as_nn_lstm(device):
    ours, theirs = _pair(device, torch.float64)
    x = torch.randn(4, 2, 3, device=device, dtype=torch.float64)
    hx = (torch.randn(2, 2, 5, device=device, dtype=torch.float64),
          torch.randn(2, 2, 5, device=device, dtype=torch.float64))
    a, (h_a, c_a) = ours(x, hx=hx)
    b, (h_b, c_b) = theirs(x, hx=hx)
    assert rel_err(a, b) <= 1e-10 and rel_err(h_a, h_b) <= 1e-10 and rel_err(c_a, c_b) <= 1e-10
    with pytest.raises(TypeError, match="pass the state once"):
        ours(x, hx, hx=hx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
def test_unbatched_input_equals_its_nn_peer(batch_first, dtype, cell, device):
    ours, theirs = nn_pair(cell, device, dtype, batch_first=batch_first)
    x = torch.randn(6, 3, device=device, dtype=dtype)  # [L, I]: batch_first does not apply
    state0, tensors = leaf_state(ours, None, device, dtype)
    O = out_size(ours)
    results = []
    for module in (ours, theirs):
        module.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        hx, leaves = fresh_leaves(state0, tensors)
        out, state = module(xi, hx)
        h, c = split_state(state)
        assert out.shape == (6, O) and h.shape == (2, O)
        assert c is None if cell == "gru" else c.shape == (2, 5)
        (out.pow(2).sum() + state_loss(state)).backward()
        results.append([out, h] + ([] if c is None else [c]) + [xi.grad]
                       + [t.grad for t in leaves] + _grads(module))
    for a, b in zip(*results):
        assert rel_err(a, b) <= TOLERANCE[dtype]


def test_unbatched_stream_continues_like_a_batch_of_one(cell, device):
    torch.manual_seed(0)
    rnn = make_rnn(cell, 3, 4, 2, k2=6, device=device, dtype=torch.float64)
    O = out_size(rnn)
    xs = [torch.randn(L, 3, device=device, dtype=torch.float64) for L in (3, 4, 2)]
    runs = []
    for batched in (False, True):
        state, record = None, []
        for x in xs:
            rnn.zero_grad(set_to_none=True)
            out, state = rnn(x.unsqueeze(1) if batched else x, state)
            (out.sum() + state_loss(state)).backward()
            h, c = split_state(state)
            record.append([out.reshape(-1, O).detach(), h.reshape(2, O).detach()]
                          + ([] if c is None else [c.reshape(2, 4).detach()]) + _grads(rnn))
        if not batched:
            assert split_state(state)[0].shape == (2, O)
            assert state.history_nbytes > 0 and state.window == 6
        runs.append(record)
    for a, b in zip(*runs):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)


def test_unbatched_errors(device):
    lstm = TruncatedLSTM(3, 4, 2, device=device)
    x = torch.randn(5, 3, device=device)
    with pytest.raises(ValueError, match=r"for an unbatched 2-D input the state h0 must be 2-D"):
        lstm(x, (torch.zeros(2, 1, 4, device=device), torch.zeros(2, 1, 4, device=device)))
    with pytest.raises(ValueError, match=r"for a batched 3-D input the state h0 must be 3-D"):
        lstm(x.unsqueeze(1), (torch.zeros(2, 4, device=device), torch.zeros(2, 4, device=device)))
    with pytest.raises(ValueError, match=r"state h0 must be \[num_layers, hidden_size\]"):
        lstm(x, (torch.zeros(3, 4, device=device), torch.zeros(3, 4, device=device)))
    with pytest.raises(ValueError, match=r"reset must be \[\] or \[L\]"):
        lstm(x, reset=torch.zeros(2, dtype=torch.bool, device=device))
    out, _ = lstm(x, reset=torch.tensor(True, device=device))
    assert out.shape == (5, 4)


def _packed_case(device, dtype, enforce_sorted):
    lengths = [5, 2, 4] if not enforce_sorted else [5, 4, 2]
    seqs = [torch.randn(n, 3, device=device, dtype=dtype) for n in lengths]
    return pack_sequence(seqs, enforce_sorted=enforce_sorted)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_packed_sequence_equals_its_nn_peer(enforce_sorted, batch_first, dtype, cell, device):
    ours, theirs = nn_pair(cell, device, dtype, batch_first=batch_first)
    packed = _packed_case(device, dtype, enforce_sorted)
    state0, tensors = leaf_state(ours, 3, device, dtype)  # original batch order
    results = []
    for module in (ours, theirs):
        module.zero_grad(set_to_none=True)
        data = packed.data.clone().requires_grad_()
        hx, leaves = fresh_leaves(state0, tensors)
        out, state = module(PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                           packed.unsorted_indices), hx)
        assert isinstance(out, PackedSequence) and out.data.shape[-1] == out_size(ours)
        (out.data.pow(2).sum() + state_loss(state)).backward()
        h, c = split_state(state)
        results.append((out, [out.data, h] + ([] if c is None else [c]) + [data.grad]
                        + [t.grad for t in leaves] + _grads(module)))
    (out_a, a), (out_b, b) = results
    assert torch.equal(out_a.batch_sizes, out_b.batch_sizes)
    for index in ("sorted_indices", "unsorted_indices"):
        ia, ib = getattr(out_a, index), getattr(out_b, index)
        assert (ia is None and ib is None) or torch.equal(ia, ib)
    for ta, tb in zip(a, b):
        assert rel_err(ta, tb) <= TOLERANCE[dtype]


def test_packed_from_padded_batch_with_lengths(cell, device):
    ours, theirs = nn_pair(cell, device, torch.float64, batch_first=True)
    padded = torch.randn(4, 6, 3, device=device, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 3, 6])
    packed = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
    (out_a, state_a), (out_b, state_b) = ours(packed), theirs(packed)
    assert rel_err(out_a.data, out_b.data) <= 1e-10
    for a, b in zip(split_state(state_a), split_state(state_b)):
        assert (a is None and b is None) or rel_err(a, b) <= 1e-10


def test_packed_chunk_inside_a_stream_matches_the_reference(cell, device):
    """A packed chunk is a chunk of the stream: rows past their length hold still (the LSTM with
    projections: h in P space, c in H space), and a later window reaching back into it passes
    through the held steps. For every cell."""
    dtype = torch.float64
    torch.manual_seed(0)
    rnn = make_rnn(cell, 3, 4, 2, k2=9, device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    chunk1 = torch.randn(3, 3, 3, generator=gen, dtype=dtype).to(device)
    lengths = torch.tensor([5, 2, 4])
    seqs = [torch.randn(n, 3, generator=gen, dtype=dtype).to(device) for n in lengths.tolist()]
    packed = pack_sequence(seqs, enforce_sorted=False)
    chunk3 = torch.randn(4, 3, 3, generator=gen, dtype=dtype).to(device)
    # The reference sees the packed chunk padded, with the hold mask.
    padded = torch.zeros(5, 3, 3, dtype=dtype, device=device)
    for row, seq in enumerate(seqs):
        padded[:len(seq), row] = seq
    hold = (torch.arange(5).unsqueeze(1) >= lengths.unsqueeze(0)).to(device)

    def run(reference):
        stream = ReferenceStream(rnn) if reference else None
        state, records = None, []
        for i, x in enumerate((chunk1, packed, chunk3)):
            rnn.zero_grad(set_to_none=True)
            if reference:
                out, state = stream.chunk(padded if i == 1 else x, 9,
                                          hold=hold if i == 1 else None)
                if i == 1:
                    out = out[~hold]  # the packed elements, in (step, row) order
            else:
                out, state = rnn(x, state)
                if i == 1:
                    assert isinstance(out, PackedSequence)
                    # packed data in (step, sorted rank) order -> (step, row) order
                    order = torch.argsort(_step_row_keys(out), stable=True)
                    out = out.data[order]
            h, c = split_state(state)
            loss = out.pow(2).sum() + h.sum() + (c.pow(2).sum() if c is not None else 0)
            loss.backward()
            records.append([out.detach(), h.detach()] + ([c.detach()] if c is not None else [])
                           + _grads(rnn))
        return records

    for a, b in zip(run(False), run(True)):
        for ta, tb in zip(a, b):
            assert rel_err(ta, tb) <= 1e-10


def _step_row_keys(packed):
    """step * B + row of every element of a PackedSequence (row in the original order)."""
    batch = int(packed.batch_sizes[0])
    steps = torch.arange(packed.batch_sizes.numel()).repeat_interleave(packed.batch_sizes)
    offsets = torch.cumsum(packed.batch_sizes, 0) - packed.batch_sizes
    rank = torch.arange(packed.data.shape[0]) - offsets[steps]
    rows = rank if packed.sorted_indices is None else packed.sorted_indices.cpu()[rank]
    return steps * batch + rows


def test_packed_bad_input(device):
    lstm = TruncatedLSTM(3, 4, 2, k2=8, device=device)
    packed = _packed_case(device, torch.float32, enforce_sorted=False)
    with pytest.raises(ValueError, match=r"with a PackedSequence input, reset must be a bool \[B\]"):
        lstm(packed, reset=torch.zeros(5, 3, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match=r"reset of shape \[B\] must have B=3"):
        lstm(packed, reset=torch.zeros(2, dtype=torch.bool, device=device))
    _, state = lstm(torch.randn(2, 2, 3, device=device))
    with pytest.raises(ValueError, match=r"state h0 must be \[num_layers, B, hidden_size\] = \[2, 3, 4\]"):
        lstm(packed, state)  # a packed batch of 3 against a stream of 2 rows
    with pytest.raises(ValueError, match=r"input has 4 features, expected input_size=3"):
        lstm(pack_sequence([torch.randn(2, 4, device=device)]))
    out, state = lstm(packed, reset=torch.tensor([True, False, True], device=device))
    assert isinstance(out, PackedSequence) and state[0].shape == (2, 3, 4)
