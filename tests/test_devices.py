"""The GPUs users have: the emulator's device presets (A100, A10, RTX 4090, L4, H100), the
persistent plan and auto's rule per device and architecture family, the fallback where a
device's shared memory does not hold a plan, results across devices, the architectures of
the build and the error on GPUs older than sm_80."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tbptt_cuda
from tbptt_cuda import TruncatedLSTM, _backend, _build, emulate_cuda, emulation

pytestmark = pytest.mark.skipif(not _backend.load().compiled_with_emulation(),
                                reason="built without the emulated kernels")

DEVICES = ("H100", "A100", "A10", "RTX4090", "L4")
KIB = 1024


def test_presets_carry_the_published_limits():
    """CUDA C++ Programming Guide (per compute capability) and the datasheets' SM counts."""
    devices = emulation.devices()
    assert tuple(devices) == DEVICES
    expected = {  # capability, SMs, shared KiB per SM, per block (opt-in), threads, blocks per SM
        "H100": (90, 132, 228, 227, 2048, 32),
        "A100": (80, 108, 164, 163, 2048, 32),
        "A10": (86, 72, 100, 99, 1536, 16),
        "RTX4090": (89, 128, 100, 99, 1536, 24),
        "L4": (89, 58, 100, 99, 1536, 24),
    }
    for name, (capability, sms, per_sm, per_block, threads, blocks) in expected.items():
        d = devices[name]
        assert (d["capability"], d["sms"], d["threads_per_sm"], d["blocks_per_sm"]) == (
            capability, sms, threads, blocks), name
        assert d["shared_bytes_per_sm"] == per_sm * KIB
        assert d["shared_bytes_per_block_optin"] == per_block * KIB
        assert d["registers_per_sm"] == 64 * KIB and d["threads_per_block"] == 1024


