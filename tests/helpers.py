"""Shared test helpers: run one stream through TruncatedLSTM (with or without proj_size) or
TruncatedGRU and through the reference."""
import torch
from torch import nn

from tbptt_cuda import TruncatedGRU, TruncatedLSTM
from tbptt_cuda.reference import ReferenceStream

MODULES = {"lstm": TruncatedLSTM, "lstmp": TruncatedLSTM, "gru": TruncatedGRU}


def proj_size_for(hidden_size):
    """The proj_size the "lstmp" cell's tests give a TruncatedLSTM of this hidden size: about
    half of it, never H (so that a P/H mix-up shows)."""
    return (hidden_size + 1) // 2


def make_rnn(cell, *args, **kwargs):
    """TruncatedLSTM or TruncatedGRU (cell "lstm", "lstmp" or "gru") with these arguments;
    "lstmp": a TruncatedLSTM with proj_size = proj_size_for(hidden_size) unless given."""
    if cell == "lstmp":
        hidden = kwargs["hidden_size"] if "hidden_size" in kwargs else args[1]
        kwargs.setdefault("proj_size", proj_size_for(hidden))
    return MODULES[cell](*args, **kwargs)


def out_size(module):
    """O: the size of h and of the output (proj_size for "lstmp", else hidden_size)."""
    return getattr(module, "proj_size", 0) or module.hidden_size


def random_state(module, batch, dtype, device, layers=None):
    """A random explicit initial state for `module`, in run_both's `explicit` form: (h0, c0)
    for an LSTM (h0 [layers, B, O], c0 [layers, B, H]), (h0,) for a GRU. h0 and c0 are drawn
    in that order for every cell (the GRU's c0 is drawn and dropped), so a test draws the same
    numbers whatever the cell."""
    layers = module.num_layers if layers is None else layers
    h0 = torch.randn(layers, batch, out_size(module), dtype=dtype, device=device)
    c0 = torch.randn(layers, batch, module.hidden_size, dtype=dtype, device=device)
    return (h0,) if module.cell == "gru" else (h0, c0)


def split_state(state):
    """(h, c) of a returned state: an LSTM's (h_n, c_n); a GRU's h_n and None."""
    if isinstance(state, torch.Tensor):
        return state, None
    h, c = state
    return h, c


def initial_state(module, h0, c0=None):
    """The call's explicit initial state: (h0, c0) for an LSTM, the tensor h0 for a GRU."""
    return h0 if module.cell == "gru" else (h0, c0)

# Relative-error bounds ||a - b|| / ||b|| per dtype, fused code vs the reference.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}

# At 16 bits, ours may be at most this many times as far from the float64 result as plain
# PyTorch at that dtype (the reference's ops run in it) is.
LOW_PRECISION_RATIO = {torch.float16: 4.0, torch.bfloat16: 4.0}


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_within_low_precision_bar(truth, got, baseline, dtype, check_dtype=False):
    """The 16-bit contract of every backend (CUDA, emulated, CPU): each tensor of `got` (our
    records at `dtype`) is at most LOW_PRECISION_RATIO times as far from `truth` (float64) as
    `baseline` (the plain-PyTorch reference run at `dtype`) is, plus 1e-4; with check_dtype,
    ours are of `dtype` too. Records as stream_records returns them."""
    ratio = LOW_PRECISION_RATIO[dtype]
    for t, g, p in zip(truth, got, baseline):
        for a, b, c in zip(t, g, p):
            if check_dtype:
                assert b.dtype == dtype
            ours_err, plain_err = rel_err(b, a), rel_err(c, a)
            assert ours_err <= ratio * plain_err + 1e-4, (ours_err, plain_err)


