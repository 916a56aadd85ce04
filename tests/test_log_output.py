"""Progress output that suits a log: on a terminal the tqdm bar, elsewhere (a file, a pipe,
captured output) one plain line every N updates and no carriage returns; the switch
(progress="auto" | "bar" | "lines" | "none", True/False) and the demos' --progress/--log-every."""
import io
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tbptt_cuda import TruncatedLSTM, demo
from tbptt_cuda import train as train_module
from tbptt_cuda.data import SequenceStream
from tbptt_cuda.train import progress_mode, train_tbptt

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^\[(?P<desc>[^\]]+)\] update +(?P<update>\d+)(?:/(?P<total>\d+))? +[\d.]+s +loss [\d.]+ +"
                  r"[\d,.]+ upd/s +[\d,]+ steps/s +history [\d,]+ B$")


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    yield


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self):
        return True


class Regressor(torch.nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.lstm = TruncatedLSTM(1, hidden, k2=4)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x, state=None, reset=None):
        out, state = self.lstm(x, state, reset=reset)
        return self.head(out), state


def _train(updates=10, **kwargs):
    """Trains a tiny regressor for ``updates`` chunks (a SequenceStream of that length)."""
    torch.manual_seed(0)
    model = Regressor()
    x = torch.randn(2, 4 * updates, 1)
    stream = SequenceStream(list(x), k1=4, batch_size=2, targets=list(x))
    assert len(stream) == updates
    return train_tbptt(model, torch.optim.SGD(model.parameters(), lr=0.01), F.mse_loss, stream, **kwargs)


def _progress_lines(text):
    lines = [line for line in text.splitlines() if line.startswith("[train] update")]
    for line in lines:
        assert LINE.match(line), line
    return lines


def test_progress_modes_resolve(monkeypatch):
    assert progress_mode(False) == "none" and progress_mode(None) == "none"
    for mode in ("bar", "lines", "none"):
        assert progress_mode(mode) == mode
    with pytest.raises(ValueError, match="progress must be"):
        progress_mode("verbose")
    # an explicit stream decides alone
    assert progress_mode(True, FakeTTY()) == progress_mode("auto", FakeTTY()) == "bar"
    assert progress_mode(True, io.StringIO()) == "lines"
    # by default: the bar only where both stderr (tqdm's stream) and stdout are terminals
    monkeypatch.setattr(sys, "stderr", FakeTTY())
    monkeypatch.setattr(sys, "stdout", FakeTTY())
    assert progress_mode(True) == "bar"
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # python train.py > log
    assert progress_mode(True) == "lines"
    monkeypatch.setattr(sys, "stdout", FakeTTY())
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # python train.py 2> err
    assert progress_mode(True) == "lines"


def test_auto_on_captured_output_writes_plain_lines_every_n_updates(capsys):
    run = _train(updates=10, progress=True, log_every=3)  # True is "auto"; capsys is no terminal
    captured = capsys.readouterr()
    assert "\r" not in captured.out and "\r" not in captured.err
    assert captured.err == ""  # no bar
    lines = _progress_lines(captured.out)
    # updates 3, 6, 9 and the last one
    assert [int(LINE.match(line)["update"]) for line in lines] == [3, 6, 9, 10]
    assert len(lines) == math.ceil(10 / 3)
    assert all(LINE.match(line)["total"] == "10" for line in lines)


def test_lines_mode_chooses_a_period_when_none_is_given(capsys):
    _train(updates=40, progress="lines")
    lines = _progress_lines(capsys.readouterr().out)
    assert len(lines) == train_module.LINES_PER_RUN  # every 2 updates
    assert int(LINE.match(lines[-1])["update"]) == 40


def test_lines_mode_with_unknown_length_goes_by_time(capsys, monkeypatch):
    monkeypatch.setattr(train_module, "LINES_EVERY_SECONDS", 1e-9)  # every update
    torch.manual_seed(0)
    model = Regressor()
    x = torch.randn(2, 24, 1)
    chunks = iter(SequenceStream(list(x), k1=4, batch_size=2, targets=list(x)))  # no len()
    train_tbptt(model, torch.optim.SGD(model.parameters(), lr=0.01), F.mse_loss, chunks, progress="lines")
    lines = _progress_lines(capsys.readouterr().out)
    assert [int(LINE.match(line)["update"]) for line in lines] == list(range(1, 7))
    assert all(LINE.match(line)["total"] is None for line in lines)


def test_lines_go_to_the_given_stream_or_log(capsys):
    stream = io.StringIO()
    _train(updates=6, progress="auto", progress_file=stream, log_every=2)
    assert "\r" not in stream.getvalue()
    assert len(_progress_lines(stream.getvalue())) == 3
    assert capsys.readouterr().out == ""
    got = []
    _train(updates=6, progress="lines", log_every=4, log=got.append)
    assert [int(LINE.match(line)["update"]) for line in got] == [4, 6]


def test_a_terminal_gets_the_bar(capsys):
    tty = FakeTTY()
    _train(updates=10, progress=True, progress_file=tty, log_every=5)
    text = tty.getvalue()
    assert "\r" in text and "10/10" in text and "loss=" in text and "steps/s=" in text
    # the log_every lines go through the bar's write, above it
    assert len([line for line in re.split(r"[\r\n]", text) if LINE.match(line)]) == 2
    assert "[train] update" not in capsys.readouterr().out


def test_none_prints_nothing_unless_asked(capsys):
    _train(updates=6, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    _train(updates=6, progress="none", log_every=3)  # the lines asked for, no final one
    assert len(_progress_lines(capsys.readouterr().out)) == 2


def test_log_every_is_checked():
    with pytest.raises(ValueError, match="log_every must be"):
        _train(updates=2, progress=False, log_every=0)
    with pytest.raises(ValueError, match="progress must be"):
        _train(updates=2, progress="quiet")


MEMORY_DEMO = ["memory", "--delay", "2", "--k", "1", "--k2s", "1,4", "--hidden", "8", "--batch", "4",
               "--steps", "20", "--eval-steps", "50"]


def test_demo_progress_flags(tmp_path, capsys):
    demo.main(MEMORY_DEMO + ["--out", str(tmp_path), "--log-every", "5"])  # auto: captured -> lines
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    lines = [line for line in captured.out.splitlines() if re.match(r"\[BPTT\(1,[14]\)\] update", line)]
    assert len(lines) == 2 * 4, captured.out
    demo.main(MEMORY_DEMO + ["--out", str(tmp_path), "--no-progress"])
    assert " update " not in capsys.readouterr().out
    demo.main(MEMORY_DEMO + ["--out", str(tmp_path), "--progress", "bar"])
    assert "\r" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main(MEMORY_DEMO + ["--out", str(tmp_path), "--progress", "loud"])
    with pytest.raises(SystemExit, match="--log-every must be >= 1"):
        demo.main(MEMORY_DEMO + ["--out", str(tmp_path), "--log-every", "0"])


def test_demo_into_a_pipe_writes_no_carriage_return(tmp_path):
    """As `python -m tbptt_cuda.demo ... > log 2>&1` would: plain lines, no '\\r'."""
    done = subprocess.run([sys.executable, "-m", "tbptt_cuda.demo", *MEMORY_DEMO, "--threads", "1",
                           "--out", str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=300)
    output = done.stdout.decode()
    assert done.returncode == 0, output
    assert "\r" not in output
    lines = [line for line in output.splitlines() if re.match(r"\[BPTT\(1,[14]\)\] update", line)]
    assert len(lines) == 2 * 20, output  # the default period: 20 updates -> a line each
