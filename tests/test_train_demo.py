"""Training helper (tbptt_cuda.train) and the demo entry points (tbptt_cuda.demo), tiny budgets."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tbptt_cuda import TruncatedLSTM
from tbptt_cuda import demo
from tbptt_cuda.data import SequenceStream
from tbptt_cuda.train import evaluate, history_nbytes, set_k2, train_tbptt

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    yield


class Regressor(torch.nn.Module):
    def __init__(self, hidden=16, k2=None):
        super().__init__()
        self.lstm = TruncatedLSTM(1, hidden, k2=k2)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x, state=None, reset=None):
        out, state = self.lstm(x, state, reset=reset)
        return self.head(out), state


def delayed_sum(delay, lanes, steps, seed):
    """Per lane: x random [steps, 1]; target(t) = x(t) + x(t - delay) (x(t) alone for t < delay)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(lanes, steps, 1, generator=g)
    y = x.clone()
    y[:, delay:] += x[:, :-delay]
    return list(x), list(y)


def first_last(losses, n):
    return float(np.mean(losses[:n])), float(np.mean(losses[-n:]))


# ----------------------------------------------------------------------------------------
# train_tbptt


def test_train_tbptt_loss_falls_and_held_out_improves():
    torch.manual_seed(0)
    model = Regressor(k2=None)
    xs, ys = delayed_sum(delay=3, lanes=8, steps=600, seed=0)
    vx, vy = delayed_sum(delay=3, lanes=4, steps=200, seed=1)
    train = SequenceStream(xs, k1=4, batch_size=8, targets=ys)
    held_out = SequenceStream(vx, k1=4, batch_size=4, targets=vy)
    before = evaluate(model, held_out, F.mse_loss).loss
    run = train_tbptt(model, torch.optim.Adam(model.parameters(), lr=1e-2), F.mse_loss, train,
                      k2=8, max_updates=150, eval_chunks=held_out, eval_every=50, progress=False)
    assert model.lstm.k2 == 8  # set by k2=
    first, last = first_last(run.losses, 15)
    assert last < 0.5 * first, (first, last)
    assert [u for u, _ in run.evals] == [50, 100, 150]
    assert run.evals[-1][1] < 0.5 * before
    assert run.updates == 150 and run.stopped_by == "max_updates"
    assert run.lane_steps == 150 * 4 * 8 == run.scored_steps
    assert run.history_nbytes == history_nbytes(run.state) > 0
    assert run.updates_per_second > 0 and len(run.update_seconds) == 150


def test_k2_beyond_chunk_learns_what_bptt_k_k_cannot():
    """Delay 3 > k1 = 2: the gradient must reach into the previous chunk."""
    results = {}
    for k2 in (2, 6):
        torch.manual_seed(0)
        model = Regressor(hidden=16)
        xs, ys = delayed_sum(delay=3, lanes=8, steps=800, seed=0)
        run = train_tbptt(model, torch.optim.Adam(model.parameters(), lr=1e-2), F.mse_loss,
                          SequenceStream(xs, k1=2, batch_size=8, targets=ys), k2=k2, progress=False)
        results[k2] = np.mean(run.losses[-50:])
    # target variance 2: BPTT(2,2) can learn x(t) (loss -> ~1), BPTT(2,6) also x(t-3)
    assert results[6] < 0.6 * results[2], results


