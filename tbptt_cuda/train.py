"""Training helper: TBPTT(k1, k2) over a stream of chunks, with no manual ``detach()``.

The model is any ``nn.Module`` built on :class:`tbptt_cuda.TruncatedLSTM` whose forward is::

    outputs, state = model(inputs, state, reset=reset)   # state None at the stream's start

(a bare ``TruncatedLSTM`` qualifies). Each chunk is one update: forward over its k1 steps,
the loss of its outputs, ``backward()`` (the gradient reaches k2 steps back through the
module's history ring), gradient clipping, ``optimizer.step()``. The returned state is passed
to the next chunk as is.

Chunks are :class:`tbptt_cuda.data.StreamChunk` (inputs, reset, targets, valid) — e.g. from
:class:`tbptt_cuda.data.SequenceStream` — or plain ``(inputs, targets)`` pairs. The loss
function receives the valid steps only, with the time and batch dims flattened into one:
``loss_fn(outputs[valid], targets[valid])`` = ([n, *C], [n, *G]), so ``F.cross_entropy`` and
``F.mse_loss`` work unchanged.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import IO, Callable, Iterable, List, Optional, Tuple, Union

import torch
from tqdm import autonotebook as _tqdm_autonotebook
from tqdm import std as _tqdm_std
from tqdm.auto import tqdm

__all__ = ["train_tbptt", "evaluate", "TrainResult", "EvalResult", "history_nbytes", "set_k2",
           "PROGRESS_MODES", "progress_mode"]

PROGRESS_MODES = ("auto", "bar", "lines", "none")
LINES_PER_RUN = 20      # "lines" mode with no period given and a known length: about this many lines
LINES_EVERY_SECONDS = 10.0  # ... and with an unknown length: one line this often


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def progress_mode(progress: Union[bool, str, None] = "auto", file: Optional[IO[str]] = None) -> str:
    """What ``progress`` means here and now: "bar", "lines" or "none".

    ``True`` is "auto", ``False``/``None`` "none". "auto" picks the tqdm bar in a notebook, and
    where ``file`` (the bar's stream) is a terminal — when no ``file`` is given, where both
    stderr (tqdm's stream) and stdout are terminals, so ``python train.py > log`` logs plain
    lines; elsewhere "lines": one plain line every few updates, no carriage returns.
    """
    if progress is True:
        progress = "auto"
    elif progress is False or progress is None:
        progress = "none"
    if progress not in PROGRESS_MODES:
        raise ValueError(f"progress must be True, False or one of {PROGRESS_MODES}, got {progress!r}")
    if progress != "auto":
        return progress
    if _tqdm_autonotebook.tqdm is not _tqdm_std.tqdm:  # a Jupyter kernel: tqdm draws a widget
        return "bar"
    if file is not None:
        return "bar" if _isatty(file) else "lines"
    return "bar" if _isatty(sys.stderr) and _isatty(sys.stdout) else "lines"


def history_nbytes(state) -> int:
    """Bytes held by the history ring(s) of a state, or of a nested tuple/list/dict of states."""
    if state is None:
        return 0
    if hasattr(state, "history_nbytes"):
        return int(state.history_nbytes)
    if isinstance(state, dict):
        return sum(history_nbytes(v) for v in state.values())
    if isinstance(state, (tuple, list)):
        return sum(history_nbytes(v) for v in state)
    return 0


def set_k2(model: torch.nn.Module, k2: Optional[int]) -> int:
    """Set ``k2`` on every TruncatedLSTM and TruncatedGRU inside ``model``; returns how many
    were set."""
    from .module import TruncatedGRU, TruncatedLSTM

    if k2 is not None and (isinstance(k2, bool) or not isinstance(k2, int) or k2 < 1):
        raise ValueError(f"k2 must be None or an integer >= 1, got {k2!r}")
    found = [m for m in model.modules() if isinstance(m, (TruncatedLSTM, TruncatedGRU))]
    if not found:
        raise TypeError("model must contain a TruncatedLSTM or TruncatedGRU to set k2 on (from "
                        "tbptt_cuda import TruncatedLSTM)")
    for module in found:
        module.k2 = k2
    return len(found)


def _unpack(chunk, position: int):
    """(inputs, reset, targets, valid) from a StreamChunk or an (inputs, targets) pair."""
    if hasattr(chunk, "inputs") and hasattr(chunk, "targets"):
        inputs, reset, targets = chunk.inputs, getattr(chunk, "reset", None), chunk.targets
        valid = getattr(chunk, "valid", None)
    elif isinstance(chunk, (tuple, list)) and len(chunk) == 2:
        (inputs, targets), reset, valid = chunk, None, None
    else:
        raise TypeError(
            f"chunk {position} must be a StreamChunk (inputs, reset, targets, valid) or an "
            f"(inputs, targets) pair, got {type(chunk).__name__}"
        )
    if targets is None:
        raise ValueError(
            f"chunk {position} has no targets: build the stream with targets= (they travel with the inputs)"
        )
    return inputs, reset, targets, valid


def _masked(outputs: torch.Tensor, targets: torch.Tensor, valid: Optional[torch.Tensor]):
    """Flatten the two leading (time, batch) dims; keep only valid steps."""
    if outputs.shape[:2] != targets.shape[:2]:
        raise ValueError(
            f"model outputs {tuple(outputs.shape)} and targets {tuple(targets.shape)} must agree in "
            "their two leading (time, batch) dims — is the model's batch_first the stream's?"
        )
    if valid is None or bool(valid.all()):
        return outputs.flatten(0, 1), targets.flatten(0, 1)
    return outputs[valid], targets[valid]


def _amp_dtype(amp: Union[bool, str], device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype that ``amp`` asks for on the parameters' ``device``; None when off.

    CUDA: 'bf16' or 'fp16' (True: bf16 where the GPU supports it, else fp16). CPU: bfloat16
    only (True or 'bf16'); 'fp16' is refused there. Any other device type is refused.
    """
    if not amp:
        return None
    if amp is not True and amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be False, True, 'bf16' or 'fp16', got {amp!r}")
    if device.type == "cuda":
        if amp is True:
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu":
        if amp == "fp16":
            raise ValueError(
                "amp='fp16' with the model on the CPU: mixed precision on the CPU is bfloat16 here "
                "(amp=True or amp='bf16': torch.autocast('cpu', dtype=torch.bfloat16), no "
                "GradScaler); 'fp16' is for CUDA"
            )
        return torch.bfloat16
    raise ValueError(
        f"amp={amp!r} needs the model on CUDA (bf16 or fp16) or the CPU (bf16), but its "
        f"parameters are on {device}; pass amp=False"
    )


def _autocast_context(amp: Union[bool, str], device: torch.device):
    """(context factory, GradScaler or None) for mixed precision; nullcontext when off.

    CUDA: torch.autocast("cuda", bf16 or fp16), with a GradScaler for fp16. CPU:
    torch.autocast("cpu", bfloat16), no GradScaler (bfloat16 has float32's exponent range).
    """
    dtype = _amp_dtype(amp, device)
    if dtype is None:
        return contextlib.nullcontext, None
    if device.type == "cpu":
        return (lambda: torch.autocast("cpu", dtype=dtype)), None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


@dataclass
class EvalResult:
    """Held-out loss: ``loss`` is the mean over ``count`` valid steps (weighted by chunk)."""

    loss: float
    count: int
    seconds: float


@torch.no_grad()
def evaluate(model: torch.nn.Module, chunks: Iterable, loss_fn: Callable, max_chunks: Optional[int] = None,
             amp: Union[bool, str] = False) -> EvalResult:
    """Mean loss of ``model`` over ``chunks`` in eval mode, the state carried from chunk to chunk.

    Runs under ``torch.no_grad()`` (nothing is written to the history ring); restores the
    model's training mode afterwards. ``loss_fn`` must return a mean over its n rows (it gets
    the outputs in float32). ``amp``: as :func:`train_tbptt`'s — the forward under autocast.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    autocast, _ = _autocast_context(amp, device)
    start = time.perf_counter()
    total, count, state = 0.0, 0, None
    try:
        for position, chunk in enumerate(chunks):
            if max_chunks is not None and position >= max_chunks:
                break
            inputs, reset, targets, valid = _unpack(chunk, position)
            with autocast():
                outputs, state = model(inputs, state, reset=reset)
                out, tgt = _masked(outputs, targets, valid)
                if out.shape[0] == 0:
                    continue
                loss = loss_fn(out.float(), tgt)
            total += float(loss) * out.shape[0]
            count += out.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: chunks held no valid step to score")
    return EvalResult(loss=total / count, count=count, seconds=time.perf_counter() - start)


@dataclass
class TrainResult:
    """What :func:`train_tbptt` did.

    losses: training loss per update; update_seconds: wall time per update (forward,
    backward, clipping, step); evals: (update, held-out loss) pairs; history_nbytes: bytes
    held by the history ring(s) after the last update; lane_steps: (lane, step) pairs run
    (L x B summed over chunks, padding included); scored_steps: the valid ones the loss saw.
    """

    losses: List[float] = field(default_factory=list)
    update_seconds: List[float] = field(default_factory=list)
    evals: List[Tuple[int, float]] = field(default_factory=list)
    updates: int = 0
    lane_steps: int = 0
    scored_steps: int = 0
    seconds: float = 0.0
    train_seconds: float = 0.0
    history_nbytes: int = 0
    peak_history_nbytes: int = 0
    state: object = None
    stopped_by: str = ""

    @property
    def updates_per_second(self) -> float:
        return self.updates / self.train_seconds if self.train_seconds > 0 else float("nan")

    @property
    def scored_steps_per_second(self) -> float:
        """Throughput in (lane, step) pairs per second — characters/s for a language model."""
        return self.scored_steps / self.train_seconds if self.train_seconds > 0 else float("nan")


def train_tbptt(model: torch.nn.Module,
                optimizer: torch.optim.Optimizer,
                loss_fn: Callable,
                chunks: Iterable,
                *,
                k2: Optional[int] = None,
                max_updates: Optional[int] = None,
                max_seconds: Optional[float] = None,
                clip_grad_norm: Optional[float] = 1.0,
                amp: Union[bool, str] = False,
                eval_chunks: Optional[Iterable] = None,
                eval_every: Optional[int] = None,
                eval_every_seconds: Optional[float] = None,
                eval_max_chunks: Optional[int] = None,
                cycle: bool = False,
                progress: Union[bool, str] = "auto",
                log_every: Optional[int] = None,
                log_every_seconds: Optional[float] = None,
                log: Optional[Callable[[str], None]] = None,
                progress_file: Optional[IO[str]] = None,
                on_update: Optional[Callable[[int, float, object], None]] = None,
                desc: str = "train") -> TrainResult:
    """Train with TBPTT(k1, k2): one update per chunk, the state carried, never detached.

    Args:
        model: module built on TruncatedLSTM; ``model(inputs, state, reset=reset)`` ->
            (outputs [L, B, *C] or [B, L, *C], state).
        optimizer: over the model's parameters.
        loss_fn: ``(outputs[valid] [n, *C], targets[valid] [n, *G]) -> scalar`` (a mean).
        chunks: iterable of StreamChunk / (inputs, targets); k1 is their length L.
        k2: if given, set on every TruncatedLSTM of the model first (else theirs is kept).
        max_updates: stop after this many updates (None: no limit).
        max_seconds: stop when this much wall time (evaluations included) has passed.
        clip_grad_norm: max global grad norm (None or 0: no clipping).
        amp: mixed precision: the forward runs under ``torch.autocast`` (float32 parameters,
            their gradients and the optimizer stay float32; the loss gets float32 outputs); the
            evaluations use it too. False: off.
            CUDA: True, 'bf16' or 'fp16' (True: bf16 where the GPU has it, else fp16; fp16
            with a GradScaler). CPU: True or 'bf16' (bfloat16, no GradScaler); 'fp16' raises
            ValueError (CPU mixed precision is bfloat16 here). Other devices: ValueError.
        eval_chunks: re-iterable held-out chunks, scored by :func:`evaluate` every
            ``eval_every`` updates and/or ``eval_every_seconds`` (if set) and at the end.
        eval_max_chunks: score at most this many held-out chunks per evaluation.
        cycle: when ``chunks`` is exhausted, iterate it again (a new epoch, state restarted)
            instead of stopping; needs a re-iterable (e.g. SequenceStream) and a limit.
        progress: how training shows its progress (see :func:`progress_mode`):
            "bar": a tqdm bar with the loss, updates/s and steps/s; "lines": no bar, one plain
            line (update i/total, time, loss, updates/s, steps/s, history bytes) every
            ``log_every`` updates and/or ``log_every_seconds`` (when neither is given: about
            20 lines per run, or one every 10 s when the run's length is unknown), and one
            for the last update — what a log file wants; "none": neither; "auto" (default,
            also ``True``): the bar on a terminal, else lines. ``False``: "none".
        log_every, log_every_seconds: write that plain line every this many updates / seconds
            (in "bar" and "none" modes too, beside the bar).
        log: where the plain lines (and the held-out losses) go, e.g. ``print`` or a
            ``logging`` method; default: ``progress_file`` when given, else stdout (above the
            bar in "bar" mode).
        progress_file: the bar's stream (default stderr, as tqdm's); "auto" asks whether it
            is a terminal.
        on_update: called as ``on_update(update, loss, state)`` after each update.

    Returns:
        :class:`TrainResult`.
    """
    if max_updates is not None and (isinstance(max_updates, bool) or not isinstance(max_updates, int) or max_updates < 1):
        raise ValueError(f"max_updates must be None or an integer >= 1, got {max_updates!r}")
    if max_seconds is not None and not (max_seconds > 0):
        raise ValueError(f"max_seconds must be None or > 0, got {max_seconds!r}")
    if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
        raise ValueError(f"eval_every must be None or an integer >= 1, got {eval_every!r}")
    for name, value in (("eval_every_seconds", eval_every_seconds), ("log_every_seconds", log_every_seconds)):
        if value is not None and not (value > 0):
            raise ValueError(f"{name} must be None or > 0, got {value!r}")
    if (eval_every is not None or eval_every_seconds is not None) and eval_chunks is None:
        raise ValueError("eval_every / eval_every_seconds need eval_chunks (the held-out data to score)")
    if cycle and max_updates is None and max_seconds is None:
        raise ValueError("cycle=True repeats the data forever: give max_updates or max_seconds")
    if cycle and iter(chunks) is chunks:
        raise ValueError("cycle=True needs a re-iterable chunks (a SequenceStream or a list), not a one-shot iterator")
    if log_every is not None and (isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1):
        raise ValueError(f"log_every must be None or an integer >= 1, got {log_every!r}")
    mode = progress_mode(progress, progress_file)
    if k2 is not None:
        set_k2(model, k2)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("model has no trainable parameters")
    device = parameters[0].device
    autocast, scaler = _autocast_context(amp, device)

    total = max_updates
    if total is None and not cycle:
        try:
            total = len(chunks)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if mode == "lines" and not log_every and not log_every_seconds:
        if total:
            log_every = max(1, math.ceil(total / LINES_PER_RUN))
        else:
            log_every_seconds = LINES_EVERY_SECONDS
    bar = tqdm(total=total, desc=desc, unit="upd", disable=mode != "bar", dynamic_ncols=True, leave=True,
               file=progress_file if mode == "bar" else None)
    if log is not None:
        write = log
    elif mode == "bar":  # above the bar: tqdm clears it, writes the line, redraws it

        def write(line: str) -> None:
            bar.write(line, file=progress_file)  # None: stdout
    else:
        stream = progress_file if progress_file is not None else sys.stdout

        def write(line: str) -> None:
            print(line, file=stream, flush=True)

    def progress_line(now: float, nbytes: int) -> str:
        train_seconds = max(now - start - eval_seconds, 1e-9)
        count = f"{result.updates:6d}" + (f"/{total}" if total else "")
        return (f"[{desc}] update {count}  {now - start:6.1f}s  loss {smoothed:.4f}  "
                f"{result.updates / train_seconds:,.1f} upd/s  "
                f"{result.scored_steps / train_seconds:,.0f} steps/s  history {nbytes:,} B")

    result = TrainResult()
    model.train()
    state = None
    smoothed = None
    start = time.perf_counter()
    eval_seconds = 0.0
    last_eval_time = last_log_time = start
    last_logged = 0

    def run_eval():
        nonlocal eval_seconds
        ev = evaluate(model, eval_chunks, loss_fn, max_chunks=eval_max_chunks, amp=amp)
        eval_seconds += ev.seconds
        result.evals.append((result.updates, ev.loss))
        return ev.loss

    iterator = iter(chunks)
    position = 0
    try:
        while True:
            if max_updates is not None and result.updates >= max_updates:
                result.stopped_by = "max_updates"
                break
            if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                result.stopped_by = "max_seconds"
                break
            try:
                chunk = next(iterator)
            except StopIteration:
                if not cycle or position == 0:
                    result.stopped_by = "data exhausted"
                    break
                iterator, state, position = iter(chunks), None, 0
                continue
            inputs, reset, targets, valid = _unpack(chunk, position)
            position += 1
            t0 = time.perf_counter()
            with autocast():
                outputs, state = model(inputs, state, reset=reset)
                out, tgt = _masked(outputs, targets, valid)
                if out.shape[0] == 0:  # a chunk of padding only: nothing to learn from
                    continue
                loss = loss_fn(out.float(), tgt)
            value = loss.item()
            if not math.isfinite(value):  # before the step: the weights stay usable
                raise FloatingPointError(
                    f"training loss became {value} at update {result.updates + 1}: lower the learning "
                    "rate, set clip_grad_norm, or check the targets"
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            elapsed = time.perf_counter() - t0
            result.update_seconds.append(elapsed)
            result.losses.append(value)
            result.updates += 1
            result.lane_steps += int(outputs.shape[0] * outputs.shape[1])
            result.scored_steps += int(out.shape[0])
            nbytes = history_nbytes(state)
            result.history_nbytes = nbytes
            result.peak_history_nbytes = max(result.peak_history_nbytes, nbytes)
            smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
            if on_update is not None:
                on_update(result.updates, value, state)
            now = time.perf_counter()
            if log_every and result.updates % log_every == 0 or \
                    log_every_seconds and now - last_log_time >= log_every_seconds:
                last_log_time, last_logged = now, result.updates
                write(progress_line(now, nbytes))
            if eval_every is not None and result.updates % eval_every == 0 or \
                    eval_every_seconds is not None and now - last_eval_time >= eval_every_seconds:
                val = run_eval()
                last_eval_time = time.perf_counter()
                write(f"[{desc}] update {result.updates:6d}  {last_eval_time - start:6.1f}s  held-out loss {val:.4f}")
            train_seconds = time.perf_counter() - start - eval_seconds
            postfix = {"loss": f"{smoothed:.4f}", "steps/s": f"{result.scored_steps / max(train_seconds, 1e-9):.0f}"}
            if result.evals:
                postfix["val"] = f"{result.evals[-1][1]:.4f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    if mode == "lines" and result.updates and last_logged != result.updates:
        write(progress_line(time.perf_counter(), result.history_nbytes))  # where the run ended
    result.train_seconds = time.perf_counter() - start - eval_seconds
    if eval_chunks is not None and result.updates and (not result.evals or result.evals[-1][0] != result.updates):
        run_eval()
    result.seconds = time.perf_counter() - start
    result.train_seconds = result.seconds - eval_seconds
    result.state = state
    if result.updates == 0:
        warnings.warn("train_tbptt made no update: the data held no valid step or the limits were 0")
    return result
