"""The CUDA kernels' own source, run on the CPU by the SIMT emulator (csrc/emulation).

``with tbptt_cuda.emulate_cuda() as stats:`` makes TruncatedLSTM's ops on CPU tensors run
through csrc/cuda's kernels, compiled a second time by g++ against the emulator, with the same
launch glue as on a GPU: every emulated CUDA thread is a fiber, blocks are scheduled one at a
time (so a missing grid barrier shows), and misuse (divergent barriers, deadlocks, warp
collectives whose lanes do not all arrive, shared memory out of bounds or raced between
barriers) raises RuntimeError naming the kernel, block and thread. float32, float64, and
float16 / bfloat16 CPU tensors (the CUDA kernels' half instantiations) are accepted.

What it proves: the kernels' logic, indexing, barrier placement and dtype paths. What only a
GPU can: speed, occupancy as the hardware computes it, the hardware's memory ordering, and
compute-sanitizer. The setting is process-wide; use it from one thread at a time.
"""
import numbers

from . import _backend

_PATHS = ("auto", "persistent", "stepwise")


class EmulationStats:
    """What our kernels did inside one ``emulate_cuda()`` block (live while it runs).

    launches: {kernel name: launches}; block_barriers: completed __syncthreads summed over
    blocks; grid_barriers: completed grid-wide barriers; warp_collectives: warp shuffles,
    votes, __syncwarp and mma joined, per lane; per_kernel: {name: dict of the four}.
    """

    _FIELDS = ("launches", "block_barriers", "grid_barriers", "warp_collectives")

    def __init__(self):
        self._start = None
        self._end = None

    def _now(self):
        return self._end if self._end is not None else _snapshot()

    @property
    def per_kernel(self):
        start, now = self._start or {}, self._now()
        table = {}
        for name, counts in now.items():
            before = start.get(name, [0] * len(counts))
            delta = [a - b for a, b in zip(counts, before)]
            if any(delta):
                table[name] = dict(zip(self._FIELDS, delta))
        return table

    @property
    def launches(self):
        return {name: c["launches"] for name, c in self.per_kernel.items() if c["launches"]}

    @property
    def block_barriers(self):
        return sum(c["block_barriers"] for c in self.per_kernel.values())

    @property
    def grid_barriers(self):
        return sum(c["grid_barriers"] for c in self.per_kernel.values())

    @property
    def warp_collectives(self):
        return sum(c["warp_collectives"] for c in self.per_kernel.values())

    def __repr__(self):
        return (f"EmulationStats(launches={self.launches}, block_barriers={self.block_barriers}, "
                f"grid_barriers={self.grid_barriers})")


def _snapshot():
    return {name: list(counts) for name, counts in _backend.load().emulation_stats().items()}