def test_k1_one_step_per_call_keeps_state():
    """Internal state: BPTT(1, k2), one step per call; target(t) = x(t - 1)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 400, 1, generator=g)
    y = torch.zeros_like(x)
    y[:, 1:] = x[:, :-1]
    stream = SequenceStream(list(x), k1=1, batch_size=16, targets=list(y))
    assert all(chunk.inputs.shape == (1, 16, 1) for chunk in stream)
    model = Regressor(hidden=16)
    run = train_tbptt(model, torch.optim.Adam(model.parameters(), lr=1e-2), F.mse_loss, stream,
                      k2=4, progress=False)
    assert run.updates == 400 and run.lane_steps == 400 * 16
    first, last = first_last(run.losses, 40)
    assert last < 0.3 * first, (first, last)
    # the ring holds k2 = 4 steps: more than one step's worth of history
    single = Regressor(hidden=16)
    _, one_step_state = single(x[:, :1].transpose(0, 1), None)
    assert run.history_nbytes > one_step_state.history_nbytes > 0


def test_progress_bar_shows_loss_and_steps_per_second(capsys):
    model = Regressor(hidden=8)
    xs, ys = delayed_sum(delay=1, lanes=2, steps=40, seed=0)
    # "bar": captured stderr is no terminal, where progress=True ("auto") prints plain lines
    # instead (tests/test_log_output.py)
    train_tbptt(model, torch.optim.SGD(model.parameters(), lr=0.01), F.mse_loss,
                SequenceStream(xs, k1=4, batch_size=2, targets=ys), k2=4, progress="bar")
    err = capsys.readouterr().err
    assert "loss=" in err and "steps/s=" in err and "10/10" in err


def test_time_budget_and_cycling():
    model = Regressor(hidden=8)
    xs, ys = delayed_sum(delay=1, lanes=2, steps=8, seed=0)
    stream = SequenceStream(xs, k1=4, batch_size=2, targets=ys)  # 2 chunks per epoch
    run = train_tbptt(model, torch.optim.SGD(model.parameters(), lr=0.01), F.mse_loss, stream,
                      max_updates=7, cycle=True, progress=False)
    assert run.updates == 7  # 3.5 epochs
    run = train_tbptt(model, torch.optim.SGD(model.parameters(), lr=0.01), F.mse_loss, stream,
                      max_seconds=0.3, cycle=True, progress=False)
    assert run.stopped_by == "max_seconds" and run.updates > 2
    assert run.seconds < 5


def test_padding_is_not_scored():
    model = Regressor(hidden=8)
    xs = [torch.randn(10, 1), torch.randn(3, 1)]
    stream = SequenceStream(xs, k1=4, batch_size=2, targets=xs)
    run = train_tbptt(model, torch.optim.SGD(model.parameters(), lr=0.01), F.mse_loss, stream,
                      progress=False)
    assert run.scored_steps == 13 and run.lane_steps == 20


def test_train_tbptt_rejects_bad_arguments():
    model = Regressor(hidden=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xs, ys = delayed_sum(delay=1, lanes=2, steps=8, seed=0)
    stream = SequenceStream(xs, k1=4, batch_size=2, targets=ys)
    with pytest.raises(ValueError, match="amp='fp16' with the model on the CPU: mixed precision on the CPU is "
                                         "bfloat16 here"):
        train_tbptt(model, opt, F.mse_loss, stream, amp="fp16", progress=False)
    with pytest.raises(ValueError, match="mixed precision on the CPU is bfloat16"):
        evaluate(model, stream, F.mse_loss, amp="fp16")
    with pytest.raises(ValueError, match="amp must be False, True, 'bf16' or 'fp16', got 'f16'"):
        train_tbptt(model, opt, F.mse_loss, stream, amp="f16", progress=False)
    with pytest.raises(ValueError, match="re-iterable"):
        train_tbptt(model, opt, F.mse_loss, iter(stream), cycle=True, max_updates=3, progress=False)
    with pytest.raises(ValueError, match="give max_updates or max_seconds"):
        train_tbptt(model, opt, F.mse_loss, stream, cycle=True, progress=False)
    with pytest.raises(ValueError, match="max_updates must be"):
        train_tbptt(model, opt, F.mse_loss, stream, max_updates=0, progress=False)
    with pytest.raises(ValueError, match="has no targets"):
        train_tbptt(model, opt, F.mse_loss, SequenceStream(xs, k1=4, batch_size=2), progress=False)
    with pytest.raises(ValueError, match="eval_chunks"):
        train_tbptt(model, opt, F.mse_loss, stream, eval_every=2, progress=False)
    with pytest.raises(TypeError, match="must contain a TruncatedLSTM"):
        set_k2(torch.nn.Linear(2, 2), 4)
    with pytest.raises(ValueError, match="k2 must be None or an integer >= 1"):
        set_k2(model, 0)


def test_diverging_loss_raises_clearly():
    model = Regressor(hidden=4)
    xs, ys = delayed_sum(delay=1, lanes=2, steps=8, seed=0)
    ys = [y * float("inf") for y in ys]
    with pytest.raises(FloatingPointError, match="learning rate"):
        train_tbptt(model, torch.optim.SGD(model.parameters(), lr=0.1), F.mse_loss,
                    SequenceStream(xs, k1=4, batch_size=2, targets=ys), progress=False)


# ----------------------------------------------------------------------------------------
# mixed precision on the CPU: torch.autocast("cpu", dtype=torch.bfloat16)


def _record_lstm_dtypes(model):
    """Per call of model.lstm: (training, output dtype, state h dtype)."""
    seen = []
    model.lstm.register_forward_hook(lambda module, args, out: seen.append(
        (module.training, out[0].dtype, out[1][0].dtype)))
    return seen


@pytest.mark.parametrize("amp", [True, "bf16"])
def test_cpu_amp_trains_in_bfloat16_with_float32_parameters_and_gradients(amp):
    torch.manual_seed(0)
    model = Regressor(k2=None)
    seen = _record_lstm_dtypes(model)
    heads = []
    model.head.register_forward_hook(lambda module, args, out: heads.append(out.dtype))
    xs, ys = delayed_sum(delay=3, lanes=8, steps=400, seed=0)
    vx, vy = delayed_sum(delay=3, lanes=4, steps=40, seed=1)
    train = SequenceStream(xs, k1=4, batch_size=8, targets=ys)
    held_out = SequenceStream(vx, k1=4, batch_size=4, targets=vy)
    run = train_tbptt(model, torch.optim.Adam(model.parameters(), lr=1e-2), F.mse_loss, train, k2=8,
                      max_updates=100, amp=amp, eval_chunks=held_out, eval_every=50, progress=False)
    # the LSTM ran its bfloat16 path (outputs and carried state in bf16), in training and in
    # the evaluations; the Linear head ran under autocast too
    assert {(t, out, h) for t, out, h in seen} == {(True, torch.bfloat16, torch.bfloat16),
                                                    (False, torch.bfloat16, torch.bfloat16)}
    assert set(heads) == {torch.bfloat16}
    assert run.state[0].dtype == torch.bfloat16 and run.state.history.h_init.dtype == torch.bfloat16
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        assert p.grad is not None and p.grad.dtype == torch.float32, name
    assert [u for u, _ in run.evals] == [50, 100]
    first, last = first_last(run.losses, 10)
    assert last < 0.7 * first, (first, last)
    # without amp, evaluate runs the same model in float32
    seen.clear()
    evaluate(model, held_out, F.mse_loss)
    assert {out for _, out, _ in seen} == {torch.float32}


def test_cpu_amp_rounds_like_bfloat16_but_follows_float32():
    """The same seed, data and updates with and without amp='bf16': the losses differ (bf16
    arithmetic happened) by no more than bfloat16's rounding makes of them."""
    losses = {}
    for amp in (False, "bf16"):
        torch.manual_seed(0)
        model = Regressor(k2=None)
        xs, ys = delayed_sum(delay=3, lanes=8, steps=80, seed=0)
        run = train_tbptt(model, torch.optim.Adam(model.parameters(), lr=1e-2), F.mse_loss,
                          SequenceStream(xs, k1=4, batch_size=8, targets=ys), k2=8, max_updates=20,
                          amp=amp, progress=False)
        losses[amp] = np.array(run.losses)
    gap = np.abs(losses["bf16"] - losses[False]) / losses[False]
    assert gap.max() > 1e-4  # a no-op amp would give float32's losses exactly
    assert gap.max() < 0.05, gap


