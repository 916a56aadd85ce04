"""Identical work for TruncatedLSTM and its plain-PyTorch peers (DESIGN.md sections 8-9).

One ``Workload`` holds what every variant shares: the weights (one seeded nn.LSTM state_dict,
or nn.GRU's for a case with cell="gru": TruncatedGRU against nn.GRU, the same runners; or
nn.LSTM(proj_size=H/2)'s for cell="lstmp": TruncatedLSTM(proj_size=H/2) against it),
the input stream x [n, B, I] and the upstream gradient of a chunk g [k1, B, H] (the loss of a
chunk is ``(out * g).sum()``, so every variant gets the same, non-zero dL/dout). A runner
processes the whole stream once, from a zero state, doing forward + backward per update:

  ours        TruncatedLSTM, TBPTT(k1, k2): k1 forward + k2 backward steps per update
  nn_full     nn.LSTM BPTT(n, n): the whole stream in one call, one backward
  nn_chunked  nn.LSTM BPTT(k1, k1): chunks of k1, state detached between chunks
  nn_rerun    nn.LSTM TBPTT(k1, k2) by re-running the last k2 steps from a detached state at
              every update (k2 forward + k2 backward per update; what users do for k1 < k2)
  retained    the retained-graph recipe: one nn.LSTM call per step, each step's graph kept for
              k2 steps, gradients passed back step by step (slow; a second oracle; LSTM only)

The last chunk may be shorter than k1 (n need not be a multiple of k1). Gradients are those of
DESIGN.md section 2, so with fixed weights ours, nn_rerun and retained agree to rounding.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import platform
import re
import statistics
import subprocess
import time
from collections import deque
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent

if os.environ.get("BENCH_THREADS"):  # e.g. 1 on a CPU that other processes share
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))

VARIANTS = ("ours", "ours_states", "ours_checkpoints", "nn_full", "nn_chunked", "nn_rerun",
            "retained")
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f64": torch.float64}


def schedule_name(variant, k1, k2):
    return {
        "ours": f"TBPTT({k1},{k2})" if k2 != k1 else f"BPTT({k1},{k1})",
        "ours_states": f"TBPTT({k1},{k2}) states",
        "ours_checkpoints": f"TBPTT({k1},{k2}) checkpoints",
        "nn_full": "BPTT(n,n)",
        "nn_chunked": f"BPTT({k1},{k1})",
        "nn_rerun": f"rerun TBPTT({k1},{k2})",
        "retained": f"retained TBPTT({k1},{k2})",
    }[variant]


# --------------------------------------------------------------------------------------------
# our module (optional until it is built)

CELLS = ("lstm", "gru", "lstmp")  # lstmp: TruncatedLSTM(proj_size=H/2) against nn.LSTM's
_OURS = {}
_OURS_ERROR = None


def ours_class(cell="lstm"):
    """TruncatedLSTM (TruncatedGRU for cell="gru"), or None (with ours_error() saying why) when
    tbptt_cuda does not import."""
    global _OURS_ERROR
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    if not _OURS and _OURS_ERROR is None:
        try:
            from tbptt_cuda import TruncatedGRU, TruncatedLSTM

            _OURS.update(lstm=TruncatedLSTM, gru=TruncatedGRU, lstmp=TruncatedLSTM)
        except Exception as e:  # noqa: BLE001 - any import failure means "not built yet"
            _OURS_ERROR = f"{type(e).__name__}: {e}"
    return _OURS.get(cell)


def ours_error():
    ours_class()
    return _OURS_ERROR


# --------------------------------------------------------------------------------------------
# cases

@dataclasses.dataclass(frozen=True)
class Case:
    device: str  # "cpu" | "cuda"
    dtype: str  # "f32" | "bf16" | "f64"
    H: int
    B: int
    k1: int
    k2: int  # k2 == k1 means BPTT(k1, k1): truncate at each chunk's start (ours: k2=None)
    n: int
    layers: int = 1
    I: int = 0  # input size; 0 means I = H
    cell: str = "lstm"  # "lstm" | "gru": TruncatedGRU against nn.GRU | "lstmp": proj_size H/2

    @property
    def input_size(self):
        return self.I or self.H

    @property
    def proj_size(self):
        """P of an lstmp case (H/2), else 0 (nn.LSTM's default)."""
        return self.H // 2 if self.cell == "lstmp" else 0

    @property
    def out_size(self):
        """Width of h and of the outputs: P for lstmp, else H."""
        return self.proj_size or self.H

    @property
    def torch_dtype(self):
        return DTYPES[self.dtype]

    @property
    def id(self):
        s = f"{self.device}-{self.dtype}-H{self.H}-B{self.B}-k{self.k1}-k2_{self.k2}-n{self.n}"
        if self.layers != 1:
            s += f"-L{self.layers}"
        if self.I:
            s += f"-I{self.I}"
        if self.cell != "lstm":
            s += f"-{self.cell}"
        return s

    @classmethod
    def from_id(cls, s):
        m = re.fullmatch(
            r"(cpu|cuda)-(f32|bf16|f64)-H(\d+)-B(\d+)-k(\d+)-k2_(\d+)-n(\d+)"
            r"(?:-L(\d+))?(?:-I(\d+))?(?:-(gru|lstmp))?", s
        )
        if not m:
            raise ValueError(f"not a case id: {s!r}")
        dev, dt, H, B, k1, k2, n, L, I, cell = m.groups()
        return cls(dev, dt, int(H), int(B), int(k1), int(k2), int(n), int(L or 1), int(I or 0),
                   cell or "lstm")

    def chunks(self):
        """(a, b) bounds of the updates: chunks of k1 steps, the last one possibly shorter."""
        return [(a, min(a + self.k1, self.n)) for a in range(0, self.n, self.k1)]

    def window_start(self, a, b):
        """First step the gradient of chunk [a, b) reaches (DESIGN.md section 2)."""
        return a if self.k2 == self.k1 else max(b - self.k2, 0)


# --------------------------------------------------------------------------------------------
# workload

class Workload:
    """Weights, input stream and upstream gradient shared by every variant of one case."""

    def __init__(self, case: Case, seed: int = 0):
        self.case = case
        dev, dt = torch.device(case.device), case.torch_dtype
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        ref = self.nn_class()(case.input_size, case.H, case.layers, **self.proj())  # nn's own init
        self.state_dict = {k: v.detach().clone() for k, v in ref.state_dict().items()}
        # N(0,1) inputs and gradients: never all-zero, never constant
        self.x = torch.randn(case.n, case.B, case.input_size, generator=gen).to(dev, dt)
        self.g = torch.randn(case.k1, case.B, case.out_size, generator=gen).to(dev, dt)

    _last = None

    @classmethod
    def get(cls, case: Case, seed: int = 0):
        """The workload of `case`, reused by consecutive tests of the same case (one kept)."""
        if cls._last is None or cls._last[0] != (case, seed):
            cls._last = None  # free the previous stream first
            cls._last = ((case, seed), cls(case, seed))
        return cls._last[1]

    def nn_class(self):
        """nn.LSTM, or nn.GRU for a GRU case."""
        return nn.GRU if self.case.cell == "gru" else nn.LSTM

    def proj(self):
        """The proj_size keyword of an lstmp case (both sides), else none."""
        return {"proj_size": self.case.proj_size} if self.case.proj_size else {}

    def nn_rnn(self):
        """The peer: nn.LSTM (nn.GRU for a GRU case) with the workload's weights."""
        c = self.case
        m = self.nn_class()(c.input_size, c.H, c.layers, device=c.device, dtype=c.torch_dtype,
                            **self.proj())
        m.load_state_dict(self.state_dict)
        return m

    def ours(self, history="activations"):
        cls = ours_class(self.case.cell)
        if cls is None:
            raise RuntimeError(f"tbptt_cuda is not importable: {ours_error()}")
        c = self.case
        k2 = None if c.k2 == c.k1 else c.k2
        m = cls(c.input_size, c.H, c.layers, k2=k2, device=c.device, dtype=c.torch_dtype,
                history=history, **self.proj())
        m.load_state_dict(self.state_dict)
        return m

    def chunk_loss(self, out):
        """Loss of one chunk's outputs out [L, B, H] (L <= k1)."""
        return (out * self.g[: out.shape[0]]).sum()

    def stream_loss(self, out):
        """Sum of the chunk losses over a whole stream's outputs [n, B, H] (for BPTT(n,n))."""
        c = self.case
        m = (c.n // c.k1) * c.k1
        loss = (out[:m].view(-1, c.k1, c.B, c.out_size) * self.g).sum()
        if m < c.n:
            loss = loss + self.chunk_loss(out[m:])
        return loss

    def protected_storages(self):
        """Storages that exist anyway (weights, stream, targets): not 'held for backward'."""
        return {self.x.untyped_storage().data_ptr(), self.g.untyped_storage().data_ptr()}


# --------------------------------------------------------------------------------------------
# runners: each processes the whole stream once; `updates` yields after every backward

class Runner:
    variant = ""

    def __init__(self, wl: Workload, input_grad: bool = False):
        self.wl, self.case = wl, wl.case
        self.model = self.make_model()
        self.input_grad = input_grad  # make the current chunk's x a leaf (for gradient checks)
        self.probe = None  # SavedBytesProbe while measuring bytes held for backward
        self.backend = None  # grad_fn name of the RNN op last used (which kernel ran)

    def make_model(self):
        return self.wl.nn_rnn()

    def parameters(self):
        return list(self.model.parameters())

    def chunk_input(self, a, b):
        x = self.wl.x[a:b]
        if self.input_grad:
            x = x.detach().clone().requires_grad_(True)
        return x

    def _mark(self, extra=0):
        if self.probe is not None:
            self.probe.mark(extra)

    def updates(self):
        raise NotImplementedError

    def run(self):
        self.model.zero_grad(set_to_none=True)
        for _ in self.updates():
            pass


def _detach(s):
    """A detached copy of an nn.LSTM state (h, c), an nn.GRU state h, or None."""
    if s is None:
        return None
    return s.detach() if isinstance(s, torch.Tensor) else tuple(t.detach() for t in s)


class OursRunner(Runner):
    variant = "ours"
    history = "activations"

    def make_model(self):
        return self.wl.ours(self.history)

    def updates(self):
        state = None
        for a, b in self.case.chunks():
            x = self.chunk_input(a, b)
            out, state = self.model(x, state)
            self.backend = type(out.grad_fn).__name__
            loss = self.wl.chunk_loss(out)
            self._mark(int(getattr(state, "history_nbytes", 0) or 0))
            loss.backward()
            yield a, b, x, out
        self.history_nbytes = int(getattr(state, "history_nbytes", 0) or 0)


class FullRunner(Runner):
    variant = "nn_full"

    def updates(self):
        c = self.case
        x = self.chunk_input(0, c.n)
        out, _ = self.model(x)
        self.backend = type(out.grad_fn).__name__
        loss = self.wl.stream_loss(out)
        self._mark()
        loss.backward()
        yield 0, c.n, x, out


class ChunkedRunner(Runner):
    variant = "nn_chunked"

    def updates(self):
        hc = None
        for a, b in self.case.chunks():
            x = self.chunk_input(a, b)
            out, hc = self.model(x, hc)
            self.backend = type(out.grad_fn).__name__
            loss = self.wl.chunk_loss(out)
            self._mark()
            loss.backward()
            hc = _detach(hc)
            yield a, b, x, out


class RerunRunner(Runner):
    """Re-run the window [w, b) = [b - k2, b) from the detached state before w at every update.

    The forward is split at the next update's window start nw, so that the state there can be
    kept (detached) without a third forward: two nn.LSTM calls, k2 steps in all, per update.
    """

    variant = "nn_rerun"

    def updates(self):
        c = self.case
        chunks = c.chunks()
        s, w = None, 0  # detached state before step w (None: zero state at stream start)
        for i, (a, b) in enumerate(chunks):
            assert w == c.window_start(a, b)
            nw = c.window_start(*chunks[i + 1]) if i + 1 < len(chunks) else w
            assert w <= nw <= b  # next window's start
            x = self.chunk_input(a, b)
            xw = torch.cat([self.wl.x[w:a], x]) if (self.input_grad and a > w) else (
                x if a == w else self.wl.x[w:b])
            segs, s1 = [], s
            if nw > w:
                o1, s1 = self.model(xw[: nw - w], s)
                segs.append(o1)
            s_next = _detach(s1)
            if b > nw:
                o2, _ = self.model(xw[nw - w:], s1)
                segs.append(o2)
            self.backend = type(segs[-1].grad_fn).__name__
            out = segs[0] if len(segs) == 1 else torch.cat(segs)
            out = out[a - w:]
            loss = self.wl.chunk_loss(out)
            self._mark()
            loss.backward()
            s, w = s_next, nw
            yield a, b, x, out


class RetainedRunner(Runner):
    """The retained-graph recipe (PyTorch forum, 'TBPTT with k1 < k2'), chunk losses.

    Every step runs nn.LSTM on one timestep from a detached leaf copy of the previous state and
    keeps (leaf_in, state_out) for k2 steps. An update backpropagates the chunk loss into the
    step graphs (retain_graph=True), then walks from the newest step to the oldest, passing each
    leaf's gradient into the previous step's output state.
    """

    variant = "retained"

    def make_model(self):
        if self.case.cell != "lstm":
            raise ValueError("the retained-graph recipe is written for nn.LSTM's (h, c) state")
        return super().make_model()

    def updates(self):
        c = self.case
        L, B, H = c.layers, c.B, c.H
        z = torch.zeros(L, B, H, device=c.device, dtype=c.torch_dtype)
        state = (z, z)
        steps = deque()  # (t, (h_in, c_in) leaves, (h_out, c_out)) of the last k2 steps
        for a, b in c.chunks():
            x = self.chunk_input(a, b)
            outs = []
            for t in range(a, b):
                hin = state[0].detach().requires_grad_(True)
                cin = state[1].detach().requires_grad_(True)
                o, state = self.model(x[t - a : t - a + 1], (hin, cin))
                steps.append((t, (hin, cin), state))
                if len(steps) > c.k2:
                    steps.popleft()
                outs.append(o)
            self.backend = type(outs[-1].grad_fn).__name__
            w = c.window_start(a, b)
            for _, (hin, cin), _ in steps:
                hin.grad = None
                cin.grad = None
            out = torch.cat(outs)
            loss = self.wl.chunk_loss(out)
            self._mark()
            loss.backward(retain_graph=True)
            out = out.detach()
            del outs, loss
            for i in range(len(steps) - 1, 0, -1):
                t, (hin, cin), _ = steps[i]
                if t <= w:  # the state before step w is where the window starts
                    break
                _, _, (hp, cp) = steps[i - 1]
                gh = hin.grad if hin.grad is not None else torch.zeros_like(hin)
                gc_ = cin.grad if cin.grad is not None else torch.zeros_like(cin)
                torch.autograd.backward([hp, cp], [gh, gc_], retain_graph=True)
            yield a, b, x, out


class OursStatesRunner(OursRunner):
    """Ours with history="states": c, h per step, gates rebuilt in backward."""
    variant = "ours_states"
    history = "states"


class OursCheckpointsRunner(OursRunner):
    """Ours with history="checkpoints": x per step, c, h every ceil(sqrt(k2)) steps."""
    variant = "ours_checkpoints"
    history = "checkpoints"


RUNNERS = {
    r.variant: r for r in (OursRunner, OursStatesRunner, OursCheckpointsRunner, FullRunner,
                           ChunkedRunner, RerunRunner, RetainedRunner)
}


def make_runner(variant, wl, **kw):
    return RUNNERS[variant](wl, **kw)


def variants_for(case: Case, retained_max_h=256, retained_max_n=1024):
    """Variants that make sense for a case (rerun only when k2 > k1; retained small only)."""
    v = ["ours", "nn_full", "nn_chunked"]
    if case.k2 > case.k1:
        v.append("nn_rerun")
        if case.cell == "lstm" and case.H <= retained_max_h and (
                case.device != "cpu" or case.n <= retained_max_n):
            v.append("retained")
    return v


# --------------------------------------------------------------------------------------------
# measuring

class StreamTimer:
    """Seconds for one call of fn: CUDA events on a GPU (after a synchronize), else perf_counter."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            torch.cuda.synchronize()
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            return e0.elapsed_time(e1) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def quantiles(xs):
    """(median, q25, q75) of a list."""
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return statistics.median(xs), q[0], q[2]


class _Held:
    __slots__ = ("t", "key", "probe")

    def __init__(self, t, key, probe):
        # detach(): a saved *output* held with its grad_fn would make a reference cycle
        # (node -> packed -> tensor -> node) that outlives a retain_graph=True graph
        self.t, self.key, self.probe = t.detach(), key, probe

    def __del__(self):
        if self.key is not None:
            self.probe._release(self.key)


class SavedBytesProbe:
    """Bytes of the tensors autograd holds for backward (saved_tensors_hooks), by storage.

    Storages that exist anyway (parameters, the input stream, the targets) are not counted; a
    storage saved many times counts once. ``mark(extra)`` samples live bytes + extra (e.g. the
    history ring's bytes) at the moment before a backward, where holdings peak.
    """

    def __init__(self, protected=()):
        self.protected = set(protected)
        self.refs, self.sizes = {}, {}
        self.live = 0
        self.peak = 0  # peak of saved bytes alone
        self.peak_total = 0  # peak of saved + extra at mark()
        self.peak_extra = 0

    def _pack(self, t):
        st = t.untyped_storage()
        key = (t.device.type, st.data_ptr())
        if st.data_ptr() == 0 or st.data_ptr() in self.protected:
            return _Held(t, None, self)
        if key not in self.refs:
            self.refs[key] = 0
            self.sizes[key] = st.nbytes()
            self.live += st.nbytes()
            self.peak = max(self.peak, self.live)
        self.refs[key] += 1
        return _Held(t, key, self)

    @staticmethod
    def _unpack(h):
        return h.t

    def _release(self, key):
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= self.sizes.pop(key)

    def mark(self, extra=0):
        self.peak_extra = max(self.peak_extra, extra)
        self.peak_total = max(self.peak_total, self.live + extra)

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)


def bytes_held_for_backward(runner):
    """Run the stream once with the probe; returns dict(saved, history, total) peak bytes."""
    protected = runner.wl.protected_storages()
    protected |= {p.untyped_storage().data_ptr() for p in runner.parameters()}
    probe = SavedBytesProbe(protected)
    runner.probe = probe
    try:
        with probe.hooks():
            runner.run()
    finally:
        runner.probe = None
    gc.collect()
    return {
        "saved_bytes": probe.peak,
        "history_bytes": probe.peak_extra,
        "held_bytes": max(probe.peak_total, probe.peak),
    }


def cuda_peak_bytes(runner):
    """Peak CUDA bytes allocated by one run above what was allocated before it."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    runner.run()
    torch.cuda.synchronize()
    return {"cuda_peak_bytes": torch.cuda.max_memory_allocated() - base, "cuda_base_bytes": base}


def rel_err(a, b):
    """||a - b|| / ||b|| in float64 (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    nb = b.norm().item()
    d = (a - b).norm().item()
    return d / nb if nb > 0 else d


# --------------------------------------------------------------------------------------------
# header: machine, CPU, GPU, torch, commit

def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info():
    info = {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "loadavg_1min": round(os.getloadavg()[0], 2),  # > 0 before a run: someone else is busy
        "gpu": None,
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name,
            gpu_mem_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_precision=torch.get_float32_matmul_precision(),
        )
    cls = ours_class()
    if cls is not None:
        try:
            import tbptt_cuda

            bi = tbptt_cuda.build_info()
            info["tbptt_cuda"] = {k: bi.get(k) for k in ("cuda", "cuda_archs", "torch", "cpu_gemm")}
        except Exception as e:  # noqa: BLE001
            info["tbptt_cuda"] = f"build_info failed: {e}"
    else:
        info["tbptt_cuda"] = f"not importable ({ours_error()})"
    return info


def header_line(info):
    dev = f"GPU {info['gpu']} (CUDA {info.get('cuda')}, cuDNN {info.get('cudnn')})" if info.get(
        "gpu") else "no GPU"
    ours = info.get("tbptt_cuda")
    gemm = f", CPU GEMMs {ours['cpu_gemm']}" if isinstance(ours, dict) and ours.get("cpu_gemm") else ""
    return (f"machine {info['host']}: CPU {info['cpu']} x{info['cpu_count']} "
            f"({info['torch_threads']} torch threads), {dev}; torch {info['torch']}, "
            f"python {info['python']}, commit {info['commit']}, "
            f"load average {info['loadavg_1min']}{gemm}")
