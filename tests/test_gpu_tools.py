"""The GPU tools: the grid-barrier microbenchmark (csrc/cuda/barrier_bench.cuh) under the
emulator and, where there is one, on the GPU; the cost model (bench/gpu_model.py); the CUDA
paths' benchmark in its --smoke mode (bench/gpu_paths.py); scripts/gpu_check.sh's syntax."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tbptt_cuda

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import barrier_latency  # noqa: E402
import gpu_model  # noqa: E402

EMULATED = pytest.mark.skipif(not tbptt_cuda.build_info()["cuda_emulation"],
                              reason="built without the emulated kernels")


def run_script(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---- the barrier microbenchmark ----------------------------------------------------------------

@EMULATED
@pytest.mark.emulated
@pytest.mark.parametrize("rounds,exchange,seed", [(1, True, None), (6, True, 5), (4, False, None)])
def test_emulated_barrier_bench_counts_its_grid_barriers_and_moves_the_words(rounds, exchange, seed):
    blocks, threads = 3, 64
    with tbptt_cuda.emulate_cuda(sms=3, seed=seed) as stats:
        sink = barrier_latency.run_emulated(blocks, threads, rounds, exchange)
    assert stats.per_kernel == {"barrier_bench": {"launches": 1, "block_barriers": 0,
                                                  "grid_barriers": rounds, "warp_collectives": 0}}
    expected = barrier_latency.expected_sink(blocks, threads, rounds, exchange)
    assert sink.shape == (blocks, threads) and torch.equal(sink, expected)
    if exchange:  # each thread read its neighbour block's words, not its own
        assert not torch.equal(sink, expected.roll(1, dims=0))


@EMULATED
@pytest.mark.emulated
def test_emulated_barrier_bench_refuses_a_grid_that_cannot_be_resident():
    # 1024 threads of 32 registers: two blocks per SM, so three do not fit on one SM
    with tbptt_cuda.emulate_cuda(sms=1):
        with pytest.raises(RuntimeError, match=r"cudaErrorCooperativeLaunchTooLarge.*holds 2 "):
            barrier_latency.run_emulated(3, 1024, 2)
        assert barrier_latency.run_emulated(2, 1024, 2).shape == (2, 1024)


@EMULATED
def test_barrier_bench_checks_its_arguments():
    with pytest.raises(ValueError, match="multiple of 32"):
        barrier_latency.run_emulated(2, 48, 1)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        barrier_latency.run_emulated(2, 64, 0)


def test_cuda_barrier_latency_without_a_gpu_says_why():
    if torch.cuda.is_available():
        pytest.skip("there is a GPU here")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU|built without CUDA"):
        tbptt_cuda._backend.load().cuda_barrier_latency(2, 64, 10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("exchange", [False, True])
def test_cuda_barrier_latency_on_the_gpu(exchange):
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    result = barrier_latency.measure(sms, 256, 500, exchange, repeats=5)
    assert result["words_ok"], result
    assert result["capacity"] >= sms
    assert 0.0 < result["us_per_barrier"] < 50.0, result
    assert result["total_us"] > result["launch_us"] > 0.0
    with pytest.raises(RuntimeError, match="cannot all be resident"):
        barrier_latency.measure(result["capacity"] + 1, 256, 10, exchange, repeats=1)


# ---- the cost model -----------------------------------------------------------------------------

def test_bank_wavefronts_counts_conflicts_and_broadcasts():
    consecutive = [4 * lane for lane in range(32)]
    assert gpu_model.bank_wavefronts(consecutive, 4) == 1
    assert gpu_model.bank_wavefronts([0] * 32, 4) == 1  # one word: a broadcast
    assert gpu_model.bank_wavefronts([128 * lane for lane in range(32)], 4) == 32  # one bank
    assert gpu_model.bank_wavefronts([2 * lane for lane in range(32)], 2) == 1  # 16-bit pairs
    assert gpu_model.bank_wavefronts([8 * lane for lane in range(32)], 8) == 2  # two half-warps
    assert gpu_model.bank_wavefronts([None] * 31 + [0], 4) == 1
    assert gpu_model.padded_row(768, 4) == 769 and gpu_model.padded_row(768, 2) == 770
    assert gpu_model.padded_row(770, 2) == 770 and gpu_model.padded_row(3072, 8) == 3073


def test_current_rules_are_parsed_from_the_source(tmp_path):
    rules = gpu_model.current_rules()
    assert set(rules) == {"sm_80", "sm_86/sm_89", "sm_90"}
    for family, rows in rules.items():
        assert set(rows) == {"float32", "float64", "float16", "bfloat16"}, family
        assert all(len(r) == 3 and min(r) >= 0 for r in rows.values()), family
    # one row changed in the real source: only that family and dtype change
    source = (REPO / "csrc" / "persistent_dispatch.cpp").read_text()
    changed, count = re.subn(r"\{F::kAmpere, S::kFloat32,\s*\d+,\s*\d+,\s*\d+\}",
                             "{F::kAmpere, S::kFloat32, 7, 77, 5}", source)
    assert count == 1
    (tmp_path / "dispatch.cpp").write_text(changed)
    parsed = gpu_model.current_rules(tmp_path / "dispatch.cpp")
    assert parsed["sm_80"]["float32"] == (7, 77, 5)
    assert parsed["sm_80"]["bfloat16"] == rules["sm_80"]["bfloat16"]
    assert parsed["sm_86/sm_89"] == rules["sm_86/sm_89"] and parsed["sm_90"] == rules["sm_90"]
    # a table of its own, the enums spelled out or not
    (tmp_path / "custom.cpp").write_text(
        "const PersistentRule& persistent_rule(int64_t capability, StorageType storage) {\n"
        "  static const PersistentRule rules[] = {\n"
        "      {F::kHopper, S::kFloat32, 64, 512, 11},\n"
        "      { ArchFamily::kAmpereAda, StorageType::kBFloat16, 0, 0, 0 },\n"
        "      {F::kAmpere, S::kFloat64, 32, 768, 37},\n  };\n}\n")
    assert gpu_model.current_rules(tmp_path / "custom.cpp") == {
        "sm_90": {"float32": (64, 512, 11)}, "sm_86/sm_89": {"bfloat16": (0, 0, 0)},
        "sm_80": {"float64": (32, 768, 37)}}
    # the table of before the families is not read as one
    (tmp_path / "old.cpp").write_text("persistent_rule(StorageType storage) {\n"
                                      "  {StorageType::kFloat32, 64, 512, 11},\n}\n")
    with pytest.raises(RuntimeError, match="found no rule table"):
        gpu_model.current_rules(tmp_path / "old.cpp")


def test_derived_rules_print_as_cpp_rows_the_parser_reads_back(tmp_path):
    no_wins = {"shapes": [(64, 1, False, 2.0)], "max_batch": 0, "max_batch_hidden": 0,
               "min_steps": None}
    assert gpu_model.rule_of(no_wins) == (0, 0, 0)  # B <= 0: auto never takes it
    wins = dict(no_wins, max_batch=32, max_batch_hidden=768, min_steps=12)
    assert gpu_model.rule_of(wins) == (32, 768, 12)
    rules = {"sm_90": {"float32": (64, 512, 11), "bfloat16": (256, 1024, 10)},
             "sm_80": {"float64": (32, 512, 28)}, "sm_86/sm_89": {"float64": (0, 0, 0)}}
    rows = gpu_model.cpp_rows(rules, {("sm_86/sm_89", "float64"): "L4: no usable plan"})
    assert rows[0].strip() == "{F::kHopper, S::kFloat32, 64, 512, 11},"
    assert re.fullmatch(r"\s+\{F::kAmpereAda, S::kFloat64, 0, 0, 0\},\s+// L4: no usable plan", rows[-1])
    (tmp_path / "table.cpp").write_text("persistent_rule(int64_t c, StorageType s) {\n"
                                        + "\n".join(rows) + "\n}\n")
    assert gpu_model.current_rules(tmp_path / "table.cpp") == rules


def test_a_family_rule_takes_a_shape_only_where_every_device_wins():
    class Fake:  # stepwise 10 us/step; persistent 5 + 40 / steps: wins (< 8) from 14 steps on
        def plan_of(self, H, B, dtype):
            return None

        def stepwise(self, H, B, dtype, steps=64):
            return 5.0, 10.0, {}

        def persistent(self, H, B, dtype, plan, variant="ffma", steps=64):
            return 3.0, 5.0 + 40.0 / steps, {}

    big = {"shapes": [(64, 1, True, .5), (64, 2, True, .5), (128, 1, True, .5), (64, 4, True, .5)]}
    small = {"shapes": [(64, 1, True, .5), (128, 1, False, 1.2)]}  # no plan at B = 2, 4
    d = gpu_model.derive_family_rule([Fake(), Fake()], [big, small], "float32", "ffma", 0.8)
    # (128, 1) loses on one device: B*H stops below 128; (64, 4) wins wherever it has a plan
    assert (d["first_loss_batch_hidden"], d["max_batch_hidden"], d["max_batch"]) == (128, 64, 4)
    assert d["min_steps"] == 14 and d["min_steps_shape"] == (64, 1)
    none = gpu_model.derive_family_rule([Fake()], [{"shapes": []}], "float64", "ffma", 0.8)
    assert gpu_model.rule_of(none) == (0, 0, 0)


def test_gpu_model_names_its_devices_and_refuses_others(capsys):
    assert gpu_model.parse_device("a100") == "A100" and gpu_model.parse_device("ALL") == "all"
    with pytest.raises(SystemExit) as exit_:
        gpu_model.main(["--device", "V100"])
    assert exit_.value.code == 2
    assert "unknown device 'V100': choose from H100, A100, A10, RTX4090, L4 or all" in capsys.readouterr().err
    names = {"NVIDIA A100-SXM4-80GB": "A100", "NVIDIA H100 80GB HBM3": "H100", "NVIDIA A10G": "A10",
             "NVIDIA A10": "A10", "NVIDIA GeForce RTX 4090": "RTX4090", "NVIDIA L4": "L4",
             "NVIDIA L40": None, "test GPU": None}
    assert {name: gpu_model.device_of_name(name) for name in names} == names
    # every preset of the emulator is a device of the model, in the family its capability says
    assert set(tbptt_cuda.emulation.devices()) == set(gpu_model.DEVICE_NAMES)
    assert {d: gpu_model.family_of_capability(p["capability"])
            for d, p in tbptt_cuda.emulation.devices().items()} == {
        "H100": "sm_90", "A100": "sm_80", "A10": "sm_86/sm_89", "RTX4090": "sm_86/sm_89",
        "L4": "sm_86/sm_89"}


# (device, H, B, dtype, steps, fwd us/step, fwd+bwd us/step, window GEMMs (fwd, bwd) us/step) as
# main's bench/gpu_model.py (5abd54d, before the cells) predicted them for the LSTM's stepwise path
MAIN_LSTM_STEPWISE = [
    ("H100", 256, 1, "float32", 64, 6.59375, 13.375, (0.09375, 0.28125)),
    ("H100", 768, 16, "bfloat16", 64, 6.81415824, 14.25663296, (0.31415824, 0.9424747199999999)),
    ("H100", 1024, 64, "float32", 64, 45.01217296, 133.09901888000002, (21.53733648, 64.61200944000001)),
    ("H100", 2048, 256, "float64", 10, 689.59476736, 2067.1843020799997, (343.99738368, 1031.99215104)),
    ("H100", 512, 8, "bfloat16", 1, 12.5, 37.0, (6.0, 18.0)),
    ("A10", 256, 1, "float32", 64, 6.60444304, 13.41777216, (0.10444304, 0.31332912)),
    ("A10", 768, 16, "bfloat16", 64, 8.57576592, 21.30306368, (2.07576592, 6.227297759999999)),
    ("A10", 1024, 64, "float32", 64, 87.96184592, 261.94803776000003, (43.01217296, 129.03651888000002)),
    ("A10", 2048, 256, "float64", 10, 85901.74592000002, 257703.63776, (42950.072960000005, 128850.21888000001)),
    ("A10", 512, 8, "bfloat16", 1, 12.5, 37.0, (6.0, 18.0)),
]


@pytest.mark.parametrize("device,H,B,dtype,steps,fwd,fwdbwd,window", MAIN_LSTM_STEPWISE)
def test_gpu_model_lstm_stepwise_predictions_are_those_before_the_cells(device, H, B, dtype, steps,
                                                                        fwd, fwdbwd, window):
    model = gpu_model.Model(gpu_model.default_inputs(device), plan_of=None)
    for got in (model.stepwise(H, B, dtype, steps), model.stepwise(H, B, dtype, steps, cell="lstm")):
        assert got[:2] == (fwd, fwdbwd)  # bit for bit
        assert got[2]["window kernels bwd"] == 0.0
    assert model.window_gemms_us(H, B, steps, dtype) == window  # the persistent path's too


@pytest.mark.parametrize("H,B,dtype", [(256, 1, "float32"), (768, 16, "bfloat16"), (1024, 64, "float64")])
def test_gpu_model_gru_gemms_are_three_quarters_of_the_lstms(H, B, dtype):
    lstm = gpu_model.cell_work("lstm", H, B, dtype)
    gru = gpu_model.cell_work("gru", H, B, dtype)
    s = gpu_model.BYTES[dtype]
    assert lstm["fwd_gemms"] == [(8 * B * H * H, 4 * H * H * s)]
    for key in ("fwd_gemms", "bwd_gemms", "window_fwd_gemms", "window_bwd_gemms"):
        assert len(gru[key]) == len(lstm[key]) == (3 if key == "window_bwd_gemms" else 1), key
        for (gru_flops, gru_bytes), (lstm_flops, lstm_bytes) in zip(gru[key], lstm[key]):
            assert 4 * gru_flops == 3 * lstm_flops and 4 * gru_bytes == 3 * lstm_bytes, key
    assert (gru["fwd_passes"], gru["bwd_passes"]) == (lstm["fwd_passes"], lstm["bwd_passes"]) == (1, 1)
    # the per-step product reads dGh, the first 3H of a 4H row: one [B, 3H] copy per backward step
    assert (gru["fwd_copies"], gru["bwd_copies"], lstm["bwd_copies"]) == ([], [2 * B * 3 * H * s], [])
    assert len(gru["window_bwd_kernels"]) == 2 and lstm["window_bwd_kernels"] == []
    model = gpu_model.Model(gpu_model.default_inputs("H100"), plan_of=None)
    _, _, terms = model.stepwise(H, B, dtype, cell="gru")
    assert terms["bwd host"] == model.p["host_gemm_us"] + 2 * model.p["host_launch_us"]
    assert terms["window kernels bwd"] > 0


def test_gpu_model_lstmp_runs_two_gemms_and_two_passes_per_step():
    H, B, P, steps, dtype = 768, 16, 256, 64, "float32"
    work = gpu_model.cell_work("lstmp", H, B, dtype, steps, P)
    assert sum(f for f, _ in work["fwd_gemms"]) == 8 * B * H * P + 2 * B * P * H
    assert [f for f, _ in work["fwd_gemms"]] == [8 * B * H * P, 2 * B * H * P]  # h W_hh^T, m W_hr^T
    assert [f for f, _ in work["bwd_gemms"]] == [2 * B * P * H, 8 * B * H * P]  # dh_eff W_hr, dG W_hh
    assert sum(n for _, n in work["fwd_gemms"]) == (4 * H * P + P * H) * 4
    assert (work["fwd_passes"], work["bwd_passes"], work["bwd_copies"]) == (2, 2, [])
    cell = gpu_model.CELLS["lstmp"]
    assert len(work["fwd_gemms"]) == len(work["bwd_gemms"]) == cell.gemms_per_step == 2
    # dW_ih, dW_hh (K = P), dx, dW_hr over the window; m rebuilt (tanh(c), o * it)
    assert [f for f, _ in work["window_bwd_gemms"]] == [
        8 * B * steps * H * H, 8 * B * steps * H * P, 8 * B * steps * H * H, 2 * B * steps * P * H]
    assert len(work["window_bwd_kernels"]) == 2
    assert gpu_model.cell_work("lstmp", H, B, dtype)["fwd_gemms"][1][0] == 2 * B * H * (H // 2)
    with pytest.raises(ValueError, match="proj_size"):
        gpu_model.cell_work("lstmp", H, B, dtype, steps, H)
    with pytest.raises(ValueError, match="no proj_size"):
        gpu_model.cell_work("gru", H, B, dtype, steps, P)
    model = gpu_model.Model(gpu_model.default_inputs("H100"), plan_of=None)
    _, _, terms = model.stepwise(H, B, dtype, steps, cell="lstmp", P=P)
    assert terms["host: mm_out + launch"] == 2 * (model.p["host_gemm_us"] + model.p["host_launch_us"])
    assert terms["bwd host"] == terms["host: mm_out + launch"]


@EMULATED
def test_gpu_model_cell_flag_prints_the_stepwise_tables(tmp_path, capsys):
    assert gpu_model.main(["--cell", "all", "--device", "H100", "--json", str(tmp_path / "c.json")]) == 0
    text = capsys.readouterr().out
    # all: the GRU's report (persistent kernels: test_gpu_model_reports_the_gru_...), then the
    # stepwise tables of both cells next to the LSTM's
    assert text.startswith("PREDICTIONS") and "H100 SXM, one layer of the GRU" in text
    text = text[text.index("the stepwise CUDA path of one layer per cell"):]
    assert "The model does not cover the persistent kernels of the LSTM with projections (LSTMP)" in text
    assert "persistent kernel exists for the GRU" not in text
    lines = text.splitlines()
    for dtype in gpu_model.DTYPES:
        for H in gpu_model.TABLE_H:
            for B in gpu_model.TABLE_B:
                assert sum(bool(re.match(rf"{dtype}\s+{H}\s+{B} \|.*\| +{H // 2} ", line))
                           for line in lines) == 1, (dtype, H, B)
    data = json.loads((tmp_path / "c.json").read_text())
    rows = data["cell_tables"]["H100"]["rows"]
    assert data["kind"] == "PREDICTIONS" and len(rows) == 27
    big = next(r for r in rows if (r["dtype"], r["H"], r["B"]) == ("float32", 1024, 64))
    assert big["gru"]["fwd"] < big["lstm"]["fwd"]  # GEMM-bound: 3/4 of the flops
    small = next(r for r in rows if (r["dtype"], r["H"], r["B"]) == ("float32", 256, 1))
    assert small["lstmp"]["fwdbwd_vs_lstm"] > 1.5  # launch-bound: twice the launches
    assert gpu_model.main(["--cell", "lstmp", "--proj", "300", "--device", "L4"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^float32\s+256\s+1 \|.*\|\s+n/a\s+n/a", text, re.M)  # P >= H
    assert "GRU" not in text.split("PREDICTED us/step")[1]
    for bad in (["--cell", "gru", "--proj", "8"], ["--cell", "lstmp", "--cpp-table"]):
        with pytest.raises(SystemExit):
            gpu_model.main(bad)


# (device, H, B, dtype, variant, steps, fwd us/step, fwd+bwd us/step) of the LSTM's persistent
# kernels as bench/gpu_model.py predicted them before it modelled the GRU's (b5d2ff7)
LSTM_PERSISTENT_BEFORE_THE_GRU = [
    ("H100", 256, 1, "float32", "ffma", 64, 2.387043367346939, 5.500479591836735),
    ("H100", 768, 16, "bfloat16", "mma", 64, 3.151334260408163, 8.21727071510204),
    ("H100", 768, 16, "bfloat16", "ffma", 64, 7.539905688979593, 24.077352347755102),
    ("H100", 512, 64, "float64", "ffma", 64, 24.682635140408166, 91.62972933714286),
    ("A100", 512, 8, "float32", "ffma", 16, 9.569580143402696, 31.08437427168576),
    ("L4", 512, 4, "bfloat16", "mma", 64, 2.2632777432306255, 6.771261358076565),
]


@EMULATED
@pytest.mark.parametrize("device,H,B,dtype,variant,steps,fwd,fwdbwd", LSTM_PERSISTENT_BEFORE_THE_GRU)
def test_gpu_model_lstm_persistent_predictions_are_those_before_the_gru(device, H, B, dtype, variant,
                                                                        steps, fwd, fwdbwd):
    model, _ = gpu_model.build_model(device)
    assert model.cell == "lstm"
    got = model.persistent(H, B, dtype, model.plan_of(H, B, dtype), variant, steps)
    assert got[:2] == (fwd, fwdbwd)  # bit for bit
    assert "bwd: window kernels" not in got[2]  # the LSTM has none


class StagingSpy(gpu_model.Model):
    """Records what the persistent prediction stages and multiplies."""

    def __init__(self, *args):
        super().__init__(*args)
        self.staged, self.mma_m_tiles, self.ffma_gates = [], [], []

    def stage_clk(self, elements, threads, elem_bytes, latency):
        self.staged.append((elements, latency))
        return super().stage_clk(elements, threads, elem_bytes, latency)

    def mma_compute_clk(self, m_tiles, n_tiles, k_steps, warps):
        self.mma_m_tiles.append(m_tiles)
        return super().mma_compute_clk(m_tiles, n_tiles, k_steps, warps)

    def ffma_compute_clk(self, part, length, rows, elem_bytes, dtype, backward, width, gates):
        self.ffma_gates.append((backward, width, gates))
        return super().ffma_compute_clk(part, length, rows, elem_bytes, dtype, backward, width, gates)


@EMULATED
@pytest.mark.parametrize("H,B,dtype,variant", [(256, 1, "float32", "ffma"), (768, 16, "bfloat16", "mma"),
                                                (768, 16, "bfloat16", "ffma")])
def test_gpu_model_gru_persistent_kernels_hold_three_quarters_of_the_lstms_weights(H, B, dtype, variant):
    lstm, inputs = gpu_model.build_model("H100")
    plan = lstm.plan_of(H, B, dtype)  # the same plan for both cells: only G differs
    u_fwd, u_bwd = plan["forward"]["units"], plan["backward"]["units"]
    slices = {cell: gpu_model.persistent_slices(cell, H, plan) for cell in ("lstm", "gru")}
    assert slices["lstm"] == {"gates": 4, "G": 4 * H, "forward_weight_rows": 4 * u_fwd,
                              "forward_weight_elements": 4 * u_fwd * H,
                              "backward_weight_elements": u_bwd * 4 * H}
    for key in ("G", "forward_weight_rows", "forward_weight_elements", "backward_weight_elements"):
        assert 4 * slices["gru"][key] == 3 * slices["lstm"][key], key
    with pytest.raises(ValueError, match="persistent kernels are not modelled"):
        gpu_model.persistent_slices("lstmp", H, plan)

    spies = {cell: StagingSpy(inputs, lstm.plan_of, cell) for cell in ("lstm", "gru")}
    results = {cell: spy.persistent(H, B, dtype, plan, variant) for cell, spy in spies.items()}
    hbm, l2 = inputs["hbm_latency_clk"].value, inputs["l2_latency_clk"].value
    for cell, spy in spies.items():
        G = slices[cell]["G"]
        # W_hh's slices loaded once per launch: [gates u, H] forward, [u, G] backward
        assert [e for e, latency in spy.staged if latency == hbm] == [
            slices[cell]["forward_weight_elements"], slices[cell]["backward_weight_elements"]]
        # per step: h_{t-1} [B, H] forward, dG_t [B, G] backward (k over G)
        assert sum(e for e, latency in spy.staged if latency == l2) == B * H + B * G
        if variant == "mma":  # forward A tiles: 16 rows of the [gates u] weight rows
            assert spy.mma_m_tiles[0] == -(-slices[cell]["forward_weight_rows"] // 16)
        else:
            assert {g for _, _, g in spy.ffma_gates} == {slices[cell]["gates"]}
            assert {w for backward, w, _ in spy.ffma_gates if backward} == {G}
    # the window's GEMMs (3/4 of the LSTM's) and the GRU's dGh/dGx copies, as on the stepwise path
    gru_terms, lstm_terms = results["gru"][2], results["lstm"][2]
    window = spies["gru"].window_gemms_us(H, B, gpu_model.CHUNK, dtype)
    assert (gru_terms["fwd: window GEMMs"], gru_terms["bwd: window GEMMs"]) == window
    assert window == spies["lstm"].window_gemms_us(H, B, gpu_model.CHUNK, dtype, cell="gru")
    assert gru_terms["bwd: window kernels"] == spies["gru"].window_kernels_us(H, B, gpu_model.CHUNK, dtype) > 0
    # FFMA: 3 weight rows per unit instead of 4; mma: the same where 3u and 4u pad to the same
    # count of 16-row tiles (u = 8: 2 tiles each)
    assert gru_terms["fwd: product"] < lstm_terms["fwd: product"] or (
        variant == "mma" and -(-3 * u_fwd // 16) == -(-4 * u_fwd // 16)
        and gru_terms["fwd: product"] == lstm_terms["fwd: product"])
    assert results["gru"][1] != results["lstm"][1]


@EMULATED
def test_gpu_model_ffma_forward_tile_issues_three_quarters_of_the_lstms_fma_for_the_gru():
    model, _ = gpu_model.build_model("H100")
    part = model.plan_of(768, 16, "float32")["forward"]
    lstm = model.ffma_tile(part, 768, 16, 4, "float32", False, 768, 4)
    gru = model.ffma_tile(part, 768, 16, 4, "float32", False, 768, 3)
    assert 4 * gru[1] == 3 * lstm[1]  # FMA: rows x gates per k
    assert gru[0] < lstm[0] and gru[2] < lstm[2]  # fewer weight loads, wavefronts and instructions


@EMULATED
def test_gpu_model_reports_the_gru_against_the_lstms_rule_rows(tmp_path, capsys):
    paths = {"header": {"device": "test GPU"}, "cell": "gru", "rows": [
        {"cell": "gru", "dtype": "float32", "H": 256, "B": 1, "persistent_fwdbwd_us": 4.25,
         "stepwise_fwdbwd_us": 20.5},
        {"cell": "lstm", "dtype": "float32", "H": 768, "B": 1, "persistent_fwdbwd_us": 9.75,
         "stepwise_fwdbwd_us": 21.5}]}
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    assert gpu_model.main(["--cell", "gru", "--device", "H100", "--cpp-table", "--paths-json",
                           str(tmp_path / "paths.json"), "--json", str(tmp_path / "gru.json")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("PREDICTIONS") and "H100 SXM, one layer of the GRU" in text
    assert "does not cover the persistent kernels" not in text
    lines = text.splitlines()
    for dtype in gpu_model.DTYPES:  # one row per shape: plan, stepwise and persistent
        for H in gpu_model.TABLE_H:
            for B in gpu_model.TABLE_B:
                assert sum(bool(re.match(rf"{dtype}\s+{H}\s+{B}\s+\S.* \|\s+\d+\.\d+\s+\d+\.\d+ ", line))
                           for line in lines) == 1, (dtype, H, B)
    assert "the sm_90 rows, the LSTM's, which the GRU uses" in text
    for dtype in gpu_model.STORAGE_ENUM:
        assert re.search(rf"^  sm_90 {dtype}\s+in use B <= \d+, B\*H <= \d+, L >= \d+ \| derived for "
                         rf"the GRU B <= \d+, B\*H <= \d+, L >= \d+ \| (agrees|DISAGREES)", text, re.M)
        for family in gpu_model.FAMILIES:  # --cpp-table: every family's reference device
            assert re.search(rf"^  {family}\s+{dtype}\s+in use .* \| derived \(\w+\) B <= .* \| "
                             rf"(agrees|DISAGREES)", text, re.M), (family, dtype)
    assert "Derived rule table for the GRU" in text and "it is not: the GRU uses the LSTM's rows" in text
    # the measured GRU row only, not the LSTM's
    assert re.search(r"MEASURED .* forward\+backward us/step of the GRU:\n  float32\s+H=\s*256 B=\s*1: "
                     r"persistent\s+4\.2 /", text)
    assert "H=  768 B=  1: persistent" not in text
    data = json.loads((tmp_path / "gru.json").read_text())
    assert data["kind"] == "PREDICTIONS" and data["cell"] == "gru"
    assert data["current_rules"] == {k: list(v) for k, v in gpu_model.current_rules()["sm_90"].items()}
    verdicts = data["rule_in_use_vs_derived"]
    assert set(verdicts) == set(gpu_model.STORAGE_ENUM)
    for dtype, v in verdicts.items():
        assert v["agrees"] == (v["in_use"] == v["derived"]), dtype
        assert v["derived"] == data["rule_row"][dtype]
    assert {f: set(rows) for f, rows in data["family_rule_in_use_vs_derived"].items()} == {
        f: set(gpu_model.STORAGE_ENUM) for f in gpu_model.FAMILIES}
    # the GRU's own predictions, not the LSTM's: the same shape predicted again per cell
    lstm, _ = gpu_model.build_model("H100")
    gru, _ = gpu_model.build_model("H100", cell="gru")
    row = next(r for r in data["rows"] if (r["dtype"], r["H"], r["B"]) == ("bfloat16", 768, 16))
    assert row["mma_fwdbwd"] == gru.row(768, 16, "bfloat16")["mma_fwdbwd"] != lstm.row(768, 16, "bfloat16")["mma_fwdbwd"]
    assert row["stepwise_fwdbwd"] == gru.stepwise(768, 16, "bfloat16", cell="gru")[1]


@EMULATED
def test_gpu_model_predicts_for_the_a100(tmp_path, capsys):
    assert gpu_model.main(["--device", "A100", "--json", str(tmp_path / "a100.json")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("PREDICTIONS") and "A100 SXM4, one layer" in text
    assert re.search(r"^Device A100 .*compute capability 8\.0, 108 SMs, 167936 B .*family sm_80$",
                     text, re.M)
    assert re.search(r"^  sms\s+108 SMs\s+spec\s+A100", text, re.M)
    assert re.search(r"^  fp32_fma_per_clk\s+64 lanes/clk/SM\s+spec", text, re.M)
    assert re.search(r"^  cudnn_fwd_us\s+n/a ", text, re.M)  # published for the H100 only
    assert "the sm_80 rows" in text
    for dtype in gpu_model.DTYPES + ("float16",):
        built = gpu_model.built_variant(dtype)
        assert re.search(rf"^  {dtype}\s+{built} built\s+rule: B <= \d+, B\*H <= \d+, L >= \d+ "
                         rf"\| predicted: B <= \d+, .*\| (agrees|DISAGREES)", text, re.M), dtype
    data = json.loads((tmp_path / "a100.json").read_text())
    assert (data["device"], data["family"], data["preset"]["sms"]) == ("A100", "sm_80", 108)
    assert data["inputs"]["sms"]["value"] == 108 and data["inputs"]["clock_ghz"]["kind"] == "assumption"
    assert data["current_rules"] == {k: list(v) for k, v in gpu_model.current_rules()["sm_80"].items()}
    assert set(data["rule_row"]) == {"float32", "float64", "float16", "bfloat16"}
    by_shape = {(r["dtype"], r["H"], r["B"]): r for r in data["rows"]}
    assert not by_shape[("float32", 1024, 16)]["usable"]  # 164 KiB: W_hh's slice does not fit
    assert by_shape[("float32", 1024, 16)]["stepwise_fwdbwd"] > 0
    assert by_shape[("bfloat16", 768, 16)]["mma_fwdbwd"] < by_shape[("bfloat16", 768, 16)]["ffma_fwdbwd"]


@EMULATED
def test_gpu_model_prints_labelled_predictions_for_every_shape(tmp_path):
    out = run_script("bench/gpu_model.py", "--json", tmp_path / "model.json")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("PREDICTIONS") and "PREDICTED us/step" in text
    assert "assumption" in text and "measured" in text and "published" in text
    lines = text.splitlines()
    for dtype in gpu_model.DTYPES:
        for H in gpu_model.TABLE_H:
            for B in gpu_model.TABLE_B:
                assert sum(bool(re.match(rf"{dtype}\s+{H}\s+{B}\s+\S", line)) for line in lines) == 1, (
                    dtype, H, B)
        built = gpu_model.built_variant(dtype)  # mma for the 16-bit types, ffma otherwise
        assert re.search(rf"^  {dtype}\s+{built} built\s+rule: B <= \d+, B\*H <= \d+, L >= \d+ "
                         rf"\| predicted: .*\| (agrees|DISAGREES)", text, re.M), dtype
    assert re.search(r"^  bfloat16\s+ffma what-if .*\| \(not built\) ", text, re.M)
    data = json.loads((tmp_path / "model.json").read_text())
    assert data["kind"] == "PREDICTIONS" and len(data["rows"]) == 27
    by_shape = {(r["dtype"], r["H"], r["B"]): r for r in data["rows"]}
    row = by_shape[("bfloat16", 768, 16)]
    assert row["usable"] and 0 < row["mma_fwdbwd"] < row["ffma_fwdbwd"]
    assert row["stepwise_fwdbwd"] > row["stepwise_fwd"] > 0
    assert by_shape[("float32", 768, 16)]["mma_fwd"] is None  # tensor cores: 16-bit only
    assert not by_shape[("float64", 1024, 16)]["usable"]  # W_hh's slice does not fit
    # more work per step costs more, on every path
    for path in ("stepwise_fwdbwd", "ffma_fwdbwd"):
        assert by_shape[("float32", 1024, 64)][path] > by_shape[("float32", 256, 1)][path]


@EMULATED
def test_gpu_model_takes_the_measured_barrier_and_the_measured_paths(tmp_path):
    barrier = {"header": {"device": "test GPU"}, "rows": [
        {"blocks": 132, "exchange": True, "words_ok": True, "us_per_barrier": 2.5},
        {"blocks": 96, "exchange": False, "words_ok": True, "us_per_barrier": 0.1}]}
    (tmp_path / "barrier.json").write_text(json.dumps(barrier))
    paths = {"header": {"device": "test GPU"}, "rows": [
        {"dtype": "float32", "H": 256, "B": 1, "persistent_fwdbwd_us": 12.25,
         "stepwise_fwdbwd_us": 30.5}]}
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    base = run_script("bench/gpu_model.py", "--json", tmp_path / "base.json")
    out = run_script("bench/gpu_model.py", "--barrier-json", tmp_path / "barrier.json",
                     "--paths-json", tmp_path / "paths.json", "--json", tmp_path / "model.json")
    assert out.returncode == 0 and base.returncode == 0, out.stderr + base.stderr
    assert re.search(r"barrier_us\s+2\.5 us\s+measured\s+bench/barrier_latency.py on test GPU", out.stdout)
    assert "MEASURED (bench/gpu_paths.py on test GPU)" in out.stdout
    assert re.search(r"float32\s+H=\s*256 B=\s*1: persistent\s+12\.2 /", out.stdout)
    # two more microseconds per barrier, one barrier per step each way
    rows = {(r["dtype"], r["H"], r["B"]): r for r in json.loads((tmp_path / "model.json").read_text())["rows"]}
    base_rows = {(r["dtype"], r["H"], r["B"]): r for r in json.loads((tmp_path / "base.json").read_text())["rows"]}
    key = ("bfloat16", 768, 16)
    assert rows[key]["ffma_fwdbwd"] - base_rows[key]["ffma_fwdbwd"] == pytest.approx(2 * 1.8)


@EMULATED
def test_gpu_model_models_the_gpu_its_measurements_come_from(tmp_path, capsys):
    barrier = {"header": {"device": "NVIDIA A100-SXM4-80GB"}, "rows": [
        {"blocks": 108, "exchange": True, "words_ok": True, "us_per_barrier": 1.25}]}
    (tmp_path / "barrier.json").write_text(json.dumps(barrier))
    assert gpu_model.main(["--barrier-json", str(tmp_path / "barrier.json")]) == 0
    text = capsys.readouterr().out
    assert "A100 SXM4, one layer" in text and "NOTE" not in text
    assert re.search(r"barrier_us\s+1\.25 us\s+measured\s+bench/barrier_latency.py on NVIDIA A100", text)
    assert gpu_model.main(["--barrier-json", str(tmp_path / "barrier.json"), "--device", "H100"]) == 0
    text = capsys.readouterr().out
    assert "H100 SXM, one layer" in text
    assert "NOTE: the measurements given (--barrier-json/--paths-json) come from NVIDIA " \
           "A100-SXM4-80GB, not the H100 modelled here; bench/gpu_model.py --device A100" in text


@EMULATED
def test_gpu_model_over_all_devices_ends_with_the_rule_table_of_each_family(tmp_path, capsys):
    assert gpu_model.main(["--device", "all", "--json", str(tmp_path / "all.json")]) == 0
    text = capsys.readouterr().out
    headers = re.findall(r"^PREDICTIONS of .*?: (.*?), one layer", text, re.M)
    assert headers == [gpu_model.DEVICE_LABELS[d] for d in gpu_model.DEVICE_NAMES]
    table = text[text.index("Derived rule table"):]
    rows = re.findall(r"^      (\{F::k\w+, S::k\w+, \d+, \d+, \d+\},)", table, re.M)
    assert len(rows) >= 12  # 3 families x 4 storage types, then the family-wide rows that differ
    (tmp_path / "table.cpp").write_text("persistent_rule(int64_t c, StorageType s) {\n"
                                        + "\n".join(rows[:12]) + "\n}\n")
    parsed = gpu_model.current_rules(tmp_path / "table.cpp")
    data = json.loads((tmp_path / "all.json").read_text())
    assert set(data["devices"]) == set(gpu_model.DEVICE_NAMES)
    for family, reference in gpu_model.FAMILY_REFERENCE.items():
        # each family's rows are its reference device's derived rule, as that device's run says
        assert parsed[family] == {k: tuple(v) for k, v in data["devices"][reference]["rule_row"].items()}
        assert data["family_rules"][family] == data["devices"][reference]["rule_row"]
    assert re.search(r"^  A10 \(sm_86/sm_89, reference L4\):", table, re.M)
    assert re.search(r"^  RTX4090 \(sm_86/sm_89, reference L4\):", table, re.M)
    assert "Derived from every modelled device of the family together" in table
    # the H100's rows are what its run derives (and what it derived before the device presets)
    assert data["family_rules"]["sm_90"]["float32"] == [64, 512, 11]
    assert data["family_rules"]["sm_90"]["bfloat16"] == [256, 1024, 10]


# ---- the CUDA paths' benchmark ------------------------------------------------------------------

@EMULATED
@pytest.mark.parametrize("cell", [None, "gru"])
def test_gpu_paths_smoke_runs_every_variant_under_emulation(tmp_path, cell):
    flags = ("--cell", cell) if cell else ()  # None: the LSTM, as without --cell
    out = run_script("bench/gpu_paths.py", "--smoke", *flags, "--out", tmp_path / "paths.json")
    assert out.returncode == 0, out.stderr
    assert "MEANINGLESS" in out.stdout and "\n  n/a " not in out.stdout  # no variant failed
    header = ("CUDA paths of the GRU (C: nn.GRU), us/step (MEANINGLESS" if cell else
              "CUDA paths, us/step (MEANINGLESS")  # the LSTM's as before the GRU
    assert out.stdout.startswith(header) and f"'cudnn' is nn.{'GRU' if cell else 'LSTM'} on" in out.stdout
    data = json.loads((tmp_path / "paths.json").read_text())
    assert data["meaningless"] is True and data["steps"] == 4 and data["cell"] == (cell or "lstm")
    assert [(r["cell"], r["dtype"], r["H"], r["B"]) for r in data["rows"]] == [
        (cell or "lstm", "float32", 16, 2), (cell or "lstm", "bfloat16", 16, 2)]
    for row in data["rows"]:
        assert row["modules"] == (["TruncatedGRU", "GRU"] if cell else ["TruncatedLSTM", "LSTM"])
        for variant in ("persistent", "stepwise", "cudnn"):
            assert row[f"{variant}_error"] is None
            assert row[f"{variant}_fwdbwd_us"] > 0 and row[f"{variant}_fwd_us"] > 0
        # each variant ran its own kernels: the persistent ones, the stepwise ones, none of ours
        assert set(row["persistent_launches"]) == {"persistent_forward", "persistent_backward"}
        assert set(row["stepwise_launches"]) == {"forward_step", "backward_step"}
        assert row["cudnn_launches"] == {}
        assert row["persistent_over_cudnn_fwdbwd"] == pytest.approx(
            row["persistent_fwdbwd_us"] / row["cudnn_fwdbwd_us"])


@EMULATED
def test_gpu_paths_says_why_the_persistent_path_is_not_available(tmp_path):
    # H=1024 float64: W_hh's slice does not fit a block on the simulated H100
    out = run_script("bench/gpu_paths.py", "--smoke", "--dtypes", "float64", "--hidden", "1024",
                     "--batch", "1", "--steps", "1", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    assert re.search(r"n/a persistent at float64 H=1024 B=1: no persistent plan: .*shared memory",
                     out.stdout)


# ---- scripts/gpu_check.sh -----------------------------------------------------------------------

def test_gpu_check_script_parses_and_runs_its_steps_in_order(tmp_path):
    script = REPO / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    order = ["setup.py build_ext --inplace", "pytest tests", "memcheck racecheck synccheck",
             "bench/barrier_latency.py --blocks 96 128 0 --threads 256", "bench/gpu_paths.py",
             "bench/gpu_model.py"]
    positions = [text.find(s) for s in order]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), positions
    broken = tmp_path / "broken.sh"  # the check itself can fail
    broken.write_text(text.replace("fi\n", "", 1))
    assert subprocess.run(["bash", "-n", str(broken)], capture_output=True).returncode != 0
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^gpu-check:\n\tbash scripts/gpu_check.sh", makefile, re.M)
    assert re.search(r"^gpu-test: gpu-check$", makefile, re.M)