def test_amp_on_another_device_type_is_refused():
    from tbptt_cuda.train import _autocast_context

    with pytest.raises(ValueError, match=r"needs the model on CUDA \(bf16 or fp16\) or the CPU \(bf16\), but its "
                                         "parameters are on mps"):
        _autocast_context(True, torch.device("mps"))
    context, scaler = _autocast_context(False, torch.device("mps"))
    assert scaler is None


# ----------------------------------------------------------------------------------------
# demo entry points


def test_demo_lm_smoke_learns_and_writes_files(tmp_path, capsys):
    summary = demo.main([
        "--out", str(tmp_path), "--max-chars", "60000", "--val-chars", "4000", "--hidden", "48",
        "--embed", "16", "--batch", "8", "--k1", "16", "--steps", "120", "--minutes", "2",
        "--eval-seconds", "1000", "--no-progress", "--lr", "0.01",
    ])
    printed = capsys.readouterr().out
    assert summary["k2"] == 32  # default 2 * k1
    assert summary["val_bits_per_char"] < summary["val_bits_per_char_before"] - 1.0
    assert summary["val_bits_per_char"] < math.log2(summary["vocabulary"])  # beats uniform
    first, last = first_last(summary["losses"], 10)
    assert last < first - 0.5, (first, last)
    assert summary["history_nbytes"] > 0 and summary["chars_per_second"] > 0
    saved = json.loads((tmp_path / "lm_summary.json").read_text())
    assert saved["val_bits_per_char"] == pytest.approx(summary["val_bits_per_char"])
    sample = (tmp_path / "lm_sample.txt").read_text()
    assert sample.startswith("def ") and len(sample) > 300
    for phrase in ("held-out bits/char", "history ring", "chars/s", "unigram entropy", "sample"):
        assert phrase in printed
    if summary["plot"] is not None:
        assert (tmp_path / "lm_curve.png").stat().st_size > 1000


