"""History modes "states" and "checkpoints" (store less, recompute more): the same outputs and
gradients as the reference (and so as "activations") for every schedule and option, the bytes
each stores, constant memory over a long stream, mode and k2 changes, and what each recomputes
with which weights after an optimizer step."""
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from tbptt_cuda import ARTBP, TruncatedLSTM

from helpers import (TOLERANCE, assert_records_close, make_rnn, make_stream, random_state,
                     rel_err, run_both)
from test_reference import SCHEDULES

DTYPES = [pytest.param(torch.float32, id="f32"), pytest.param(torch.float64, id="f64")]
MODES = [pytest.param(("states", None), id="states"),
         pytest.param(("checkpoints", None), id="checkpoints"),
         pytest.param(("checkpoints", 1), id="checkpoints-s1"),
         pytest.param(("checkpoints", 3), id="checkpoints-s3")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_layers", [1, 3], ids=lambda n: f"layers{n}")
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("mode", MODES)
def test_schedules_match_reference(mode, schedule, num_layers, dtype, cell, device):
    history, every = mode
    lengths, k2s = SCHEDULES[schedule]
    rnn = make_rnn(cell, 4, 5, num_layers, history=history, checkpoint_every=every,
                   device=device, dtype=dtype)
    chunks, resets = make_stream(lengths, 3, 4, dtype, device)
    ours, ref = run_both(rnn, chunks, resets, k2s)
    assert_records_close(ours, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("mode", MODES)
def test_resets_dropout_layers_state_loss_match_reference(mode, batch_first, dtype, cell, device):
    history, every = mode
    rnn = make_rnn(cell, 3, 6, 3, dropout=0.3, batch_first=batch_first, history=history,
                   checkpoint_every=every, device=device, dtype=dtype)
    chunks, resets = make_stream([4, 2, 5, 4, 3], 2, 3, dtype, device, reset_prob=0.15, seed=3)
    ours, ref = run_both(rnn, chunks, resets, [7] * 5, use_state=True, batch_first=batch_first,
                         explicit=random_state(rnn, 2, dtype, device))
    assert_records_close(ours, ref, dtype)


@pytest.mark.parametrize("mode", MODES)
def test_nan_before_a_reset_never_reaches_later_gradients(mode, cell, device):
    history, every = mode
    rnn = make_rnn(cell, 2, 4, 2, k2=10, history=history, checkpoint_every=every,
                   device=device, dtype=torch.float64)
    chunks, resets = make_stream([4, 4, 4], 3, 2, torch.float64, device, seed=4)
    chunks[0][2, 0, 1] = float("nan")
    resets[1] = torch.zeros(4, 3, dtype=torch.bool, device=device)
    resets[1][0, 0] = True
    ours, ref = run_both(rnn, chunks, resets, [10] * 3)
    for record in ours[1:]:
        assert torch.isfinite(record["out"]).all()
        assert all(torch.isfinite(g).all() for g in record["param_grads"].values())
    assert_records_close(ours[1:], ref[1:], torch.float64)


@pytest.mark.parametrize("mode", MODES)
def test_k2_changes_and_artbp(mode, cell, device):
    history, every = mode
    dtype = torch.float64
    rnn = make_rnn(cell, 2, 4, 2, history=history, checkpoint_every=every, device=device,
                   dtype=dtype)
    chunks, resets = make_stream([2, 2, 3, 3], 2, 2, dtype, device, seed=6)
    ours, ref = run_both(rnn, chunks, resets, [4, 8, 10, 10])  # grows before the ring wraps
    assert_records_close(ours, ref, dtype)
    # ARTBP: a forced window in each mode equals the activations mode
    results = []
    for mode_name in ("activations", history):
        torch.manual_seed(0)
        model = make_rnn(cell, 2, 4, k2=3, artbp=ARTBP(cap=9, c=0.3), history=mode_name,
                         checkpoint_every=every, device=device, dtype=dtype)
        state = None
        for x in chunks[:3]:
            _, state = model(x, state)
        with model.artbp.force(8):
            out, state = model(chunks[3], state)
        out.pow(2).sum().backward()
        results.append([p.grad for p in model.parameters()])
    for a, b in zip(*results):
        assert rel_err(a, b) <= TOLERANCE[dtype]


@pytest.mark.parametrize("mode", MODES)
def test_packed_chunk_in_every_mode(mode, cell, device):
    history, every = mode
    dtype = torch.float64
    runs = []
    for mode_name in ("activations", history):
        torch.manual_seed(0)
        rnn = make_rnn(cell, 3, 4, 2, k2=9, history=mode_name, checkpoint_every=every,
                       device=device, dtype=dtype)
        gen = torch.Generator().manual_seed(1)
        packed = pack_sequence([torch.randn(n, 3, generator=gen, dtype=dtype).to(device)
                                for n in (5, 2, 4)], enforce_sorted=False)
        _, state = rnn(torch.randn(3, 3, 3, generator=gen, dtype=dtype).to(device))
        out, state = rnn(packed, state)
        out.data.sum().backward()
        grads = [p.grad.clone() for p in rnn.parameters()]
        rnn.zero_grad()
        out2, state = rnn(torch.randn(4, 3, 3, generator=gen, dtype=dtype).to(device), state)
        out2.pow(2).sum().backward()  # its window reaches back through the held steps
        runs.append([out.data, out2] + grads + [p.grad for p in rnn.parameters()])
    for a, b in zip(*runs):
        assert rel_err(a, b) <= TOLERANCE[dtype]


def _bytes_per_step(I, H, B, layers, mode, every=None, k2=64, dtype=torch.float32):
    lstm = TruncatedLSTM(I, H, layers, k2=k2, history=mode, checkpoint_every=every, dtype=dtype)
    _, state = lstm(torch.randn(4, B, I, dtype=dtype))
    return state.history_nbytes


def test_bytes_each_mode_stores():
    I, H, B, layers, k2 = 24, 32, 3, 2, 64
    element, acc = 4, 4
    init = 2 * layers * B * H * 4
    activations = (k2 + 1) * B * (layers * (4 * H * element + H * acc + H * element) + I * element + 1)
    states = (k2 + 1) * B * (layers * (H * acc + H * element) + I * element + 1)
    every = 8  # ceil(sqrt(64))
    slots = k2 + every
    checkpoints = slots * B * (I * element + 1) + (slots // every + 1) * layers * B * H * (acc + element)
    assert _bytes_per_step(I, H, B, layers, "activations", k2=k2) == activations + init
    assert _bytes_per_step(I, H, B, layers, "states", k2=k2) == states + init
    assert _bytes_per_step(I, H, B, layers, "checkpoints", k2=k2) == checkpoints + init
    # the targets: "states" <= 0.45 x at I = H; "checkpoints" <= 0.12 x at I=16, H=128, k2=256
    ratio_states = (_bytes_per_step(256, 256, 4, 1, "states", k2=64)
                    / _bytes_per_step(256, 256, 4, 1, "activations", k2=64))
    assert ratio_states <= 0.45, ratio_states
    ratio_checkpoints = (_bytes_per_step(16, 128, 4, 1, "checkpoints", k2=256)
                         / _bytes_per_step(16, 128, 4, 1, "activations", k2=256))
    assert ratio_checkpoints <= 0.12, ratio_checkpoints


@pytest.mark.parametrize("history", ["states", "checkpoints"])
def test_long_stream_keeps_memory_constant(history):
    lstm = TruncatedLSTM(8, 16, 2, k2=60, history=history)
    opt = torch.optim.SGD(lstm.parameters(), lr=0.01)
    state, sizes = None, set()
    x = torch.randn(50, 4, 8)
    for chunk in range(60):  # 3,000 steps
        out, state = lstm(x + 0.01 * chunk, state)
        out.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sizes.add(state.history_nbytes)
    assert state.history.end == 3000 and len(sizes) == 1


def test_switching_modes_mid_stream_starts_the_window_at_the_switch():
    lstm = TruncatedLSTM(2, 4, k2=10, dtype=torch.float64)
    state = None
    for mode in ("activations", "states", "checkpoints", "checkpoints", "activations"):
        lstm.history = mode
        out, state = lstm(torch.randn(3, 2, 2, dtype=torch.float64), state)
        out.sum().backward()
        assert state.history.ring.mode == mode
    # a switch drops what the old layout kept: the window after it starts at the switch
    assert state.window == 3
    lstm.history = "activations"
    out, state = lstm(torch.randn(3, 2, 2, dtype=torch.float64), state)
    assert state.window == 6  # no switch: it reaches back into the previous chunk
    with pytest.raises(ValueError, match=r"history must be one of \('activations', 'states', "
                                         r"'checkpoints'\), got 'gates'"):
        lstm.history = "gates"
    with pytest.raises(ValueError, match="checkpoint_every must be a positive integer"):
        TruncatedLSTM(2, 4, history="checkpoints", checkpoint_every=0)


@pytest.mark.parametrize("history", ["states", "checkpoints"])
def test_after_an_optimizer_step_the_recompute_uses_the_current_weights(history):
    """Documented difference: "activations" keeps the gates of the weights of their time;
    "states" rebuilds the window's gates, "checkpoints" its whole forward, with the current
    weights. Equal without a step, different after one."""
    results = {}
    for mode in ("activations", history):
        torch.manual_seed(0)
        lstm = TruncatedLSTM(3, 5, k2=8, history=mode, dtype=torch.float64)
        opt = torch.optim.SGD(lstm.parameters(), lr=0.5)
        gen = torch.Generator().manual_seed(2)
        xs = [torch.randn(4, 2, 3, generator=gen, dtype=torch.float64) for _ in range(3)]
        state, grads = None, []
        for x in xs:
            opt.zero_grad()
            out, state = lstm(x, state)
            out.pow(2).sum().backward()
            grads.append(torch.cat([p.grad.flatten() for p in lstm.parameters()]))
            opt.step()
        results[mode] = grads
    assert rel_err(results[history][0], results["activations"][0]) <= 1e-12  # nothing stale yet
    assert rel_err(results[history][1], results["activations"][1]) > 1e-6   # window spans a step
