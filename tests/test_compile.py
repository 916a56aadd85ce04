"""torch.compile: a model containing TruncatedLSTM or TruncatedGRU trains a stream compiled as
it does eagerly, and a chunk compiles with fullgraph=True (no graph break; the GRU's state, a
tensor subclass, is made inside the graph). A chunk that continues a stream runs the RNN
outside the graph (its position in the stream is Python state)."""
import pytest
import torch
from torch import nn

from tbptt_cuda import GRUState, LSTMState

from helpers import make_rnn, out_size, rel_err, split_state

pytestmark = pytest.mark.slow  # Inductor compiles for ~10 s


class Model(nn.Module):
    def __init__(self, cell="lstm"):
        super().__init__()
        self.rnn = make_rnn(cell, 3, 8, 2, k2=8)
        self.head = nn.Linear(out_size(self.rnn), 1)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return torch.tanh(self.head(out)), state


def test_one_chunk_compiles_with_fullgraph(cell):
    torch.manual_seed(0)
    eager = Model(cell)
    compiled_model = Model(cell)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, fullgraph=True)
    x = torch.randn(5, 2, 3)
    y_eager, state_eager = eager(x)
    y, state = compiled(x)
    assert isinstance(state, GRUState if cell == "gru" else LSTMState)
    assert state.history.end == 5 and state.window == 5
    h_eager, h = split_state(state_eager)[0], split_state(state)[0]
    (y_eager.sum() + h_eager.sum()).backward()
    (y.sum() + h.sum()).backward()
    assert rel_err(y, y_eager) <= 1e-6 and rel_err(h, h_eager) <= 1e-6
    for a, b in zip(compiled_model.parameters(), eager.parameters()):
        assert rel_err(a.grad, b.grad) <= 1e-5


def test_compiled_model_trains_a_stream_like_eager(cell, device):
    if device.type == "cuda":
        pytest.skip("covered by the CPU and emulated cases; the GPU check runs the suite")
    torch.manual_seed(0)
    eager, compiled_model = Model(cell), Model(cell)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (eager, compiled_model)]
    states = [None, None]
    gen = torch.Generator().manual_seed(1)
    losses = [[], []]
    for _ in range(8):
        x = torch.randn(4, 2, 3, generator=gen)
        target = torch.randn(4, 2, 1, generator=gen)
        for i, model in enumerate((eager, compiled)):
            y, states[i] = model(x, states[i])
            loss = nn.functional.mse_loss(y, target)
            optimizers[i].zero_grad()
            loss.backward()
            optimizers[i].step()
            losses[i].append(loss.item())
    assert states[1].history.end == 32  # the compiled model carried its stream
    assert torch.allclose(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-5, atol=1e-7)