def test_demo_lm_amp_on_the_cpu_records_bfloat16_bits_per_char_at_the_same_updates(tmp_path, capsys):
    flags = ["--max-chars", "20000", "--val-chars", "2000", "--hidden", "16", "--embed", "8", "--batch", "4",
             "--k1", "8", "--steps", "30", "--eval-every", "10", "--no-progress", "--threads", "1"]
    f32 = demo.main(flags + ["--out", str(tmp_path / "f32")])
    assert "mixed precision" not in capsys.readouterr().out
    bf16 = demo.main(flags + ["--out", str(tmp_path / "bf16"), "--amp"])
    assert "mixed precision (--amp): torch.autocast('cpu', dtype=torch.bfloat16)" in capsys.readouterr().out
    saved = {name: json.loads((tmp_path / name / "lm_summary.json").read_text()) for name in ("f32", "bf16")}
    assert saved["f32"]["amp"] is None and saved["bf16"]["amp"] == "bfloat16"
    assert saved["f32"]["cell"] == "lstm"  # the default --cell
    for summary in saved.values():
        assert summary["eval_every"] == 10 and summary["eval_seconds"] is None
        assert [u for u, _ in summary["evals"]] == [10, 20, 30]
        assert summary["updates"] == 30 and summary["stopped_by"] == "max_updates"
    assert bf16["evals"] == [tuple(e) for e in saved["bf16"]["evals"]]
    differences = [b - a for (_, a), (_, b) in zip(saved["f32"]["evals"], saved["bf16"]["evals"])]
    assert 0 < max(abs(d) for d in differences) < 0.1, differences
    assert f32["val_bits_per_char_before"] != bf16["val_bits_per_char_before"]  # scored under autocast too
    with pytest.raises(SystemExit, match="--eval-every must be >= 1"):
        demo.main(flags + ["--out", str(tmp_path), "--eval-every", "0"])
    with pytest.raises(SystemExit, match=r"--amp needs CUDA or the CPU \(bfloat16 there\); this run is on meta"):
        demo.main(flags + ["--out", str(tmp_path), "--device", "meta", "--amp"])


def test_demo_lm_gru_trains_and_records_the_cell(tmp_path, capsys):
    flags = ["--max-chars", "20000", "--val-chars", "2000", "--hidden", "16", "--embed", "8", "--batch", "4",
             "--k1", "8", "--no-progress", "--threads", "1", "--lr", "0.01"]
    summary = demo.main(flags + ["--cell", "gru", "--out", str(tmp_path / "lm"), "--steps", "30",
                                 "--eval-every", "30"])
    printed = capsys.readouterr().out
    assert "character-level GRU language model" in printed
    assert "TruncatedGRU(hidden 16, layers 1, history activations)" in printed
    saved = json.loads((tmp_path / "lm" / "lm_summary.json").read_text())
    assert saved["cell"] == summary["cell"] == "gru"
    assert saved["updates"] == 30 and saved["history_nbytes"] > 0
    assert saved["val_bits_per_char"] < saved["val_bits_per_char_before"] - 0.5
    # compare takes --cell too (the same language model)
    result = demo.main(["compare", "--cell", "gru", "--out", str(tmp_path / "compare"), "--n", "16", "--steps", "2",
                        "--minutes", "1", "--eval-seconds", "1000"] + flags)
    assert result["cell"] == "gru" and [r["updates"] for r in result["rows"]] == [2, 2, 2]
    assert "Character GRU" in (tmp_path / "compare" / "compare.md").read_text()
    # memory and balance have no --cell: refused, saying why
    with pytest.raises(SystemExit, match="--cell: the memory demo trains TruncatedLSTM models only"):
        demo.main(["memory", "--cell", "gru", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--cell: the balance demo has no recurrent layer to choose"):
        demo.main(["balance", "--cell=gru", "--out", str(tmp_path)])


def test_demo_lm_on_given_text(tmp_path):
    corpus = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta"]
    corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(3000)))
    summary = demo.main([
        "--text", str(corpus), "--out", str(tmp_path / "out"), "--hidden", "32", "--embed", "8",
        "--batch", "4", "--k1", "16", "--steps", "80", "--eval-seconds", "1000", "--no-progress",
        "--lr", "0.02",
    ])
    assert summary["corpus"] == str(corpus)
    assert summary["vocabulary"] <= 20
    # four words and spaces: far below the characters' unigram entropy once learned
    assert summary["val_bits_per_char"] < summary["unigram_entropy_bits"] - 0.5