class emulate_cuda:  # noqa: N801  (used as a context manager, like torch.no_grad)
    """Run TruncatedLSTM's ops on CPU tensors through the emulated CUDA kernels.

    Args:
        path: which CUDA path runs the recurrence: "auto" (the plan's rule), "persistent"
            (always; an error where no plan fits) or "stepwise" (as tbptt_cuda.set_cuda_path
            on a GPU).
        seed: None for the deterministic schedule (blocks and threads in order); an integer
            for a randomised interleaving from that seed. Correct kernels give bit-identical
            results under every schedule.
        sms: SMs of the simulated device in use (None: all of the device's). Fewer SMs make a
            large cooperative grid fail to fit, as on a smaller or shared GPU.
        device: the GPU simulated, by name: "H100" (default), "A100", "A10", "RTX4090" or
            "L4" (``tbptt_cuda.emulation.devices()`` lists their published limits: SMs,
            shared memory per SM and per block, threads and blocks per SM, compute
            capability). The persistent plan, its shared-memory fit, the co-residency check
            and auto's rule (per architecture family) follow that device.

    Yields an EmulationStats. Nested blocks restore the outer settings on exit.
    """

    _stack = []

    def __init__(self, path="auto", seed=None, sms=None, device="H100"):
        if path not in _PATHS:
            raise ValueError(f"emulate_cuda: path must be one of {_PATHS}, got {path!r}")
        if not isinstance(device, str) or (_backend.load().compiled_with_emulation()
                                           and device not in devices()):
            raise ValueError(f"emulate_cuda: device must be one of {tuple(devices())}, "
                             f"got {device!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"emulate_cuda: seed must be None or an integer >= 0, got {seed!r}")
        if sms is not None and (isinstance(sms, bool) or not isinstance(sms, numbers.Integral)
                                or sms < 1):
            raise ValueError(f"emulate_cuda: sms must be None or an integer >= 1, got {sms!r}")
        self.path, self.seed, self.sms, self.device = path, seed, sms, device
        self.stats = EmulationStats()

    def _apply(self):
        module = _backend.load()
        module.set_emulation(True, -1 if self.seed is None else int(self.seed), self.device,
                             0 if self.sms is None else int(self.sms), self.path)

    def __enter__(self):
        module = _backend.load()
        if not module.compiled_with_emulation():
            raise RuntimeError(
                "emulate_cuda: this build of tbptt_cuda left out the emulated kernels "
                "(TBPTT_NO_EMULATION=1); rebuild without it")
        emulate_cuda._stack.append(self)
        self._apply()
        self.stats._start = _snapshot()
        return self.stats

    def __exit__(self, *exc):
        self.stats._end = _snapshot()
        emulate_cuda._stack.remove(self)
        if emulate_cuda._stack:
            emulate_cuda._stack[-1]._apply()
        else:
            _backend.load().set_emulation(False, -1, "H100", 0, "auto")
        return False


def active():
    """Whether CPU tensors go through the emulated CUDA kernels right now."""
    module = _backend.load()
    return module.compiled_with_emulation() and module.emulation_active()


def devices():
    """The GPUs the emulator can simulate (``emulate_cuda(device=...)``), by name: their
    published limits (capability as major * 10 + minor, sms, registers_per_sm,
    shared_bytes_per_sm, shared_bytes_per_block_optin, threads_per_sm, blocks_per_sm,
    threads_per_block)."""
    return dict(_backend.load().emulated_devices())


def plan(hidden, batch, dtype=None, sms=None, device=None, cell="lstm", proj_size=None):
    """The persistent kernels' plan for one layer of ``cell`` ("lstm", "gru", or "lstmp" with
    ``proj_size`` P: default hidden // 2) with ``hidden`` units and ``batch`` rows on the simulated ``device`` (a name of ``devices()``) with ``sms`` of its SMs (None for both: the
    device in use inside ``emulate_cuda``, else a whole H100): a dict with usable, reason,
    sms, capability, family (the rule table's row: "sm_80", "sm_86/sm_89" or "sm_90"), rule
    (auto's limits for this family and dtype: max_batch, max_batch_hidden, min_steps), and the
    forward / backward partitions (blocks, units, threads, batch_tile, k_split, k_chunk,
    shared_bytes)."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    name = str(dtype).replace("torch.", "")
    proj = 0 if cell != "lstmp" else int(hidden) // 2 if proj_size is None else int(proj_size)
    module = _backend.load()
    if emulate_cuda._stack:
        current = emulate_cuda._stack[-1]
        if (sms is None or sms == current.sms) and (device is None or device == current.device):
            return module.persistent_plan("emulated", int(hidden), int(batch), name, cell, proj)
    with emulate_cuda(sms=sms, device=device or "H100"):
        return module.persistent_plan("emulated", int(hidden), int(batch), name, cell, proj)


def barrier_bench(blocks, threads, rounds, exchange=True):
    """One cooperative launch of the grid-barrier microbenchmark (csrc/cuda/barrier_bench.cuh)
    on the simulated device (emulate_cuda(sms=...) sizes it): ``rounds`` grid barriers, with
    ``exchange`` a word per thread passed to the next block each round. Returns the int64
    tensor [blocks, threads] of the words each thread read, summed mod 2**32 (zeros without
    exchange); the emulator's stats count the barriers under "barrier_bench". A GPU's latency:
    bench/barrier_latency.py."""
    return _backend.load().emulated_barrier_bench(int(blocks), int(threads), int(rounds),
                                                  bool(exchange))


def fail_launches(kernel, status=720):
    """Test hook: launches of the emulated kernel ``kernel`` (e.g. "persistent_forward") return
    the cudaError_t ``status`` (720: cooperative launch too large) without running, as a GPU
    that refuses them would; ``fail_launches(None)`` stops it."""
    _backend.load().emulator_fail_launches(kernel or "", int(status))


def clear_plans():
    """Forgets the emulated device's persistent plans (and which of them failed)."""
    _backend.load().emulator_clear_plans()