def make_stream(chunk_lengths, batch, input_size, dtype, device, reset_prob=0.0, seed=0):
    """Chunks x [L, B, I] (random, never all-zero) and reset masks [L, B] bool (or None)."""
    gen = torch.Generator().manual_seed(seed)
    chunks, resets = [], []
    for L in chunk_lengths:
        chunks.append(torch.randn(L, batch, input_size, generator=gen, dtype=torch.float64)
                      .to(dtype=dtype, device=device))
        if reset_prob > 0:
            resets.append((torch.rand(L, batch, generator=gen) < reset_prob).to(device))
        else:
            resets.append(None)
    return chunks, resets


def _chunk_loss(out, state, out_weights, use_state):
    loss = (out * out_weights).sum()
    if use_state:
        h, c = split_state(state)
        loss = loss + (h * 0.7).sum()
        if c is not None:
            loss = loss + (c * c).sum() * 0.3
    return loss


def _feed(module, chunks, resets, k2s, use_state, batch_first, explicit, masks=None):
    """One pass over the stream: ours when masks is None, else the reference with those
    dropout masks. backward() after every chunk; returns per-chunk records and the masks."""
    ours = masks is None
    names = [n for n, _ in module.named_parameters()]
    h0 = c0 = None
    if explicit is not None:  # (h0, c0) for an LSTM, (h0,) for a GRU
        h0 = explicit[0].clone().requires_grad_()
        if module.cell != "gru":
            c0 = explicit[1].clone().requires_grad_()
    stream = None if ours else ReferenceStream(module, h0, c0)
    state = initial_state(module, h0, c0) if h0 is not None else None
    gen = torch.Generator().manual_seed(99)
    records, used_masks = [], []
    for i, (x, reset, k2) in enumerate(zip(chunks, resets, k2s)):
        x = x.clone().requires_grad_()
        module.zero_grad(set_to_none=True)
        out_weights = torch.randn(x.shape[0], x.shape[1], out_size(module), generator=gen,
                                  dtype=torch.float64).to(x)
        if ours:
            module.k2 = k2
            x_in = x.transpose(0, 1) if batch_first else x
            reset_in = None if reset is None else (reset.t() if batch_first else reset)
            out, state = module(x_in, state, reset=reset_in)
            if batch_first:
                out = out.transpose(0, 1)
            used_masks.append(module.last_dropout_masks if module.dropout else None)
        else:
            out, state = stream.chunk(x, k2, reset=reset, masks=masks[i])
        _chunk_loss(out, state, out_weights, use_state).backward()
        h, c = split_state(state)
        records.append({
            "out": out.detach().clone(),
            "h": h.detach().clone(),
            "c": c.detach().clone() if c is not None else None,
            "x_grad": x.grad.clone(),
            "param_grads": {n: p.grad.clone() for n, p in zip(names, module.parameters())},
            "h0_grad": h0.grad.clone() if (i == 0 and h0 is not None) else None,
            "c0_grad": c0.grad.clone() if (i == 0 and c0 is not None) else None,
        })
    return records, used_masks


def run_both(module, chunks, resets, k2s, use_state=False, batch_first=False, explicit=None):
    """The same stream through `module` (a TruncatedLSTM or TruncatedGRU) and through the
    reference, with backward after each chunk; explicit: (h0, c0) (LSTM) or (h0,) (GRU), as
    random_state gives.
    Returns (ours, reference) lists of per-chunk records."""
    ours, masks = _feed(module, chunks, resets, k2s, use_state, batch_first, explicit)
    ref, _ = _feed(module, chunks, resets, k2s, use_state, batch_first, explicit, masks=masks)
    return ours, ref


def assert_records_close(ours, ref, dtype):
    tol = TOLERANCE[dtype]
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        for key in ("out", "h", "c", "x_grad"):
            if b[key] is None:  # a GRU has no c
                assert a[key] is None, key
                continue
            err = rel_err(a[key], b[key])
            assert err <= tol, f"chunk {i}: {key} rel err {err:.3g} > {tol}"
        for name, grad in b["param_grads"].items():
            err = rel_err(a["param_grads"][name], grad)
            assert err <= tol, f"chunk {i}: grad of {name} rel err {err:.3g} > {tol}"
        for key in ("h0_grad", "c0_grad"):
            if b[key] is not None:
                err = rel_err(a[key], b[key])
                assert err <= tol, f"chunk {i}: {key} rel err {err:.3g} > {tol}"