def test_demo_memory_smoke_shows_the_gap(tmp_path):
    result = demo.main([
        "memory", "--out", str(tmp_path), "--delay", "3", "--k", "2", "--k2s", "2,6", "--hidden", "16",
        "--batch", "8", "--steps", "300", "--eval-steps", "200", "--no-progress", "--lr", "0.01",
    ])
    rows = {r["k2"]: r for r in result["rows"]}
    assert set(rows) == {2, 6}
    assert rows[6]["accuracy"] > rows[2]["accuracy"] + 0.1, (rows[6]["accuracy"], rows[2]["accuracy"])
    assert rows[6]["history_nbytes"] > rows[2]["history_nbytes"] > 0
    assert rows[6]["steps_with_source_in_window"] == 2 and rows[2]["steps_with_source_in_window"] == 0
    table = (tmp_path / "memory_task.md").read_text()
    assert "BPTT(2,2)" in table and "BPTT(2,6)" in table
    assert json.loads((tmp_path / "memory_task.json").read_text())["delay"] == 3
    if result["plot"] is not None:
        assert (tmp_path / "memory_task.png").stat().st_size > 1000


def test_demo_memory_artbp_smoke(tmp_path):
    result = demo.main([
        "memory", "--artbp", "--out", str(tmp_path), "--delay", "4", "--k", "2", "--artbp-k2", "3",
        "--cap", "8", "--hidden", "16", "--batch", "8", "--steps", "200", "--eval-steps", "200",
        "--seeds", "2", "--no-progress", "--lr", "0.01",
    ])
    settings = [r["setting"] for r in result["rows"]]
    assert settings == ["TBPTT(2,3)"] * 2 + ["ARTBP(2,3..8)"] * 2 + ["TBPTT(2,8)"] * 2
    steps = {r["setting"]: r["mean_backward_steps"] for r in result["rows"]}
    assert steps["TBPTT(2,3)"] < steps["ARTBP(2,3..8)"] < steps["TBPTT(2,8)"]
    assert "ARTBP(2,3..8)" in (tmp_path / "memory_artbp.md").read_text()
    payload = json.loads((tmp_path / "memory_artbp.json").read_text())
    assert payload["cap"] == 8 and 3 < payload["expected_window"] < 8
    with pytest.raises(SystemExit, match=r"--artbp-k2 must be in \[k, d\) = \[2, 4\)"):
        demo.main(["memory", "--artbp", "--delay", "4", "--k", "2", "--artbp-k2", "5", "--out", str(tmp_path)])


def test_demo_balance_tbptt_diverges_and_artbp_converges(tmp_path):
    result = demo.main(["balance", "--out", str(tmp_path), "--k2s", "32,48", "--seeds", "2",
                        "--steps", "20000"])
    runs = {(r["setting"], r["seed"]): r for r in result["runs"]}
    assert runs[("TBPTT(8,32)", None)]["diverged_at"] == 3704  # as shared/research/artbp.md found
    assert abs(runs[("TBPTT(8,48)", None)]["theta"] + 1 / 6) < 1e-6
    for seed in (0, 1):
        artbp = runs[("ARTBP(8,8..128)", seed)]
        assert artbp["diverged_at"] is None and abs(artbp["theta"] + 1 / 6) < 1e-6
        assert 25 < artbp["mean_window"] < 38  # a mean window near 32, against 48 for TBPTT(8,48)
    assert "diverged" in (tmp_path / "balance.md").read_text()


