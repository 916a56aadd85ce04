"""Memory depends on k2, not on the stream's length."""
import torch

from tbptt_cuda import TruncatedLSTM


def test_ten_thousand_step_stream_keeps_history_and_saved_tensors_constant(device):
    lstm = TruncatedLSTM(8, 16, 2, k2=200, device=device)
    opt = torch.optim.SGD(lstm.parameters(), lr=0.01)
    saved_bytes = []

    def pack(t):
        saved_bytes[-1] += t.numel() * t.element_size()
        return t

    state, history_bytes = None, []
    x = torch.randn(100, 4, 8, device=device)
    for chunk in range(100):  # 100 chunks of 100 steps = 10,000 steps
        saved_bytes.append(0)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, state = lstm(x + 0.01 * chunk, state)
        out.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        history_bytes.append(state.history_nbytes)
    assert state.history.end == 10_000
    assert len(set(history_bytes)) == 1, "history grew with the stream"
    assert len(set(saved_bytes)) == 1, "saved tensors grew with the stream"
    # what the ring holds: (k2 + 1) slots of gates 4H, c H, h H per layer, x I, reset bytes
    slots, B, H, I, layers = 201, 4, 16, 8, 2
    expected = slots * B * (layers * 6 * H * 4 + I * 4 + 1) + 2 * layers * B * H * 4
    assert history_bytes[0] == expected