def test_device_argument_is_checked():
    with pytest.raises(ValueError, match=r"emulate_cuda: device must be one of .*'A100'.*got 'V100'"):
        emulate_cuda(device="V100")
    with pytest.raises(ValueError, match="device must be one of"):
        emulate_cuda(device=None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_plans_fit_each_device(device, dtype):
    """Every usable plan stays inside the device's own limits: one block per SM at most,
    shared memory within the block's opt-in limit (and the SM's, with its 1 KiB reserve);
    every unusable plan says what does not fit."""
    limits = emulation.devices()[device]
    family = {80: "sm_80", 86: "sm_86/sm_89", 89: "sm_86/sm_89", 90: "sm_90"}[limits["capability"]]
    usable = 0
    for H in (16, 130, 256, 512, 768, 1024, 2048):
        for B in (1, 16, 64):
            plan = emulation.plan(H, B, dtype, device=device)
            assert plan["sms"] == limits["sms"] and plan["capability"] == limits["capability"]
            assert plan["family"] == family
            if not plan["usable"]:
                assert "shared memory" in plan["reason"] or "units per block" in plan["reason"]
                continue
            usable += 1
            for part in (plan["forward"], plan["backward"]):
                assert part["blocks"] * part["units"] >= H > (part["blocks"] - 1) * part["units"]
                assert part["blocks"] <= limits["sms"]
                assert part["shared_bytes"] <= limits["shared_bytes_per_block_optin"]
                assert part["shared_bytes"] + KIB <= limits["shared_bytes_per_sm"]
                assert part["threads"] % 32 == 0 and part["threads"] <= 256
    assert usable >= 6


def test_smaller_shared_memory_plans_fewer_shapes():
    """The same shape fits the H100 (227 KiB a block) and not the Ada and Ampere parts
    (99 KiB; 163 KiB): float32 H=768 B=16 needs ~160 KiB of W_hh slice."""
    fits = {d: emulation.plan(768, 16, torch.float32, device=d)["usable"] for d in DEVICES}
    assert fits == {"H100": True, "A100": True, "A10": False, "RTX4090": False, "L4": False}
    assert "shared memory" in emulation.plan(768, 16, torch.float32, device="RTX4090")["reason"]
    # more units per block where there are fewer SMs: the L4's 58 against the H100's 132
    assert emulation.plan(256, 4, device="H100")["forward"]["units"] == 4
    assert emulation.plan(256, 4, device="L4")["forward"]["units"] == 8


def _stream(device, path, H, B, L, dtype=torch.float32, chunks=2, layers=1):
    """Outputs, final state and every gradient of a short stream on the emulated `device`,
    with the kernels each launched."""
    torch.manual_seed(0)
    lstm = TruncatedLSTM(5, H, layers, k2=L + 2, dtype=dtype)
    xs = [torch.randn(L, B, 5, dtype=dtype) for _ in range(chunks)]
    results, state = [], None
    with emulate_cuda(path=path, device=device) as stats:
        for x in xs:
            lstm.zero_grad(set_to_none=True)
            out, state = lstm(x, state)
            (out.float().pow(2).sum() + state[0].float().sum()).backward()
            results += [out.detach(), state[0].detach(), state[1].detach()]
            results += [p.grad.clone() for p in lstm.parameters()]
    return results, set(stats.launches)


def _bitwise(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_results_are_bit_identical_across_devices_with_the_same_partition(dtype):
    """The persistent kernels on every preset give the H100 preset's results bit for bit where
    the plan partitions the layer alike (H <= 4 units x the smallest SM count): the device
    changes where blocks run, not what they compute."""
    reference, launched = _stream("H100", "persistent", 40, 3, 4, dtype, layers=2)
    assert launched == {"persistent_forward", "persistent_backward"}
    h100 = emulation.plan(40, 3, dtype, device="H100")
    for device in DEVICES[1:]:
        plan = emulation.plan(40, 3, dtype, device=device)
        assert plan["forward"] == h100["forward"] and plan["backward"] == h100["backward"]
        results, _ = _stream(device, "persistent", 40, 3, 4, dtype, layers=2)
        assert _bitwise(results, reference), device


def test_a_different_partition_changes_only_the_rounding():
    """Where a device has fewer SMs than H / 4, its blocks take more units each and the
    reduction over h_{t-1} is split into other k slices: the L4 (58 SMs) at H = 256 sums in
    another order than the H100, so results agree to float32 rounding, not bit for bit."""
    h100, l4 = emulation.plan(256, 4, device="H100"), emulation.plan(256, 4, device="L4")
    assert h100["backward"]["k_split"] != l4["backward"]["k_split"]
    reference, _ = _stream("H100", "persistent", 256, 4, 3, chunks=1)
    results, launched = _stream("L4", "persistent", 256, 4, 3, chunks=1)
    assert launched == {"persistent_forward", "persistent_backward"}
    for a, b in zip(results, reference):
        assert (a - b).norm() <= 1e-6 * b.norm() + 1e-30


def test_where_a_device_has_no_plan_auto_runs_stepwise_with_the_same_results():
    """float32 H=512 B=1 over 33 steps is inside the sm_86/sm_89 rule; its W_hh slice fits a
    block on the A10 (72 SMs, 8 units each) but not on the L4 (58 SMs, 12 units: over 99 KiB).
    auto takes the persistent kernels on the A10 and falls back on the L4, where it equals the
    stepwise path bit for bit; the forced persistent path says why it cannot run there."""
    H, B, L = 512, 1, 33
    for device in ("A10", "L4"):
        rule = emulation.plan(H, B, device=device)["rule"]
        assert B <= rule["max_batch"] and B * H <= rule["max_batch_hidden"]
        assert L >= rule["min_steps"]
    assert emulation.plan(H, B, device="A10")["usable"]
    assert not emulation.plan(H, B, device="L4")["usable"]
    _, launched = _stream("A10", "auto", H, B, L, chunks=1)
    assert launched == {"persistent_forward", "persistent_backward"}
    auto, launched = _stream("L4", "auto", H, B, L, chunks=1)
    assert launched == {"forward_step", "backward_step"}
    stepwise, _ = _stream("L4", "stepwise", H, B, L, chunks=1)
    assert _bitwise(auto, stepwise)
    with pytest.raises(RuntimeError, match=r"forced to 'persistent' but no persistent plan fits "
                                           r"H=512, B=1 .*shared memory"):
        _stream("L4", "persistent", H, B, 2, chunks=1)


@pytest.mark.parametrize("device", DEVICES)
def test_auto_follows_the_rule_of_the_device_family(device):
    """auto takes the persistent kernels inside the rule of the device's family (read back
    from the plan) and the stepwise path one step outside it, in each direction."""
    dtype = torch.float32
    rule = emulation.plan(16, 2, dtype, device=device)["rule"]
    L = rule["min_steps"]

    def launched(H, B, steps):
        torch.manual_seed(0)
        lstm = TruncatedLSTM(2, H, k2=steps, dtype=dtype)
        with emulate_cuda(device=device) as stats:
            out, _ = lstm(torch.randn(steps, B, 2, dtype=dtype))
            out.sum().backward()
        return set(stats.launches)

    persistent = {"persistent_forward", "persistent_backward"}
    stepwise = {"forward_step", "backward_step"}
    H, wide = 4, rule["max_batch_hidden"] // 2 + 1
    for shape in ((H, 2), (H, rule["max_batch"] + 1), (wide, 2)):  # outside the rule only
        assert emulation.plan(*shape, dtype, device=device)["usable"]
    assert launched(H, 2, L) == persistent
    assert launched(H, 2, L - 1) == stepwise
    assert launched(H, rule["max_batch"] + 1, L) == stepwise
    assert launched(wide, 2, L) == stepwise


def test_plans_are_made_again_for_another_device():
    """The plan cache is per simulated device: switching presets (also nested) re-plans."""
    with emulate_cuda(device="L4"):
        assert emulation.plan(256, 4)["sms"] == 58
        with emulate_cuda(device="A100"):
            assert emulation.plan(256, 4)["sms"] == 108
        assert emulation.plan(256, 4)["sms"] == 58
        assert emulation.plan(256, 4, device="H100")["sms"] == 132
        assert emulation.plan(256, 4)["sms"] == 58
    with emulate_cuda(device="RTX4090", sms=40):  # a part of the GPU
        assert emulation.plan(256, 4)["sms"] == 40


def test_gpus_older_than_sm_80_get_a_clear_error():
    message = _backend.load().unsupported_capability_message
    for capability in (80, 86, 89, 90, 100, 120):
        assert message(capability, "GPU") == ""
    text = message(75, "Tesla T4")
    assert "Tesla T4 has compute capability 7.5" in text and "8.0 or newer" in text
    assert ".cpu()" in text
    assert message(70, "Tesla V100-SXM2-16GB").startswith("tbptt: Tesla V100-SXM2-16GB has "
                                                         "compute capability 7.0")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_this_gpu_is_supported_and_planned_from_its_own_limits():
    props = torch.cuda.get_device_properties(0)
    capability = props.major * 10 + props.minor
    assert _backend.load().unsupported_capability_message(capability, props.name) == ""
    plan = tbptt_cuda.cuda_plan(256, 16)
    assert plan["sms"] == props.multi_processor_count and plan["capability"] == capability


# ---- the architectures of the build ---------------------------------------------------------------

def test_default_architectures_are_ampere_ada_and_hopper():
    assert _build.DEFAULT_ARCH_LIST == "8.0;8.6;8.9;9.0+PTX"
    assert _build.arch_list_targets() == ([80, 86, 89, 90], [90])
    assert _build.arch_list_targets("7.5 8.0+PTX") == ([75, 80], [80])
    assert _build.gencode_flags("8.6;9.0+PTX") == [
        "-gencode=arch=compute_86,code=sm_86", "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90"]


def _cuobjdump():
    """A cuobjdump to cross-check the fat-binary reader with, where one is installed (the
    toolkit's, or the one triton ships)."""
    found = shutil.which("cuobjdump")
    home = _build.find_cuda_home()
    candidates = [found, home and str(Path(home) / "bin" / "cuobjdump")]
    try:
        import triton

        candidates.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.mark.skipif(not _backend.compiled_with_cuda(), reason="built without CUDA")
def test_the_built_extension_carries_a_cubin_per_architecture_of_its_build():
    """The extension's fat binary holds exactly the cubins and PTX its TORCH_CUDA_ARCH_LIST
    asked for (make test builds the default list: sm_80, sm_86, sm_89, sm_90 + PTX)."""
    library = _backend.load().__file__
    carried = _build.cuda_binary_archs(library)
    cubins, ptx = _build.arch_list_targets(_backend.cuda_archs())
    assert carried == {"sm": sorted(cubins), "ptx": sorted(ptx)}
    tool = _cuobjdump()
    if tool is not None:
        listed = subprocess.run([tool, "--list-elf", "--list-ptx", library], capture_output=True,
                                text=True, check=True).stdout
        import re

        assert sorted({int(a) for a in re.findall(r"\.sm_(\d+)\.cubin", listed)}) == carried["sm"]
        assert sorted({int(a) for a in re.findall(r"\.sm_(\d+)\.ptx", listed)}) == carried["ptx"]


def test_fat_binary_reader_rejects_what_is_not_elf(tmp_path):
    path = tmp_path / "x.o"
    path.write_bytes(b"not an object")
    with pytest.raises(ValueError, match="not a 64-bit ELF"):
        _build.cuda_binary_archs(path)
    assert _build.cuda_binary_archs(sys.executable) == {"sm": [], "ptx": []}


@pytest.mark.parametrize("device", ["A100", "RTX4090", "L4"])
def test_a_grid_the_device_refuses_falls_back_on_each_device(device):
    """A cooperative grid the GPU will not hold at launch (cudaErrorCooperativeLaunchTooLarge:
    MPS or another process holds SMs the plan counted on) is warned about once, naming the SMs
    the plan was made for, and the stepwise path gives the same results, on every family."""
    H, B, L = 24, 2, 40  # inside every family's rule
    good, launched = _stream(device, "persistent", H, B, L, chunks=1)
    assert launched == {"persistent_forward", "persistent_backward"}
    emulation.clear_plans()
    emulation.fail_launches("persistent_backward", 720)
    try:
        sms = emulation.devices()[device]["sms"]
        with pytest.warns(UserWarning, match=rf"persistent_backward could not be launched .*"
                                             rf"cudaErrorCooperativeLaunchTooLarge.*planned for "
                                             rf"{sms} SMs"):
            fell_back, launched = _stream(device, "auto", H, B, L, chunks=1)
        assert launched == {"persistent_forward", "backward_step"}
    finally:
        emulation.fail_launches(None)
        emulation.clear_plans()
    for a, b in zip(good, fell_back):
        assert (a - b).norm() <= 1e-6 * b.norm() + 1e-30