def test_demo_memory_budget_gives_each_history_mode_its_longest_k2(tmp_path):
    result = demo.main([
        "memory", "--memory-budget", "--out", str(tmp_path), "--delay", "4", "--k", "2", "--hidden", "16",
        "--batch", "8", "--steps", "60", "--eval-steps", "100", "--no-progress",
    ])
    rows = {r["history"]: r for r in result["rows"]}
    assert set(rows) == {"activations", "states", "checkpoints"}
    assert rows["activations"]["k2"] < 4 <= rows["states"]["k2"] <= rows["checkpoints"]["k2"]
    assert all(r["history_nbytes"] <= r["budget"] for r in rows.values())
    assert "longest k2 in the budget" in (tmp_path / "memory_budget.md").read_text()


def test_demo_history_flag_reaches_the_model(tmp_path, capsys):
    demo.main(["--out", str(tmp_path), "--max-chars", "20000", "--val-chars", "2000", "--hidden", "16",
               "--embed", "8", "--batch", "4", "--k1", "8", "--steps", "3", "--no-progress",
               "--history", "checkpoints", "--checkpoint-every", "3", "--eval-seconds", "1000"])
    assert "history checkpoints" in capsys.readouterr().out


def test_demo_compare_smoke(tmp_path):
    result = demo.main([
        "compare", "--out", str(tmp_path), "--max-chars", "20000", "--val-chars", "2000", "--hidden", "16",
        "--embed", "8", "--batch", "4", "--k1", "8", "--n", "32", "--steps", "12", "--minutes", "1",
        "--eval-seconds", "1000", "--no-progress",
    ])
    schedules = [(r["k1"], r["k2"]) for r in result["rows"]]
    assert schedules == [(8, 8), (8, 16), (32, 32)]
    memory = {s: r["history_nbytes"] for s, r in zip(schedules, result["rows"])}
    assert memory[(8, 8)] < memory[(8, 16)] < memory[(32, 32)]
    assert all(math.isfinite(r["val_bits_per_char"]) and r["updates"] == 12 for r in result["rows"])
    assert "BPTT(32,32)" in (tmp_path / "compare.md").read_text()
    assert (tmp_path / "compare.json").exists()


def test_demo_rejects_bad_flags(tmp_path):
    with pytest.raises(SystemExit, match="unknown command 'train'"):
        demo.main(["train"])
    with pytest.raises(SystemExit, match=r"--k2 \(8\) must be >= --k1 \(16\)"):
        demo.main(["--k1", "16", "--k2", "8", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--k \(5\) must be < --delay \(4\)"):
        demo.main(["memory", "--k", "5", "--delay", "4", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--hidden must be >= 1"):
        demo.main(["--hidden", "0", "--out", str(tmp_path)])


def test_demo_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "tbptt_cuda.demo", "memory", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--delay" in done.stdout and "--k2s" in done.stdout


def test_demo_help_lists_every_command():
    from tbptt_cuda.demo import cli

    text = cli.build_parser(cli.DEFAULT_COMMAND).format_help()
    for name, command in cli.COMMANDS.items():
        if name != cli.DEFAULT_COMMAND:
            assert f"python -m tbptt_cuda.demo {name}" in text and command.description in text
    assert "other commands" not in cli.build_parser("memory").format_help()


def test_demo_without_matplotlib_skips_the_plot_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    result = demo.main(["memory", "--out", str(tmp_path), "--delay", "2", "--k", "1", "--k2s", "1,4",
                        "--hidden", "8", "--batch", "4", "--steps", "20", "--eval-steps", "50", "--no-progress"])
    assert result["plot"] is None and not (tmp_path / "memory_task.png").exists()
    assert (tmp_path / "memory_task.md").exists()
    assert "pip install matplotlib" in capsys.readouterr().out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("amp", [False, "bf16", "fp16"])
def test_train_tbptt_on_cuda_with_and_without_mixed_precision(amp):
    torch.manual_seed(0)
    model = Regressor(k2=None).cuda()
    xs, ys = delayed_sum(delay=3, lanes=8, steps=600, seed=0)
    train = SequenceStream(xs, k1=4, batch_size=8, targets=ys, device="cuda")
    run = train_tbptt(model, torch.optim.Adam(model.parameters(), lr=1e-2), F.mse_loss, train,
                      k2=8, max_updates=150, amp=amp, progress=False)
    first, last = first_last(run.losses, 15)
    assert last < 0.5 * first, (first, last)
    assert run.history_nbytes > 0