def stream_records(module, chunks, resets, k2, reference=False):
    """Per chunk of a stream: [out, x.grad, *parameter grads], from `module` (a TruncatedLSTM or
    TruncatedGRU) or, with reference=True, from the reference with the module's parameters."""
    stream = ReferenceStream(module) if reference else None
    state, records = None, []
    gen = torch.Generator().manual_seed(5)
    for x, reset in zip(chunks, resets):
        x = x.clone().requires_grad_()
        module.zero_grad(set_to_none=True)
        if reference:
            out, _ = stream.chunk(x, k2, reset=reset)
        else:
            module.k2 = k2
            out, state = module(x, state, reset=reset)
        w = torch.randn(out.shape, generator=gen).to(out)
        (out.float() * w.float()).sum().backward()
        records.append([out.detach()] + [x.grad] + [p.grad.clone() for p in module.parameters()])
    return records


def saved_stream_chunks(seed, lengths=(3, 4, 2, 4, 3), batch=3, features=2):
    """The float64 chunks [L, batch, features] of the save-and-resume tests (CPU tensors)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(L, batch, features, generator=gen, dtype=torch.float64) for L in lengths]


def continue_stream(module, state, chunks, seed=123):
    """Runs `chunks` through `module` (any cell) from `state`, dropout masks from `seed`, a
    backward after each: per chunk [out, h_n, (c_n,) *parameter grads]; and the last state."""
    torch.manual_seed(seed)
    records = []
    for x in chunks:
        module.zero_grad(set_to_none=True)
        out, state = module(x, state)
        h, c = split_state(state)
        (out.pow(2).sum() + h.sum() + (c.pow(2).sum() if c is not None else 0)).backward()
        records.append([out.detach(), h.detach()] + ([] if c is None else [c.detach()])
                       + [p.grad.clone() for p in module.parameters()])
    return records, state


def nn_pair(cell, device, dtype, batch_first=False, layers=2, I=3, H=5, bias=True):
    """Ours (make_rnn) and its nn peer (nn.LSTM, nn.LSTM with proj_size, nn.GRU) on the same
    weights."""
    ours = make_rnn(cell, I, H, layers, batch_first=batch_first, bias=bias, device=device,
                    dtype=dtype)
    peer = {"gru": nn.GRU, "lstm": nn.LSTM, "lstmp": nn.LSTM}[cell]
    extra = {"proj_size": ours.proj_size} if cell == "lstmp" else {}
    theirs = peer(I, H, layers, batch_first=batch_first, bias=bias, **extra).to(device, dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def leaf_state(module, batch, device, dtype):
    """A random initial state for `module`, as nn.LSTM / nn.GRU take it (h0 [layers, (B,) O],
    and c0 [layers, (B,) H] but for the GRU; batch None: unbatched), and its tensors."""
    lead = (module.num_layers,) if batch is None else (module.num_layers, batch)
    h0 = torch.randn(*lead, out_size(module), device=device, dtype=dtype)
    if module.cell == "gru":
        return h0, [h0]
    c0 = torch.randn(*lead, module.hidden_size, device=device, dtype=dtype)
    return (h0, c0), [h0, c0]


def fresh_leaves(state, tensors):
    """The same state from clones that require grad, and those clones."""
    leaves = [t.clone().requires_grad_() for t in tensors]
    return (leaves[0] if isinstance(state, torch.Tensor) else tuple(leaves)), leaves


def state_loss(state):
    """A loss on the final state every cell has: sum(h), plus sum(c^2) where there is c."""
    h, c = split_state(state)
    return h.sum() + (c.pow(2).sum() if c is not None else 0)
