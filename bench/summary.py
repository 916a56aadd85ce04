"""Summarize a bench run: memory table, targets met/missed, and the ratio table (printed last).

    python bench/summary.py [results/bench.json ...] [--out results] [--no-plots]

Reads the pytest-benchmark JSON written by `python -m pytest bench/` (extra_info of every
test; several files are merged, a later file's row replacing an earlier one's), prints
Markdown tables (also written to OUT/summary.md) and, where matplotlib is installed,
draws OUT/memory_vs_n_*.png and OUT/time_vs_H_*.png. matplotlib is optional.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEERS = [("nn_full", "BPTT(n,n)"), ("nn_chunked", "nn BPTT(k1,k1)"),
         ("nn_rerun", "nn rerun k2"), ("retained", "retained graph")]
NAMES = {"ours": "TruncatedLSTM", "nn_full": "nn.LSTM BPTT(n,n)",
         "nn_chunked": "nn.LSTM BPTT(k1,k1) detach", "nn_rerun": "nn.LSTM re-run last k2",
         "retained": "retained-graph recipe"}
MiB = 2**20


def load(path):
    d = json.loads(Path(path).read_text())
    rows = [dict(b["extra_info"], name=b["name"]) for b in d.get("benchmarks", [])
            if b.get("extra_info", {}).get("kind")]
    meta = d.get("tbptt", {})
    if not meta.get("header"):
        mi = d.get("machine_info", {})
        meta["header"] = (f"machine {mi.get('node')}: CPU {mi.get('cpu', {}).get('brand_raw')}, "
                          f"python {mi.get('python_version')}, commit "
                          f"{d.get('commit_info', {}).get('id', '?')[:12]}")
    return meta, rows


def _case_key(r):
    return (r["device"], r["dtype"], r["H"], r["B"], r["k1"], r["k2"], r["n"], r.get("layers", 1))


def fmt_ratio(r, lo=None, hi=None):
    if r is None:
        return "-"
    s = f"{r:.2f}x"
    if lo is not None and hi is not None and hi - lo > 0.005:
        s += f" [{lo:.2f}-{hi:.2f}]"
    return s


def fmt_us(v, lo=None, hi=None):
    if v is None:
        return "-"
    s = f"{v:.1f}" if v < 1000 else f"{v:.0f}"
    if lo is not None and hi is not None:
        s += f" ±{(hi - lo) / 2:.1f}" if v < 1000 else f" ±{(hi - lo) / 2:.0f}"
    return s


def md_table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# speed

def speed_by_case(rows):
    by = defaultdict(dict)
    for r in rows:
        if r["kind"] == "speed":
            by[_case_key(r)][r["variant"]] = r
    return dict(sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][3], kv[0][4],
                                                    kv[0][5] != kv[0][4], kv[0][5], kv[0][2])))


def ours_us(vs):
    if "ours" in vs:
        r = vs["ours"]
        return r["us_per_step"], r["us_per_step_q25"], r["us_per_step_q75"]
    paired = [r["ours_us_per_step"] for r in vs.values() if r.get("ours_us_per_step")]
    return (statistics.median(paired), None, None) if paired else (None, None, None)


def speed_table(by_case):
    head = ["dev", "dtype", "H", "B", "k1", "k2", "n", "ours µs/step"]
    head += [f"ours/{lab} (peer µs/step)" for _, lab in PEERS]
    out = []
    for key, vs in by_case.items():
        dev, dt, H, B, k1, k2, n, _ = key
        om, oq1, oq3 = ours_us(vs)
        row = [dev, dt, H, B, k1, "k1" if k2 == k1 else ("n" if k2 == n else k2), n,
               fmt_us(om, oq1, oq3)]
        for v, _ in PEERS:
            r = vs.get(v)
            if r is None:
                row.append("")
            elif r.get("ratio") is None:
                row.append(f"- ({fmt_us(r['us_per_step'])})")
            else:
                row.append(f"{fmt_ratio(r['ratio'], r.get('ratio_q25'), r.get('ratio_q75'))} "
                           f"({fmt_us(r['us_per_step'])})")
        out.append(row)
    return md_table(head, out)


# --------------------------------------------------------------------------------------------
# memory

def mem_by_case(rows):
    by = defaultdict(lambda: defaultdict(dict))  # (dev, dt, H, B, k1, k2) -> n -> variant -> r
    for r in rows:
        if r["kind"] == "memory":
            key = (r["device"], r["dtype"], r["H"], r["B"], r["k1"], r["k2"])
            by[key][r["n"]][r["variant"]] = r
    return by


def mem_metric(r):
    """The memory figure of a row: CUDA peak on GPU, else bytes held for backward."""
    return r.get("cuda_peak_bytes") if r["device"] == "cuda" else r.get("held_bytes")


def memory_table(by):
    variants = ["ours", "nn_full", "nn_chunked", "nn_rerun", "retained"]
    blocks = []
    for (dev, dt, H, B, k1, k2), per_n in sorted(by.items()):
        if dev == "cuda":
            head = ["n"] + [f"{v} CUDA peak MiB" for v in variants] + ["ours/BPTT(n,n)",
                                                                        "k2/n"]
        else:
            head = ["n"] + [f"{v} held MiB / RSS+ MiB" for v in variants] + [
                "ours/BPTT(n,n) held", "k2/n"]
        out = []
        for n, vs in sorted(per_n.items()):
            row = [n]
            for v in variants:
                r = vs.get(v)
                if r is None:
                    row.append("")
                elif dev == "cuda":
                    row.append(f"{r['cuda_peak_bytes'] / MiB:.1f}")
                else:
                    rss = r.get("rss_peak_increment_bytes")
                    rss_s = f"{rss / MiB:.1f}" if rss is not None else "?"
                    row.append(f"{r['held_bytes'] / MiB:.2f} / {rss_s}")
            o, f = vs.get("ours"), vs.get("nn_full")
            row.append(f"{mem_metric(o) / mem_metric(f):.4f}" if o and f else "-")
            row.append(f"{k2 / n:.4f}")
            out.append(row)
        title = (f"**Memory, {dev} {dt}, H={H}, B={B}, TBPTT({k1},{k2})** "
                 + ("(peak allocated above the pre-run allocation)" if dev == "cuda" else
                    "(bytes held for backward: saved tensors + history ring / peak RSS of a "
                    "fresh process above its size after setup)"))
        blocks.append(title + "\n\n" + md_table(head, out))
    return "\n\n".join(blocks)


# --------------------------------------------------------------------------------------------
# targets

def _ratios(by_case, pred, peer):
    out = []
    for key, vs in by_case.items():
        dev, dt, H, B, k1, k2, n, _ = key
        r = vs.get(peer)
        if pred(dev, dt, H, k1, k2, n) and r is not None and r.get("ratio") is not None:
            out.append((r["ratio"], f"{dev}-{dt}-H{H}-B{B}-k{k1}-k2_{k2}-n{n}"))
    return out


def _verdict(name, limit, pairs):
    if not pairs:
        return f"- {name}: not measured in this run"
    worst = max(pairs)
    met = sum(r <= limit for r, _ in pairs)
    med = statistics.median(r for r, _ in pairs)
    ok = "MET" if met == len(pairs) else ("MISSED" if met == 0 else "PARTLY MET")
    s = (f"- {name} (target ≤ {limit}x): **{ok}** in {met}/{len(pairs)} cases; median "
         f"{med:.2f}x, worst {worst[0]:.2f}x ({worst[1]})")
    if worst[0] > limit:
        s += f", {worst[0] / limit:.2f}x over the target"
    return s


def targets(by_case, mem):
    lines = []
    cpu = lambda want: (lambda dev, dt, H, k1, k2, n: dev == "cpu" and want(k1, k2))  # noqa: E731
    kk = lambda k1, k2: k2 == k1  # noqa: E731
    k2k = lambda k1, k2: k2 == 2 * k1  # noqa: E731
    lines.append(_verdict("CPU BPTT(k,k) / nn.LSTM BPTT(k,k)", 1.0,
                          _ratios(by_case, cpu(kk), "nn_chunked")))
    lines.append(_verdict("CPU TBPTT(k,2k) / nn.LSTM re-running the window", 0.8,
                          _ratios(by_case, cpu(k2k), "nn_rerun")))
    lines.append(_verdict("CPU TBPTT(k,2k) / retained-graph recipe", 0.1,
                          _ratios(by_case, cpu(k2k), "retained")))
    for dt in ("f32", "bf16"):
        cu = lambda want, dt=dt: (  # noqa: E731
            lambda dev, d, H, k1, k2, n: dev == "cuda" and d == dt and H >= 256 and want(k1, k2))
        lines.append(_verdict(f"CUDA {dt} H>=256 BPTT(k,k) / cuDNN nn.LSTM BPTT(k,k)", 1.0,
                              _ratios(by_case, cu(kk), "nn_chunked")))
        lines.append(_verdict(f"CUDA {dt} H>=256 BPTT(k,k) / cuDNN BPTT(n,n) per step", 1.0,
                              _ratios(by_case, cu(kk), "nn_full")))
    for dt in ("f32", "bf16"):
        cu = lambda want, dt=dt: (  # noqa: E731
            lambda dev, d, H, k1, k2, n: dev == "cuda" and d == dt and want(k1, k2))
        lines.append(_verdict(f"CUDA {dt} TBPTT(k,2k) / cuDNN re-running the window", 0.7,
                              _ratios(by_case, cu(k2k), "nn_rerun")))
    # memory
    for (dev, dt, H, B, k1, k2), per_n in sorted(mem.items()):
        tag = f"{dev} {dt} H={H} B={B} TBPTT({k1},{k2})"
        what = "CUDA peak" if dev == "cuda" else "bytes held for backward"
        ns = sorted(n for n in per_n if "ours" in per_n[n])
        if len(ns) >= 2:
            a, b = per_n[ns[0]]["ours"], per_n[ns[-1]]["ours"]
            g = mem_metric(b) / mem_metric(a) - 1
            ok = "MET" if abs(g) <= 0.05 else "MISSED"
            s = (f"- Memory flat, {tag}: {what} at n={ns[-1]} vs n={ns[0]}: {g * 100:+.1f}% "
                 f"(target within 5%): **{ok}**")
            if dev == "cpu":
                ra, rb = a.get("rss_peak_increment_bytes"), b.get("rss_peak_increment_bytes")
                if ra and rb:
                    s += f"; fresh-process peak RSS increment {(rb / ra - 1) * 100:+.1f}%"
            lines.append(s)
        for n in sorted(per_n):
            o, f = per_n[n].get("ours"), per_n[n].get("nn_full")
            if o and f:
                r = mem_metric(o) / mem_metric(f)
                fac = r / (k2 / n)
                ok = "MET" if fac <= 2.0 else "MISSED"
                lines.append(f"- Memory ratio, {tag}, n={n}: ours/BPTT(n,n) {what} = {r:.4f}, "
                             f"k2/n = {k2 / n:.4f}, factor {fac:.2f} (≈ taken as ≤ 2x k2/n; "
                             f"below 1: fewer bytes per step than the peer): **{ok}**")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# plots (optional)

def _finish_plot(plt, fig, ax, path):
    """Grid, legend, save as PNG, close; returns the path written."""
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plots(by_case, mem, out_dir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["plots skipped: matplotlib is not installed (pip install matplotlib)"]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (dev, dt, H, B, k1, k2), per_n in sorted(mem.items()):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for v in ("ours", "nn_full", "nn_chunked", "nn_rerun", "retained"):
            pts = [(n, mem_metric(vs[v])) for n, vs in sorted(per_n.items()) if v in vs]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] / MiB for p in pts], "o-", label=NAMES[v])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("stream length n (steps)")
        ax.set_ylabel("CUDA peak allocated (MiB)" if dev == "cuda"
                      else "bytes held for backward (MiB)")
        ax.set_title(f"memory vs n: {dev} {dt}, H={H}, B={B}, k1={k1}, k2={k2}")
        written.append(_finish_plot(plt, fig, ax,
                                    out_dir / f"memory_vs_n_{dev}_{dt}_H{H}_B{B}_k{k1}_k2_{k2}.png"))
    groups = defaultdict(dict)  # (dev, dt, B, k1, k2 kind, n) -> H -> variants
    for key, vs in by_case.items():
        dev, dt, H, B, k1, k2, n, _ = key
        k2s = "k1" if k2 == k1 else ("n" if k2 == n else f"{k2 // k1}k1" if k2 % k1 == 0 else k2)
        groups[(dev, dt, B, k1, k2s, n)][H] = vs
    for (dev, dt, B, k1, k2s, n), per_h in sorted(groups.items(), key=str):
        if len(per_h) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for v in ("ours", "nn_full", "nn_chunked", "nn_rerun", "retained"):
            pts = []
            for H, vs in sorted(per_h.items()):
                if v == "ours":
                    m = ours_us(vs)[0]
                else:
                    m = vs[v]["us_per_step"] if v in vs else None
                if m is not None:
                    pts.append((H, m))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=NAMES[v])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("hidden size H")
        ax.set_ylabel("µs per timestep, forward + backward (median)")
        ax.set_title(f"time vs H: {dev} {dt}, B={B}, k1={k1}, k2={k2s}, n={n}")
        written.append(_finish_plot(plt, fig, ax,
                                    out_dir / f"time_vs_H_{dev}_{dt}_B{B}_k{k1}_k2_{k2s}.png"))
    return [f"plot: {p}" for p in written] or ["plots: nothing to draw (need >= 2 sizes)"]


# --------------------------------------------------------------------------------------------
# history modes

MODE_VARIANTS = ("ours", "ours_states", "ours_checkpoints")
MODE_NAMES = {"ours": "activations", "ours_states": "states", "ours_checkpoints": "checkpoints"}


def modes_by_case(rows):
    """(dev, dt, H, I, B, k1, k2) -> {"memory": {variant: r}, "speed": {variant: r}}."""
    by = defaultdict(lambda: {"memory": {}, "speed": {}})
    for r in rows:
        if r["kind"] in ("mode_memory", "mode_speed"):
            key = (r["device"], r["dtype"], r["H"], r.get("I", r["H"]), r["B"], r.get("k1"), r["k2"])
            if r["variant"] == "nn_full":  # BPTT over n = k2 steps: the same (H, I, k2) group
                key = (r["device"], r["dtype"], r["H"], r.get("I", r["H"]), r["B"], 32, r["k2"])
            by[key]["memory" if r["kind"] == "mode_memory" else "speed"][r["variant"]] = r
    return by


def modes_table(by):
    head = ["H", "I", "k2", "history bytes: activations", "states (x)", "checkpoints (x)",
            "peak RSS+ MiB: act. / states / ckpt.", "BPTT(n=k2) held MiB",
            "time: states / activations", "checkpoints / activations"]
    out = []
    for (dev, dt, H, I, B, k1, k2), group in sorted(by.items()):
        mem, speed = group["memory"], group["speed"]
        act = mem.get("ours", {}).get("history_nbytes")
        row = [H, I, k2, f"{act:,}" if act else "-"]
        for v in ("ours_states", "ours_checkpoints"):
            b = mem.get(v, {}).get("history_nbytes")
            row.append(f"{b:,} ({b / act:.3f})" if b and act else "-")
        rss = [mem.get(v, {}).get("rss_peak_increment_bytes") for v in MODE_VARIANTS]
        row.append(" / ".join(f"{x / MiB:.1f}" if x else "?" for x in rss))
        full = mem.get("nn_full", {}).get("held_bytes")
        row.append(f"{full / MiB:.2f}" if full else "-")
        for v in ("ours_states", "ours_checkpoints"):
            r = speed.get(v)
            row.append(fmt_ratio(1 / r["ratio"], 1 / r["ratio_q75"], 1 / r["ratio_q25"])
                       if r and r.get("ratio") else "-")
        out.append(row)
    return md_table(head, out)


def modes_targets(by):
    lines, states_bytes, ckpt_bytes, states_time, ckpt_time = [], [], [], [], []
    for (dev, dt, H, I, B, k1, k2), group in sorted(by.items()):
        mem, speed = group["memory"], group["speed"]
        tag = f"{dev}-{dt}-H{H}-I{I}-k2_{k2}"
        act = mem.get("ours", {}).get("history_nbytes")
        if act:
            if I == H and mem.get("ours_states", {}).get("history_nbytes"):
                states_bytes.append((mem["ours_states"]["history_nbytes"] / act, tag))
            if (I, H, k2) == (16, 128, 256) and mem.get("ours_checkpoints", {}).get("history_nbytes"):
                ckpt_bytes.append((mem["ours_checkpoints"]["history_nbytes"] / act, tag))
        if dev == "cpu":
            for v, into in (("ours_states", states_time), ("ours_checkpoints", ckpt_time)):
                r = speed.get(v)
                if r and r.get("ratio"):
                    into.append((1 / r["ratio"], tag))
    lines.append(_verdict("history \"states\" bytes / \"activations\" at I = H", 0.45, states_bytes))
    lines.append(_verdict("history \"checkpoints\" bytes / \"activations\" at I=16, H=128, k2=256",
                          0.12, ckpt_bytes))
    lines.append(_verdict("CPU time per update, \"states\" / \"activations\"", 1.3, states_time))
    lines.append(_verdict("CPU time per update, \"checkpoints\" / \"activations\"", 1.6, ckpt_time))
    return "\n".join(lines)


def modes_plot(by, plt, out_dir):
    """History bytes (BPTT(n=k2): bytes held for backward) against k2, per (H, I)."""
    groups = defaultdict(dict)
    for (dev, dt, H, I, B, k1, k2), group in by.items():
        groups[(dev, dt, H, I, B)][k2] = group["memory"]
    written = []
    for (dev, dt, H, I, B), per_k2 in sorted(groups.items()):
        if len(per_k2) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for v, label in list(MODE_NAMES.items()) + [("nn_full", "BPTT(n,n), n = k2")]:
            key = "held_bytes" if v == "nn_full" else "history_nbytes"
            pts = [(k2, m[v][key]) for k2, m in sorted(per_k2.items()) if m.get(v, {}).get(key)]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] / MiB for p in pts], "o-",
                        label=f'history "{label}"' if v != "nn_full" else label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("k2 (window, steps)")
        ax.set_ylabel("bytes kept for backward (MiB)")
        ax.set_title(f"memory vs k2: {dev} {dt}, H={H}, I={I}, B={B}")
        written.append(_finish_plot(plt, fig, ax, out_dir / f"modes_memory_vs_k2_{dev}_{dt}_H{H}_I{I}_B{B}.png"))
    return written


def oracle_lines(rows):
    out = []
    for r in rows:
        if r["kind"] == "oracle":
            reference = {"nn_rerun": "nn re-running the window"}.get(r.get("reference"),
                                                                      "retained-graph recipe")
            out.append(f"- {r['variant']} vs {reference}, {r['case']}: max rel err "
                       f"out {r['max_rel_err_out']:.1e}, x.grad {r['max_rel_err_x_grad']:.1e}, "
                       f"param grads {r['max_rel_err_param_grad']:.1e} (tol {r['tol']:.0e})")
    return out


# The CPU per-step targets (test_bench_cpu_step.py): ours / peer at most, by schedule and H.
CPU_STEP_TARGETS = {"BPTT(k,k)": lambda H: 1.2 if H <= 128 else 1.0,
                    "TBPTT(k,2k)": lambda H: 0.9 if H <= 128 else 0.8,
                    "BPTT(1,64)": lambda H: 0.7}
# The other cells' rows (issue 18): no targets were set for them (None): reported, not judged.
# They run the fused CPU layers as the LSTM does.
CPU_GRU_STEP_TARGETS = {"BPTT(k,k)": None, "TBPTT(k,2k)": None}
CPU_STEP_TABLES = {"lstm": ("nn.LSTM", CPU_STEP_TARGETS), "gru": ("nn.GRU", CPU_GRU_STEP_TARGETS),
                   "lstmp": ("nn.LSTM(proj_size)", CPU_GRU_STEP_TARGETS)}


def cpu_step_table(rows, cell="lstm"):
    """The CPU per-step table of `cell` ("lstm" or "gru"): one row per (threads, H), one column
    per schedule, the ratio ours / peer [IQR] with its target and verdict where the schedule has
    a target, and both times in us/step."""
    peer_name, targets = CPU_STEP_TABLES[cell]
    cells = defaultdict(dict)
    for r in rows:
        if r["kind"] == "cpu_step" and r.get("cell", "lstm") == cell:
            cells[(r["threads"], r["H"])][r["table_schedule"]] = r
    if not cells:
        return None
    head = ["threads", "H"] + [f"{s} ours/{peer_name if s == 'BPTT(k,k)' else 're-run'} "
                               f"(ours / peer µs/step)" for s in targets]
    body = []
    for (threads, H), by in sorted(cells.items()):
        line = [str(threads), str(H)]
        for sched, target in targets.items():
            r = by.get(sched)
            if r is None or r.get("ratio") is None:
                line.append("-")
                continue
            verdict = ""
            if target is not None:
                limit = target(H)
                verdict = f" ≤{limit:g}: {'met' if r['ratio'] <= limit else 'missed'}"
            line.append(f"{fmt_ratio(r['ratio'], r.get('ratio_q25'), r.get('ratio_q75'))}"
                        f"{verdict} ({fmt_us(r['ours_us_per_step'])} / "
                        f"{fmt_us(r['us_per_step'])})")
        body.append(line)
    return md_table(head, body)


# bfloat16 on the CPU (test_bench_cpu_step.py, test_cpu_bf16_step): ours bf16 / peer at most.
CPU_BF16_TARGETS = {"ours_f32": lambda H: 0.6 if H >= 256 else None,
                    "nn_autocast": lambda H: 1.0}
CPU_BF16_NAMES = {"ours_f32": "ours bf16 / ours f32", "nn_autocast": "ours bf16 / nn.LSTM autocast bf16"}


def cpu_bf16_table(rows):
    """One row per (threads, H): ours bf16 / ours float32 and ours bf16 / nn.LSTM under bf16
    autocast [IQR], target and verdict, µs per step; and the CPU's ISA."""
    cells, isa = defaultdict(dict), set()
    for r in rows:
        if r["kind"] == "cpu_bf16":
            cells[(r["threads"], r["H"])][r["variant"]] = r
            isa.add(f"{r.get('cpu')}: {r.get('isa')}")
    if not cells:
        return None
    head = ["threads", "H"] + [f"{CPU_BF16_NAMES[p]} (µs/step)" for p in CPU_BF16_TARGETS]
    body = []
    for (threads, H), by in sorted(cells.items()):
        line = [str(threads), str(H)]
        for peer, target in CPU_BF16_TARGETS.items():
            r = by.get(peer)
            if r is None:
                line.append("-")
                continue
            limit = target(H)
            verdict = "" if limit is None else (
                f" ≤{limit:g}: {'met' if r['ratio'] <= limit else 'missed'}")
            line.append(f"{fmt_ratio(r['ratio'], r.get('ratio_q25'), r.get('ratio_q75'))}{verdict} "
                        f"({fmt_us(r['ours_us_per_step'])} / {fmt_us(r['us_per_step'])})")
        body.append(line)
    return "CPU ISA: " + "; ".join(sorted(isa)) + "\n\n" + md_table(head, body)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="*", default=[str(REPO / "results" / "bench.json")])
    ap.add_argument("--out", default=None, help="folder for summary.md and PNGs "
                    "(default: the JSON's folder)")
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args(argv)
    paths = [Path(p) for p in a.json]
    for path in paths:
        if not path.exists():
            print(f"summary: {path} not found; run `python -m pytest bench/` first",
                  file=sys.stderr)
            return 1
    out_dir = Path(a.out) if a.out else paths[0].parent
    meta, merged, metas = None, {}, []
    for path in paths:
        m, rs = load(path)
        meta = meta or m
        metas.append((path, m))
        for r in rs:
            merged[(r["kind"], r.get("case"), r["variant"])] = r
    rows = list(merged.values())
    by_case, mem = speed_by_case(rows), mem_by_case(rows)

    parts = []
    for path, m in metas:
        parts += [f"{path.name}: {m.get('header')}",
                  f"mode: {m.get('mode', '?')}; command: `{m.get('command', '?')}`"]
    orc = oracle_lines(rows)
    if orc:
        parts += ["", "**Gradient oracle (fixed weights)**", ""] + orc
    if mem:
        parts += ["", memory_table(mem)]
    parts += ["", "**Targets**", "", targets(by_case, mem)]
    modes = modes_by_case(rows)
    if modes:
        parts += ["", "**History modes** (history bytes: exact, `state.history_nbytes`, ratio to "
                  "\"activations\"; peak RSS: a fresh process's, above its size after set-up; "
                  "time: per update, mode / activations, ratio of medians of interleaved runs "
                  "[IQR])", "", modes_table(modes), "", modes_targets(modes)]
    if not a.no_plots:
        parts += [""] + plots(by_case, mem, out_dir)
        if modes:
            import matplotlib.pyplot as plt
            parts += [f"plot: {p}" for p in modes_plot(modes, plt, out_dir)]
    cpu_step = cpu_step_table(rows)
    if cpu_step:
        parts += ["", "**CPU per step** (float32, B=32, I=H, 64-step chunks, forward + backward; "
                  "ratio = ours / peer, ratio of medians of interleaved runs [IQR]; target and "
                  "verdict; ours / peer µs per step)", "", cpu_step]
    # The other cells' tables: no targets were set for them (reported, not judged).
    for cell, title in (("gru", "CPU GRU per step** (TruncatedGRU against nn.GRU"),
                        ("lstmp", "CPU LSTM with projections per step** (TruncatedLSTM(proj_size=H/2) "
                                  "against nn.LSTM(proj_size=H/2)")):
        table = cpu_step_table(rows, cell)
        if table:
            parts += ["", f"**{title}; float32, B=32, I=H, 64-step chunks, forward + backward; "
                      "ratio = ours / peer, ratio of medians of interleaved runs [IQR]; no targets "
                      "(the fused CPU layers, as the LSTM's): reported, not judged; ours / peer µs "
                      "per step)", "", table]
    cpu_bf16 = cpu_bf16_table(rows)
    if cpu_bf16:
        parts += ["", "**CPU bfloat16 per step** (B=32, I=H, 64-step chunks, BPTT(k,k), forward + "
                  "backward; ours bf16 module against ours float32 and nn.LSTM under "
                  "torch.autocast(\"cpu\", bfloat16); ratio of medians of interleaved runs [IQR]; "
                  "target and verdict; ours / peer µs per step)", "", cpu_bf16]
    parts += ["", "**Time per timestep, forward + backward over the stream (median ± half "
              "IQR, µs); ratio = ours / peer, ratio of medians of interleaved runs "
              "[IQR of per-round ratios]; < 1 means ours is faster**", ""]
    parts += [speed_table(by_case) if by_case else "(no speed rows)"]
    text = "\n".join(parts)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
