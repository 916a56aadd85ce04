"""Bad input: a clear Python exception that names the argument and the rule."""
import pytest
import torch

from tbptt_cuda import TruncatedLSTM


@pytest.fixture
def lstm():
    return TruncatedLSTM(3, 4, 2, k2=5)


@pytest.mark.parametrize("shape", [(4,), (4, 2, 3, 1)])
def test_wrong_rank(lstm, shape):
    with pytest.raises(ValueError, match=r"input must be 3-D .* or 2-D \[L, input_size\] \(unbatched\)"):
        lstm(torch.randn(*shape))


def test_not_a_tensor(lstm):
    with pytest.raises(TypeError, match=r"input must be a tensor or a PackedSequence, got list"):
        lstm([[1.0, 2.0, 3.0]])


def test_wrong_input_size(lstm):
    with pytest.raises(ValueError, match=r"input has 2 features, expected input_size=3"):
        lstm(torch.randn(4, 2, 2))


def test_zero_steps(lstm):
    with pytest.raises(ValueError, match=r"L = 0"):
        lstm(torch.randn(0, 2, 3))


def test_chunk_longer_than_k2(lstm):
    with pytest.raises(ValueError, match=r"L=6 steps but k2=5"):
        lstm(torch.randn(6, 2, 3))


@pytest.mark.parametrize("k2", [0, -3, 2.5, True, "8"])
def test_bad_k2(k2):
    with pytest.raises(ValueError, match="k2 must be None or an integer >= 1"):
        TruncatedLSTM(3, 4, k2=k2)
    lstm = TruncatedLSTM(3, 4)
    with pytest.raises(ValueError, match="k2 must be"):
        lstm.k2 = k2


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_outside_unit_interval(dropout):
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        TruncatedLSTM(3, 4, 2, dropout=dropout)


@pytest.mark.parametrize("name,value", [("input_size", 0), ("hidden_size", -1), ("num_layers", 0)])
def test_bad_sizes(name, value):
    kwargs = dict(input_size=3, hidden_size=4, num_layers=1)
    kwargs[name] = value
    with pytest.raises(ValueError, match=name):
        TruncatedLSTM(**kwargs)


def test_dtype_mismatch(lstm):
    with pytest.raises(TypeError, match=r"input dtype torch.float64 does not match"):
        lstm(torch.randn(4, 2, 3, dtype=torch.float64))


def test_state_shape_mismatches(lstm):
    x = torch.randn(4, 2, 3)
    good = torch.zeros(2, 2, 4)
    with pytest.raises(ValueError, match=r"state h0 must be \[num_layers, B, hidden_size\]"):
        lstm(x, (torch.zeros(1, 2, 4), good))  # layers
    with pytest.raises(ValueError, match=r"state c0 must be"):
        lstm(x, (good, torch.zeros(2, 3, 4)))  # batch
    with pytest.raises(ValueError, match=r"state h0 must be"):
        lstm(x, (torch.zeros(2, 2, 5), good))  # hidden size
    with pytest.raises(TypeError, match=r"state h0 dtype"):
        lstm(x, (good.double(), good))
    with pytest.raises(TypeError, match=r"state must be None"):
        lstm(x, good)


def test_continuing_state_with_other_batch(lstm):
    _, state = lstm(torch.randn(4, 2, 3))
    with pytest.raises(ValueError, match=r"state h0 must be"):
        lstm(torch.randn(4, 3, 3), state)


@pytest.mark.parametrize("reset,match", [
    (torch.zeros(3, dtype=torch.bool), r"reset of shape \[B\] must have B=2"),
    (torch.zeros(4, 3, dtype=torch.bool), r"reset must be \[B\] or \[L, B\]"),
    (torch.zeros(4, 2, 1, dtype=torch.bool), r"reset must be \[B\] or \[L, B\]"),
])
def test_reset_of_wrong_shape(lstm, reset, match):
    with pytest.raises(ValueError, match=match):
        lstm(torch.randn(4, 2, 3), reset=reset)


def test_reset_of_wrong_dtype(lstm):
    with pytest.raises(TypeError, match=r"reset must be a bool tensor"):
        lstm(torch.randn(4, 2, 3), reset=torch.zeros(4, 2, dtype=torch.int64))


def test_reset_batch_first_layout():
    lstm = TruncatedLSTM(3, 4, batch_first=True, k2=5)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        lstm(torch.randn(2, 4, 3), reset=torch.zeros(4, 2, dtype=torch.bool))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU for a second device")
def test_device_mismatch(lstm):
    with pytest.raises(ValueError, match=r"input is on cuda"):
        lstm(torch.randn(4, 2, 3, device="cuda"))


def test_device_mismatch_meta(lstm):
    with pytest.raises(ValueError, match=r"input is on meta"):
        lstm(torch.randn(4, 2, 3, device="meta"))


def test_cpu_half_runs_in_its_dtype():  # issue 19: bfloat16/float16 on the CPU (test_cpu_bf16.py)
    lstm = TruncatedLSTM(3, 4, dtype=torch.bfloat16)
    out, _ = lstm(torch.randn(2, 2, 3, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_cpu_autocast_runs_a_float32_module_in_the_autocast_dtype():
    lstm = TruncatedLSTM(3, 4, k2=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = lstm(torch.randn(2, 2, 3, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and lstm.weight_hh_l0.dtype == torch.float32
