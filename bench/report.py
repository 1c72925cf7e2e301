#!/usr/bin/python3
"""Renders ackpt's benchmark results (JSON from bench/*) as docs/BENCHMARKS.md
plus PNG plots. Run by scripts/run-benchmarks.sh; needs Debian's
python3-matplotlib.

  report.py --collect-machine OUT.json [--scratch DIR] [--build-dir DIR]
  report.py --results DIR --out docs/BENCHMARKS.md --plots docs/bench
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys

from report_common import median_bars, mm, pct, table, verdict
import report_gbench  # Google Benchmark JSON of the stall, throughput and compression drivers
from report_load import load_section  # the "Load into tensors" section (bench/load.cc)
from report_distributed import distributed_section  # "Many ranks" (bench/distributed.cc)


# ---------------------------------------------------------------- machine ----
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001 - best effort facts
        return ""


def collect_machine(out, scratch, build_dir):
    m = {}
    m["date_utc"] = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")
    m["nproc"] = os.cpu_count()
    cpu = ""
    flags = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    m["cpu_model"] = cpu
    m["hypervisor"] = " hypervisor" in flags
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                m["mem_total_gib"] = round(int(line.split()[1]) / 1048576, 1)
    m["kernel"] = platform.release()
    osr = sh(". /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\"")
    m["os"] = osr
    os.makedirs(scratch, exist_ok=True)
    df = sh(f"df -T -h '{scratch}' | tail -1").split()
    if len(df) >= 3:
        m["scratch_device"], m["scratch_fs"], m["scratch_size"] = df[0], df[1], df[2]
    # Mount options of the file system holding the scratch directory.
    best = ("", "")
    real = os.path.realpath(scratch)
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/")):
                if len(parts[1]) >= len(best[0]):
                    best = (parts[1], parts[3])
    m["scratch_dir"] = scratch
    m["scratch_mount"], m["scratch_mount_options"] = best
    dev = os.path.basename(m.get("scratch_device", ""))
    rot = sh(f"cat /sys/block/{dev}/queue/rotational 2>/dev/null")
    m["scratch_rotational"] = rot
    cxx = ""
    cache = os.path.join(build_dir, "CMakeCache.txt")
    if os.path.exists(cache):
        with open(cache) as f:
            for line in f:
                if line.startswith("CMAKE_CXX_COMPILER:"):
                    cxx = line.split("=", 1)[1].strip()
    m["compiler"] = sh(f"'{cxx or 'c++'}' --version | head -1")
    m["libtorch"] = sh("dpkg-query -W -f='${Version}' libtorch-dev 2>/dev/null")
    m["libzstd"] = sh("dpkg-query -W -f='${Version}' libzstd-dev 2>/dev/null")
    m["zstd_cli"] = sh("zstd --version 2>/dev/null")
    m["libbenchmark"] = sh("dpkg-query -W -f='${Version}' libbenchmark-dev 2>/dev/null")
    m["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    m["busy_processes_start"] = sh("ps -eo pcpu,comm --sort=-pcpu --no-headers | head -4")
    with open(out, "w") as f:
        json.dump(m, f, indent=2)


# --------------------------------------------------------------- helpers ----
def load(results, name):
    p = os.path.join(results, name + ".json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError:
            return None


def ms(x):
    return f"{x * 1e3:.1f}"


class Plots:
    def __init__(self, out_dir, rel):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.dir = out_dir
        self.rel = rel
        os.makedirs(out_dir, exist_ok=True)
        plt.rcParams.update({"font.size": 9, "figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3})

    def save(self, fig, name):
        path = os.path.join(self.dir, name)
        fig.tight_layout()
        fig.savefig(path)
        self.plt.close(fig)
        return f"![{name}]({self.rel}/{name})\n"


# ----------------------------------------------------------------- stall ----
def stall_section(j, plots, targets, headline):
    out = ["## 1. Stall: time inside `save()`\n\n"]
    out.append(
        "A transformer-shaped state (embedding, attention and MLP matrices, biases, layer norms) plus Adam's "
        "`exp_avg` / `exp_avg_sq` for every parameter, in fp32 and bf16. "
        + ("`ackpt_bench_stall` runs on Google Benchmark: one benchmark per method and state, each repetition one "
           "operation timed by hand, repetitions of all of them randomly interleaved, so drift in machine load hits "
           "every method alike. " if j.get("gbench") else
           "Each repetition runs every method once, in the same order, so drift in machine load hits all of them. ")
        + "*ackpt save() stall* is the time inside "
        "`DefaultCheckpointer::save()` (the background write is awaited outside the timed region); *end to end* "
        "is `save()` entry to durable file from `SaveStats`; *force* is `save(..., force = true)`. ackpt writes "
        "zstd level 1 (the default), the torch baselines write uncompressed bytes. memcpy copies the same "
        "tensors into a pre-faulted buffer, with 1 thread and with all hardware threads (ackpt's snapshot "
        f"uses up to 4 threads). Times in ms: median (min–max) over {j['runs'][0]['reps'] if j['runs'] else '?'} "
        "repetitions.\n\n"
    )
    keys = [m["key"] for m in j["methods"]]
    labels = {m["key"]: m["label"] for m in j["methods"]}
    rows = []
    for r in j["runs"]:
        s = r["seconds"]
        gib = r["bytes"] / 2**30
        for k in keys:
            if k not in s or not s[k].get("n"):
                continue
            rows.append(
                [
                    f"{r['bytes'] / 2**20:.0f} MiB {r['dtype']}" if k == keys[0] else "",
                    labels[k],
                    mm(s[k]),
                    f"{s[k]['median'] * 1e3 / gib:.0f}",
                    f"{s[k]['median'] / s['memcpy_1t']['median']:.2f}",
                    f"{s[k]['median'] / s['torch_save_fsync']['median']:.3f}",
                ]
            )
    out.append(
        table(["state", "method", "ms: median (min–max)", "ms/GiB", "× memcpy 1 thread", "× torch::save+fsync"], rows)
    )
    # Targets.
    trows = []
    for r in j["runs"]:
        s = r["seconds"]
        floor = min(s["memcpy_1t"]["median"], s["memcpy_all"]["median"])
        r1 = s["ackpt_stall"]["median"] / floor
        r2 = r["ratios"]["stall_over_torch_save"]
        trows.append(
            [f"{r['bytes'] / 2**20:.0f} MiB {r['dtype']}", f"{ms(s['ackpt_stall']['median'])} ms", f"{ms(floor)} ms",
             f"{r1:.2f} ({verdict(r1 <= 1.3)})", f"{ms(s['torch_save_fsync']['median'])} ms",
             f"{r2:.3f} ({verdict(r2 <= 0.1)})", f"{floor / s['torch_save_fsync']['median']:.3f}"]
        )
        state = f"{r['bytes'] / 2**20:.0f} MiB {r['dtype']}"
        targets.append({"group": "Stall ≤ 1.3 × memcpy of the same bytes", "case": state, "value": f"{r1:.2f} ×",
                        "met": r1 <= 1.3, "gap": f"{(r1 / 1.3 - 1) * 100:.0f} % over", "see": "§1"})
        targets.append({"group": "Stall ≤ 0.1 × `torch::save` + fsync", "case": state, "value": f"{r2:.3f} ×",
                        "met": r2 <= 0.1, "gap": f"{(r2 / 0.1 - 1) * 100:.0f} % over", "see": "§1"})
    out.append("\nTargets (ratios of medians; the memcpy floor is the faster of the 1-thread and all-thread copies):\n\n")
    out.append(
        table(["state", "ackpt stall", "memcpy floor", "stall / memcpy ≤ 1.3", "torch::save+fsync",
               "stall / torch::save ≤ 0.1", "memcpy floor / torch::save"], trows)
    )
    orows = []
    for r in j["runs"]:
        s = r["seconds"]
        if "ackpt_overlap_stall" not in s or not s["ackpt_overlap_stall"].get("n"):
            continue
        floor = min(s["memcpy_1t"]["median"], s["memcpy_all"]["median"])
        ratio = r["ratios"]["overlap_stall_over_memcpy"]
        state = f"{r['bytes'] / 2**20:.0f} MiB {r['dtype']}"
        orows.append([state, mm(s["ackpt_overlap_stall"], 1e3, "{:.2f}"), f"{ratio:.3f} ({verdict(ratio <= 0.1)})",
                      f"{r['overlap_compute_seconds'] * 1e3:.1f}", mm(s["ackpt_overlap_copy"]),
                      f"{r['overlap_expected_fence_seconds'] * 1e3:.1f}", mm(s["ackpt_overlap_fence"]),
                      f"{ms(floor)}", mm(s["ackpt_stall"])])
        targets.append({"group": "Overlapped snapshot: time inside `save()` ≤ 0.1 × memcpy", "case": state,
                        "value": f"{ratio:.3f} ×", "met": ratio <= 0.1, "gap": f"{(ratio / 0.1 - 1) * 100:.0f} % over",
                        "see": "§1"})
    if orows:
        out.append(
            "\n**Overlapped snapshot** (`overlap_snapshot = true`, same run): `save()` only records each tensor's "
            "version counter and returns; the copy runs on the `ackpt-copy` threads while the caller computes (a busy "
            "loop on the calling thread standing in for forward/backward, a fixed fraction of one all-threads memcpy "
            "of the state), then waits at the fence (`wait_snapshot()`). Expected fence ≈ max(0, copy − compute); "
            "the copy competes with the compute for the same 2 cores, so it runs slower than inside `save()`. "
            "Times in ms, median (min–max):\n\n")
        out.append(table(["state", "inside save()", "save() / memcpy ≤ 0.1", "compute between save and fence",
                          "background copy", "expected fence", "fence", "memcpy floor", "non-overlapped save() (stall)"],
                         orows))
    big = max(j["runs"], key=lambda r: (r["bytes"], r["dtype"] == "fp32")) if j["runs"] else None
    if big:
        s = big["seconds"]
        headline.append(
            f"**Stall** ({big['bytes'] / 2**20:.0f} MiB {big['dtype']} state): `save()` returns in "
            f"{ms(s['ackpt_stall']['median'])} ms (min–max {ms(s['ackpt_stall']['min'])}–{ms(s['ackpt_stall']['max'])}), "
            f"{s['ackpt_stall']['median'] / min(s['memcpy_1t']['median'], s['memcpy_all']['median']):.2f} × one memcpy of the "
            f"same bytes and {big['ratios']['stall_over_torch_save']:.3f} × `torch::save` + fsync "
            f"({ms(s['torch_save_fsync']['median'])} ms)."
        )
    # Plot: ms per GiB per method, per state, log scale.
    if plots and j["runs"]:
        plt = plots.plt
        fig, ax = plt.subplots(figsize=(11, 4.2))
        n = len(j["runs"])
        width = 0.8 / len(keys)
        for i, k in enumerate(keys):
            xs, ys, lo, hi = [], [], [], []
            for x, r in enumerate(j["runs"]):
                s = r["seconds"].get(k)
                if not s or not s.get("n"):
                    continue
                gib = r["bytes"] / 2**30
                xs.append(x + (i - len(keys) / 2 + 0.5) * width)
                ys.append(s["median"] * 1e3 / gib)
                lo.append((s["median"] - s["min"]) * 1e3 / gib)
                hi.append((s["max"] - s["median"]) * 1e3 / gib)
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=labels[k])
        ax.set_xticks(range(n))
        ax.set_xticklabels([f"{r['bytes'] / 2**20:.0f} MiB {r['dtype']}" for r in j["runs"]])
        ax.set_yscale("log")
        ax.set_ylabel("ms per GiB (log; median, bars min–max)")
        ax.set_title("Time the trainer waits per checkpoint")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        out.append("\n" + plots.save(fig, "stall.png"))
    return "".join(out)


# -------------------------------------------------------------- overhead ----
MODE_LABEL = {"ackpt": "ackpt save() (async, defaults: adaptive zstd -1)",
              "ackpt_always": "ackpt save() (async, zstd -1 on every frame)", "ackpt_none": "ackpt save() (async, no compression)",
              "ackpt_auto": "ackpt save() (async, kAuto)",
              "ackpt_blocking": "ackpt save(force=true)",
              "ackpt_low": "ackpt, writers at nice 19 (zstd -1)",
              "ackpt_idle": "ackpt, writers SCHED_IDLE (zstd -1)",
              "ackpt_overlap": "ackpt, overlapped snapshot + fence (zstd -1)",
              "torch_save": "torch::save + fsync (sync)"}
MODE_SHORT = {"ackpt": "default (adaptive zstd -1)", "ackpt_always": "zstd -1 always", "ackpt_none": "no compression", "ackpt_auto": "kAuto", "ackpt_low": "zstd -1, nice 19",
              "ackpt_idle": "zstd -1, SCHED_IDLE", "ackpt_overlap": "zstd -1, overlapped"}


def overhead_section(j, plots, targets, headline):
    out = ["## 2. Training overhead\n\n"]
    out.append(
        f"A synthetic training loop: each step is a fixed amount of register-only compute, calibrated before the "
        f"run to {j['step_ms']:.0f} ms on one thread, on *compute threads* threads, followed by an in-place update "
        f"of one tensor. The work is fixed (not a wall-clock spin), so CPU time the background writers take from "
        f"the trainer shows up as a slower loop. State: {j['bytes'] / 2**20:.0f} MiB fp32 (model + Adam). "
        f"{j['steps']} steps; a save at steps 0, K, 2K, …, each followed by K steps, so an asynchronous save has a "
        f"whole interval to finish; waiting after the loop for the last save to become durable is counted (*drain*). "
        f"For every K and repetition the baseline (no checkpointing) runs next to the checkpointing runs (order "
        f"rotated), and each overhead sample is (loop + drain) / that baseline − 1, because load on a shared machine "
        f"drifts over seconds. Median (min–max) over {j['reps']} repetitions. *async, no compression* is the same "
        f"checkpointer with `compression = kNone`: almost no background CPU.\n\n"
    )
    for c in j["configs"]:
        wt = c["writer_threads"] or f"default ({j['hardware_concurrency']})"
        out.append(f"### compute threads {c['compute_threads']}, ackpt writer threads {wt}\n\n")
        out.append(f"Baseline loop (all repetitions and K): {mm(c['baseline'], 1, '{:.3f}')} s.\n\n")
        rows = []
        for p in c["points"]:
            has_floor = "cpu_floor" in p and p["mode"].startswith("ackpt")
            rows.append(
                [p["k"], f"{p['interval_s']:.2f}", MODE_LABEL.get(p["mode"], p["mode"]),
                 f"{pct(p['overhead'])} ({pct(p['overhead_min'])} – {pct(p['overhead_max'])})",
                 pct(p["cpu_floor"]) if has_floor else "",
                 f"{p['over_floor'] * 100:+.1f} points" if has_floor else "",
                 f"{p['bg_cpu_seconds_per_save']['median'] * 1e3:.0f}" if has_floor else "",
                 f"{p['stall_per_save_seconds']['median'] * 1e3:.1f}",
                 f"{p['drain_seconds']['median'] * 1e3:.0f}" if p["mode"].startswith("ackpt") else ""]
            )
        out.append(table(["K (steps)", "every (s)", "mode", "overhead: median (min – max)", "CPU-time floor",
                          "overhead − floor", "background CPU ms per save", "ms inside save (+ fence) per save",
                          "drain after loop (ms)"], rows))
        if any("cpu_floor" in p for p in c["points"]):
            out.append(
                "\n*CPU-time floor*: what the bytes cost when no CPU is idle — the CPU seconds of ackpt's background "
                "threads (user + system time of the `ackpt-writer` threads, plus `ackpt-copy` for the overlapped mode, "
                "from `/proc/self/task/*/stat`) over the baseline's wall time × hardware threads, plus the time spent "
                "inside `save()` and at the fence over the baseline's wall time. Overhead above the floor is what the "
                "engine wastes; at the floor it is the price of the bytes. With idle cores (compute on fewer threads "
                "than cores) the background work can hide below the floor; with idle priority it yields to the "
                "trainer, so it can also hide below it when every core is busy.\n")
            for p in c["points"]:
                if p["mode"] == "ackpt" and "cpu_floor" in p and c["compute_threads"] >= j["hardware_concurrency"]:
                    ok = p["overhead"] <= p["cpu_floor"] + 0.01
                    targets.append({"group": "Overhead ≤ CPU-time floor + 1 point (normal priority, compute on every core)",
                                    "case": f"every {p['interval_s']:.2f} s", "value": f"{pct(p['overhead'])} vs floor "
                                    f"{pct(p['cpu_floor'])}", "met": ok,
                                    "gap": f"{(p['overhead'] - p['cpu_floor'] - 0.01) * 100:.1f} points over", "see": "§2"})
        cf = c["checkfreq"]
        out.append("\n**CheckFreq question** — the highest checkpoint frequency with overhead ≤ 3.5 %:\n\n")
        crow = []
        for mode, v in cf.items():
            k = v["smallest_measured_k_under_3_5pct"]
            fit_k = max(1.0, v["fitted_k_for_3_5pct"])
            crow.append(
                [MODE_LABEL.get(mode, mode), f"every {k} steps ({k * j['step_ms'] / 1e3:.2f} s)" if k else "none of the measured K",
                 f"{v['cost_per_save_seconds'] * 1e3:.1f} ms", f"every {fit_k:.1f} steps ({fit_k * j['step_ms'] / 1e3:.2f} s)"]
            )
        out.append(table(["mode", "measured: smallest K with overhead ≤ 3.5 %", "cost per save at the largest K",
                          "estimate: ≤ 3.5 % from (log-log interpolation, or overhead ∝ 1/K beyond the sweep)"], crow))
        # Target: at the least frequent K where torch::save still costs >= 30 %
        # (the point most favourable to the target), every ackpt mode.
        tps = c.get("target_points", [])
        if tps:
            kbest = max(t["k"] for t in tps)
            at = [t for t in tps if t["k"] == kbest]
            met_any = any(t["met"] for t in tps)
            desc = "; ".join(
                f"K={t['k']}: torch::save {pct(t['sync_overhead'], 0)}, {MODE_LABEL.get(t.get('mode', 'ackpt'), 'ackpt')} "
                f"{pct(t['ackpt_overhead'])}" for t in tps)
            out.append(f"\nTarget (ackpt ≤ 3 % where synchronous `torch::save` costs ≥ 30 %): {verdict(met_any)} — {desc}.\n\n")
            for t in at:
                targets.append(
                    {"group": "Overhead ≤ 3 % where synchronous saving costs ≥ 30 %",
                     "case": f"compute {c['compute_threads']} / writers {c['writer_threads'] or 'default'}, every "
                             f"{kbest * j['step_ms'] / 1e3:.2f} s (sync {pct(t['sync_overhead'], 0)}), "
                             f"{MODE_SHORT.get(t.get('mode', 'ackpt'), t.get('mode'))}",
                     "value": pct(t["ackpt_overhead"]), "met": t["met"],
                     "gap": f"{(t['ackpt_overhead'] - 0.03) * 100:.1f} points over", "see": "§2"})
        else:
            out.append("\nTarget: no measured K made synchronous saving cost ≥ 30 %, so the target is not evaluated here.\n\n")
        if c is j["configs"][0] and tps:
            kbest = max(t["k"] for t in tps)
            at = {t.get("mode", "ackpt"): t for t in tps if t["k"] == kbest}
            parts = [f"{pct(v['ackpt_overhead'])} ({'zstd -1, the default' if m == 'ackpt' else MODE_SHORT.get(m, m)})"
                     for m, v in sorted(at.items())]
            headline.append(
                f"**Overhead** ({j['bytes'] / 2**20:.0f} MiB state, {j['step_ms']:.0f} ms steps on "
                f"{c['compute_threads']} thread(s), a checkpoint every {kbest * j['step_ms'] / 1e3:.2f} s): "
                f"`torch::save` + fsync costs {pct(next(iter(at.values()))['sync_overhead'], 0)} of training time, ackpt "
                + " and ".join(parts) + ".")
    d = j.get("demo_model", {})
    out.append("### The demo model (trainer layer, `examples/train_demo.cc`)\n\n")
    if d.get("status") == "ok":
        out.append(
            f"`ackpt_demo` (character-level transformer, default `small` size) for {d['steps']} steps, one run each: no "
            "checkpointing (`--checkpoint-every` beyond the run), asynchronous saves, and `--sync` (ackpt's blocking "
            "save). Loop time = steps × the demo's ms/step − its final forced save. The demo runs its 2-batch "
            "validation pass at every checkpoint, so the overheads against *none* include that pass: they are upper "
            "bounds; the *stall share* column (time inside `save()` / training time, from the demo's summary) is the "
            "direct cost for the asynchronous mode.\n\n"
        )
        rows = [["–", "none", f"{d['none']['loop_seconds']:.2f}", f"{d['none']['ms_per_step']:.0f}", "–", "–", "–"]]
        for p in d["points"]:
            rows.append([p["k"], "ackpt async" if p["mode"] == "ackpt" else "ackpt --sync",
                         f"{p['loop_seconds']:.2f}", f"{p['ms_per_step']:.0f}", pct(p["overhead"]),
                         f"{p['stall_mean_ms']:.1f}", pct(p["periodic_stall_pct"])])
        out.append(table(["K", "mode", "loop (s)", "ms/step", "overhead vs none (incl. validation)",
                          "stall per save (ms)", "stall share"], rows) + "\n")
    else:
        out.append(f"Pending: {d.get('why', d.get('status', 'not run'))}.\n\n")
    if plots and j["configs"]:
        plt = plots.plt
        fig, axes = plt.subplots(1, len(j["configs"]), figsize=(4.6 * len(j["configs"]), 3.8), squeeze=False)
        for ax, c in zip(axes[0], j["configs"]):
            by = {}
            for p in c["points"]:
                by.setdefault(p["mode"], []).append(p)
            for mode, ps in by.items():
                ps.sort(key=lambda p: p["interval_s"])
                xs = [p["interval_s"] for p in ps]
                ys = [max(p["overhead"] * 100, 0.05) for p in ps]
                lo = [max(0, (p["overhead"] - p["overhead_min"]) * 100) for p in ps]
                hi = [max(0, (p["overhead_max"] - p["overhead"]) * 100) for p in ps]
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=2, label=MODE_LABEL.get(mode, mode))
            ax.axhline(3.0, color="green", ls="--", lw=0.8, label="3 % target")
            ax.axhline(30.0, color="red", ls=":", lw=0.8, label="30 %")
            ax.set_xscale("log")
            ax.set_yscale("log")
            import matplotlib.ticker as ticker

            ticks = sorted({p["interval_s"] for p in c["points"]})
            ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
            ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            ax.set_xlabel("seconds between checkpoints")
            ax.set_ylabel("overhead % (median; bars min–max)")
            wt = c["writer_threads"] or "default"
            ax.set_title(f"compute {c['compute_threads']} thr, writers {wt}")
            ax.legend(fontsize=7)
        out.append(plots.save(fig, "overhead.png"))
    return "".join(out)


# ------------------------------------------------------------ throughput ----
def throughput_section(j, plots, targets, headline, micro):
    out = ["## 3. Background throughput and load\n\n"]
    r = j["results"]
    mib = j["logical_bytes"] / 2**20
    out.append(
        f"One {j['bytes'] / 2**20:.0f} MiB {j['dtype']} model-like state ({j['tensors']} tensors; {mib:.0f} MiB as a "
        f"safetensors stream). GB/s = logical (uncompressed) bytes / seconds, 1 GB = 10⁹ bytes; median (min–max) over "
        f"{j['reps']} repetitions, "
        + ("randomly interleaved by Google Benchmark (`ackpt_bench_throughput`)." if j.get("gbench") else "interleaved.")
        + " *ackpt persist* is the background part of a `DefaultCheckpointer` save "
        "with `writer_threads = t` (`end_to_end_seconds − stall_seconds` from `SaveStats`: hash, compress, write, "
        "fsync, rename, directory fsync). *raw write + fsync* writes the plain safetensors stream of the same state "
        "with write(2) in 8 MiB calls and one fdatasync; *+ sync_file_range* does the same but starts writeback after "
        "every 8 MiB; *O_DIRECT* writes it from an aligned buffer. *zstd lib 1 thread* is this process compressing the "
        "same bytes in 4 MiB frames with libzstd on one thread (the `threads × zstd speed` anchor). *zstd CLI* is "
        "`zstd -L -Tn` on the plain file (in page cache), output fsynced, process start included.\n\n"
    )

    def g(k):
        return r[k]["gbps"] if k in r else None

    def cell(k):
        x = g(k)
        if not x:
            return "–"
        return f"{x['median']:.3f} ({x['min']:.3f}–{x['max']:.3f})"

    rows = []
    for lv in j["levels"]:
        for t in j["threads"]:
            k = f"persist_{'none' if lv == 'none' else 'zstd' + lv}_t{t}"
            ratio = r.get(k, {}).get("ratio")
            rows.append([f"ackpt persist, {'no compression' if lv == 'none' else 'zstd -' + lv}, {t} writer thread(s)",
                         cell(k), f"{ratio:.4f}" if ratio else ""])
    for k, label in [("raw_write_fsync", "raw write + fsync"), ("raw_write_kick_fsync", "raw write + sync_file_range + fsync"),
                     ("raw_write_odirect", "raw O_DIRECT write + fsync")]:
        rows.append([label, cell(k), ""])
    for lv in j["levels"]:
        if lv == "none":
            continue
        rows.append([f"zstd -{lv}, libzstd in-process, 1 thread (compression only)", cell(f"zstd_lib_1t_l{lv}"),
                     f"{r.get(f'zstd_lib_1t_l{lv}', {}).get('ratio', 0):.4f}"])
        for k in sorted(x for x in r if x.startswith(f"zstd_cli_l{lv}_t")):
            rows.append([f"zstd -{lv} -T{k.rsplit('_t', 1)[1]} CLI + fsync", cell(k), f"{r[k].get('ratio', 0):.4f}"])
    out.append(table(["what", "GB/s: median (min–max)", "ratio"], rows))

    out.append("\n**Load** (`ackpt::ReadStateDict`, checksums verified, `threads = t`) against a raw pread of the plain "
               "file with the same threads into a pre-faulted buffer. *cold*: the file was fsynced and dropped from the "
               f"page cache first ({j['page_cache_drop']}; on a VM the host may still cache it); *hot*: "
               "in page cache. ackpt allocates fresh tensors, so its figures include first-touch page faults; the "
               "*fresh memory* column is the same raw read into newly mapped memory, which pays them too. The target "
               "is judged against the pre-faulted raw read (the strict anchor). GB/s of logical bytes.\n\n")
    rows = []
    loads = sorted({k.split("_")[1] for k in r if k.startswith("load_")})
    for temp in ("cold", "hot"):
        for t in j["threads"]:
            row = [f"{temp}, {t} thread(s)", cell(f"raw_read_{temp}_t{t}"), cell(f"raw_read_fresh_{temp}_t{t}")]
            for f in loads:
                row.append(cell(f"load_{f}_{temp}_t{t}"))
            rows.append(row)
    out.append(table(["", "raw read (pre-faulted buffer)", "raw read into fresh memory"] + [f"ackpt load: {f}" for f in loads], rows))

    # Targets.
    trows = []
    tmax = max(j["threads"])
    for t in j["targets"]:
        w = t["what"]
        if w.startswith("persist"):
            trows.append([w, f"{t['value_gbps']:.3f} GB/s", f"{t['anchor_gbps']:.3f} GB/s ({t['anchor']})",
                          f"{t['ratio']:.2f} ({verdict(t['met'])})"])
            targets.append({"group": "Persist ≥ 0.8 × min(raw disk (best raw method), threads × 1-thread zstd)", "case": w[8:],
                            "value": f"{t['ratio']:.2f} ×", "met": t["met"],
                            "gap": f"{(1 - t['ratio'] / 0.8) * 100:.0f} % short", "see": "§3"})
        elif w.startswith("size"):
            trows.append([w, f"{t['value'] * 100:+.3f} %", "zstd CLI, same level, same bytes", verdict(t["met"])])
            targets.append({"group": "Compressed size within 1 % of `zstd` at the same level", "case": w.split()[1],
                            "value": f"{t['value'] * 100:+.3f} %", "met": t["met"], "gap": "", "see": "§3"})
        elif w.startswith("load") and (not w.endswith(f"_t{tmax}") or "zstd3" in w):
            continue  # judged at the default thread count (all cores), files none and zstd -1; all rows in the table above
        elif w.startswith("load"):
            trows.append([w, f"{t['value_gbps']:.3f} GB/s", f"{t['anchor_gbps']:.3f} GB/s (raw read)",
                          f"{t['ratio']:.2f} ({verdict(t['met'])})"])
            targets.append({"group": "Load ≥ 0.8 × raw read bandwidth", "case": w[5:], "value": f"{t['ratio']:.2f} ×",
                            "met": t["met"], "gap": f"{(1 - t['ratio'] / 0.8) * 100:.0f} % short", "see": "§3"})
    out.append("\nTargets (ratios of medians):\n\n")
    out.append(table(["what", "measured", "anchor", "ratio (target ≥ 0.8)"], trows))
    tmax = max(j["threads"])
    pz = g(f"persist_zstd1_t{tmax}")
    pn = g(f"persist_none_t{tmax}")
    rw = g("raw_write_fsync")
    rk = g("raw_write_kick_fsync")
    zl = g("zstd_lib_1t_l1")
    lz = g(f"load_zstd1_hot_t{tmax}")
    ln = g(f"load_none_hot_t{tmax}")
    if pz and rw and zl:
        headline.append(
            f"**Persist** ({tmax} writer threads): {pz['median']:.2f} GB/s with zstd -1 and {pn['median']:.2f} GB/s "
            f"uncompressed, next to {rw['median']:.2f} GB/s raw write + fsync"
            + (f" ({rk['median']:.2f} GB/s when writeback starts early with sync_file_range)" if rk else "")
            + f", {zl['median']:.2f} GB/s single-thread zstd -1 and "
            f"{g(f'zstd_cli_l1_t{tmax}')['median'] if g(f'zstd_cli_l1_t{tmax}') else 0:.2f} GB/s for `zstd -1 -T{tmax}` + fsync on the same bytes. **Load** (hot, {tmax} threads): {ln['median']:.2f} GB/s uncompressed, "
            f"{lz['median']:.2f} GB/s zstd.")
    if plots:
        plt = plots.plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        ax = axes[0]
        keys = [k for k in r if k.startswith(("persist_", "raw_write", "zstd_lib", "zstd_cli"))]
        keys.sort(key=lambda k: (k.split("_")[0] != "persist", k))
        colors = ["tab:blue" if k.startswith("persist") else "tab:gray" if k.startswith("raw") else "tab:orange"
                  for k in keys]
        median_bars(ax, [r[k]["gbps"] for k in keys], keys, colors, log=False,
                    xlabel="GB/s of logical bytes (median; bars min–max)",
                    title="Persist (blue) vs raw disk (gray) and zstd (orange)")
        ax = axes[1]
        keys = sorted(k for k in r if k.startswith(("load_", "raw_read")))
        colors = ["tab:blue" if k.startswith("load") else "tab:gray" for k in keys]
        median_bars(ax, [r[k]["gbps"] for k in keys], keys, colors,
                    xlabel="GB/s (log; median, bars min–max)", title="Load (blue) vs raw read (gray)")
        out.append("\n" + plots.save(fig, "throughput.png"))
    return "".join(out)


# ----------------------------------------------------------- compression ----
def compression_section(j, plots, targets, headline):
    out = ["## 4. Compression ratio on real tensors\n\n"]
    out.append(
        f"*trained*: {j['model']}, trained inside the benchmark for {j['train_steps']} steps on a synthetic "
        f"teacher–student regression task (loss {j['loss_first']:.4f} → {j['loss_last']:.4f}); its weights and Adam "
        "state, together and apart. (The trainer layer's demo model is measured for overhead in §2; its checkpoint "
        "ratio is printed by `ackpt_demo` itself.) *randn*: N(0, 0.02). *synthetic*: the model-like state the other "
        "benchmarks save. bf16 rows are the same tensors converted. ratio = plain safetensors bytes / file bytes; "
        "MB/s on one thread, no fsync, median of "
        f"{j['reps']}"
        + (" randomly interleaved Google Benchmark repetitions (`ackpt_bench_compression`)" if j.get("gbench") else "")
        + "; zstd CLI `-L -T1` on the plain safetensors file of the same bytes (process start included). "
        "*byte-grouped* is the ratio plain zstd reaches after each tensor's bytes are split into planes by byte "
        "position — a reference point; ackpt's own byte-grouped codec (`kZstdByteGrouped`) is measured in §4b.\n\n"
    )
    rows = []
    for row in j["rows"]:
        rows.append([row["data"], row["dtype"], f"{row['bytes'] / 2**20:.1f}", row["level"], f"{row['ackpt_ratio']:.4f}",
                     f"{row.get('cli_ratio', 0):.4f}", f"{row.get('size_vs_cli', 0) * 100:+.3f} %",
                     f"{row['ackpt_mbps']:.0f}", f"{row.get('cli_mbps', 0):.0f}", f"{row['bytegrouped_ratio']:.4f}"])
    out.append(table(["data", "dtype", "MiB", "level", "ackpt ratio", "zstd CLI ratio", "ackpt size vs CLI",
                      "ackpt MB/s", "CLI MB/s", "byte-grouped ratio"], rows))
    worst = max((abs(r.get("size_vs_cli", 0)) for r in j["rows"]), default=0)
    targets.append({"group": "Compressed size within 1 % of `zstd` at the same level", "case": "§4 data sets, worst",
                    "value": f"{worst * 100:.3f} %", "met": worst <= 0.01, "gap": "", "see": "§4"})
    tr = [r for r in j["rows"] if r["data"] == "trained" and r["level"] == 1]
    if tr:
        headline.append("**Compression** (zstd -1, trained MLP + Adam): ratio " + ", ".join(
            f"{r['ackpt_ratio']:.2f} ({r['dtype']})" for r in tr) + f"; within {worst * 100:.2f} % of the zstd CLI on the same bytes.")
    if plots and j["rows"]:
        plt = plots.plt
        levels = sorted({r["level"] for r in j["rows"]})
        fig, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 4.2), squeeze=False, sharey=True)
        for ax, lv in zip(axes[0], levels):
            rs = [r for r in j["rows"] if r["level"] == lv]
            xs = range(len(rs))
            ax.bar([x - 0.27 for x in xs], [r["ackpt_ratio"] for r in rs], 0.27, label="ackpt")
            ax.bar(list(xs), [r.get("cli_ratio", 0) for r in rs], 0.27, label="zstd CLI")
            ax.bar([x + 0.27 for x in xs], [r["bytegrouped_ratio"] for r in rs], 0.27, label="byte-grouped (ref.)")
            ax.set_xticks(list(xs))
            ax.set_xticklabels([f"{r['data']} {r['dtype']}" for r in rs], rotation=60, ha="right", fontsize=7)
            ax.set_ylim(1.0, max(r["bytegrouped_ratio"] for r in j["rows"]) * 1.05)
            ax.set_title(f"zstd level {lv}")
            ax.set_ylabel("compression ratio")
            ax.legend(fontsize=7)
        out.append("\n" + plots.save(fig, "compression.png"))
    return "".join(out)


# ---------------------------------------------------------------- memory ----
MEM_LABEL = {"save_ackpt": "ackpt save(force=true), zstd", "save_ackpt_none": "ackpt save(force=true), none",
             "save_torch": "torch::save + fsync", "load_ackpt": "ackpt ReadStateDict, zstd file",
             "load_ackpt_none": "ackpt ReadStateDict, plain file", "load_torch": "torch::load"}


def memory_section(j, plots, targets, headline):
    out = ["## 5. Memory\n\n"]
    out.append(
        f"Peak RSS (VmHWM) of one operation on a {j['bytes'] / 2**20:.0f} MiB fp32 state, each in a fresh process; the "
        "peak is reset to the current RSS (`/proc/self/clear_refs`) right before the operation, so *extra* = peak − RSS "
        "before it. For saves the state is already resident before the operation; for loads it is what the load "
        "allocates. ackpt's save holds one staging copy of the state by design (that is what makes `save()` return "
        "after a memcpy), plus frame buffers; the staging memory is kept for the next save.\n\n"
    )
    rows = []
    res = j["results"]
    for k, label in MEM_LABEL.items():
        v = res.get(k)
        if not v or "peak" not in v:
            rows.append([label, "failed", "", "", ""])
            continue
        rows.append([label, f"{v['before'] / 1e6:.0f}", f"{v['peak'] / 1e6:.0f}", f"{v['extra'] / 1e6:.0f}",
                     f"{v['extra_over_state']:.2f}" + ("" if v.get("peak_reset") else " (peak not reset)")])
    out.append(table(["operation", "RSS before (MB)", "peak (MB)", "extra (MB)", "extra / state"], rows))
    la = res.get("load_ackpt")
    if la and "extra_over_state" in la:
        worst = max(la["extra_over_state"], res.get("load_ackpt_none", {}).get("extra_over_state", 0))
        for k in ("load_ackpt", "load_ackpt_none"):
            v = res.get(k, {}).get("extra_over_state")
            if v is None:
                continue
            targets.append({"group": "Peak RSS during load ≤ 1.1 × state", "case": "zstd file" if k == "load_ackpt" else "plain file",
                            "value": f"{v:.2f} ×", "met": v <= 1.1, "gap": f"{(v / 1.1 - 1) * 100:.0f} % over", "see": "§5"})
    g = res.get("growth")
    if g and g.get("points"):
        pts = g["points"]
        first, last = pts[0], pts[-1]
        growth = last["rss"] - first["rss"]
        later = pts[1] if len(pts) > 2 else first
        tail_growth = last["rss"] - later["rss"]
        staging = g.get("staging_peak", 0)
        out.append(
            f"\nRSS after {first['saves']} saves of a {j['growth_size'] / 2**20:.0f} MiB state: {first['rss'] / 1e6:.1f} MB; "
            f"after {last['saves']}: {last['rss'] / 1e6:.1f} MB (growth {growth / 1e6:+.1f} MB; fsync off, keep_last = 2; "
            f"from save {later['saves']} on: {tail_growth / 1e6:+.1f} MB). Points: "
            + ", ".join(f"{p['saves']}: {p['rss'] / 1e6:.1f} MB" for p in pts) + ". "
            f"The staging pool's peak was {staging / 2**20:.0f} MiB (its budget is twice the largest checkpoint: one "
            "save being written while the next is staged); a step up to that bound early on is the pool filling, "
            "not growth.\n")
        ok = tail_growth <= 0.01 * later["rss"] + 2e6 and growth <= staging + 0.02 * first["rss"] + 4e6
        targets.append({"group": "No RSS growth over many saves", "case": f"{last['saves']} vs {first['saves']} saves",
                        "value": f"{growth / 1e6:+.1f} MB ({tail_growth / 1e6:+.1f} MB after save {later['saves']})",
                        "met": ok, "gap": "", "see": "§5"})
    if la and "extra_over_state" in la and res.get("save_ackpt", {}).get("extra_over_state") is not None:
        headline.append(
            f"**Memory**: loading a {j['bytes'] / 2**20:.0f} MiB zstd checkpoint peaks at {la['extra_over_state']:.2f} × the "
            f"state; a save holds {res['save_ackpt']['extra_over_state']:.2f} × the state on top of it (the staging copy); "
            + (f"RSS after {g['points'][-1]['saves']} saves is {(g['points'][-1]['rss'] - g['points'][0]['rss']) / 1e6:+.1f} MB "
               f"from after {g['points'][0]['saves']} and "
               f"{(g['points'][-1]['rss'] - g['points'][min(1, len(g['points']) - 1)]['rss']) / 1e6:+.1f} MB from after "
               f"{g['points'][min(1, len(g['points']) - 1)]['saves']}." if g and g.get("points") else ""))
    if plots:
        plt = plots.plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        ks = [k for k in MEM_LABEL if res.get(k, {}).get("peak")]
        axes[0].barh(range(len(ks)), [res[k]["extra_over_state"] for k in ks],
                     color=["tab:blue" if "ackpt" in k else "tab:gray" for k in ks])
        axes[0].axvline(1.1, color="red", ls="--", lw=0.8, label="1.1 × (load target)")
        axes[0].set_yticks(range(len(ks)))
        axes[0].set_yticklabels([MEM_LABEL[k] for k in ks], fontsize=7)
        axes[0].invert_yaxis()
        axes[0].set_xlabel("peak RSS − RSS before, / state size")
        axes[0].legend(fontsize=7, loc="lower right")
        axes[0].set_title("Peak extra memory per operation")
        if g and g.get("points"):
            axes[1].plot([p["saves"] for p in g["points"]], [p["rss"] / 1e6 for p in g["points"]], marker="o")
            axes[1].set_xlabel("saves")
            axes[1].set_ylabel("RSS (MB)")
            lo = min(p["rss"] for p in g["points"]) / 1e6
            axes[1].set_ylim(lo * 0.9, lo * 1.2)
            axes[1].set_title(f"RSS over {g['points'][-1]['saves']} saves of {j['growth_size'] / 2**20:.0f} MiB")
        out.append("\n" + plots.save(fig, "memory.png"))
    return "".join(out)


# ----------------------------------------------------------------- micro ----
def micro_section(j):
    out = ["## Micro-benchmarks (Google Benchmark)\n\n"]
    out.append("`ackpt_bench_micro`: per-byte costs of the pieces above on 4–64 MiB of fp32 N(0, 0.02) bytes. "
               "Medians of repetitions where run with repetitions. *CommitStreamNoDisk* is ackpt's compress-and-write "
               "pipeline (level, threads) writing to a discarding Env.\n\n")
    rows = []
    bms = j.get("benchmarks", [])
    have_median = any(b.get("aggregate_name") == "median" for b in bms)
    for b in bms:
        if have_median and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"])
        unit = b.get("time_unit", "ns")
        bps = b.get("bytes_per_second")
        ips = b.get("items_per_second")
        rate = f"{bps / 1e9:.2f} GB/s" if bps else (f"{ips / 1e3:.0f} k items/s" if ips else "")
        extra = f"ratio {b['ratio']:.4f}" if "ratio" in b else ""
        rows.append([name, f"{b['real_time']:.3g} {unit}", f"{b['cpu_time']:.3g} {unit}", rate, extra])
    out.append(table(["benchmark", "real time", "CPU time", "rate", ""], rows))
    ctx = j.get("context", {})
    if ctx:
        out.append(f"\nGoogle Benchmark context: {ctx.get('num_cpus')} CPUs, load average {ctx.get('load_avg')}, "
                   f"Google Benchmark library build {ctx.get('library_build_type')} (that is the harness library; the "
                   "ackpt code under test is built Release).\n")
    return "".join(out)


# ------------------------------------------------------------- retention ----
def retention_section(j, targets):
    """bench/retention.cc: the background work of a save against the checkpoints kept."""
    out = ["## Save cost against checkpoints kept\n\n"]
    out.append(
        f"`ackpt_bench_retention`: a {j['state_bytes'] / 2**20:.1f} MiB state; the directory is first filled to "
        f"*kept* checkpoints, then {j['saves']} forced saves each pay the whole background work of a save (encode, "
        "write, fsync, rename, catalog update, retention pass). Times in ms, median (min–max).\n\n")
    res = j.get("results", {})
    keys = sorted(res, key=lambda k: int(k.split("_")[1]))
    out.append(table(["checkpoints kept", "ms per save: median (min–max)"],
                     [[k.split("_")[1], mm(res[k])] for k in keys]))
    if "ratio" in j and len(keys) >= 2:
        hi, lo = keys[-1].split("_")[1], keys[0].split("_")[1]
        targets.append({"group": "Save cost with many checkpoints kept ≤ 1.1 × with 2 kept",
                        "case": f"{hi} vs {lo} kept", "value": f"{j['ratio']:.2f} ×", "met": j["ratio"] <= 1.1,
                        "gap": f"{(j['ratio'] / 1.1 - 1) * 100:.0f} % over", "see": "retention"})
    return "".join(out) + "\n"


# ------------------------------------------------------------------ ring ----
def ring_section(j, plots, targets, headline):
    """bench/ring.cc: a state larger than the staging budget (issue 16)."""
    out = ["## Staging budget: a state larger than the staging memory\n\n"]
    fl = j["floors"]
    memcpy_s = min(fl["memcpy_1t"]["median"], fl["memcpy_all"]["median"])
    torch_s = fl["torch_save_fsync"]["median"]
    out.append(
        f"One {j['bytes'] / 2**20:.0f} MiB fp32 model-like state ({j['tensors']} tensors), saved with "
        f"`staging_budget_bytes` = state / ratio ({j['compression']}), {j['reps']} repetitions each, interleaved with "
        f"the floors measured in the same run: memcpy {ms(memcpy_s)} ms (faster of 1 and all threads), "
        f"`torch::save` + fsync {ms(torch_s)} ms. *stall* is the time inside `save()`; *end to end* is `save()` entry "
        "to durable; *streamed* is what a save copied into chunks it had to wait for a writer to free; *staging "
        "peak* is the pool's own counter (never above the budget); *RSS growth* is the process's peak RSS above its "
        "level before the checkpointer existed (the live state is already in it). Times in ms, median (min–max).\n\n")
    rows = []
    for r in j["runs"]:
        rows.append([f"{r['ratio']:g}", f"{r['budget_bytes'] / 2**20:.1f}", f"{r['chunk_bytes'] / 2**20:.2f}",
                     mm(r["stall_seconds"]), f"{r['stall_over_memcpy']:.2f}", mm(r["end_to_end_seconds"]),
                     f"{r['end_to_end_over_torch_save']:.2f}", f"{r['streamed_bytes'] / 2**20:.0f}",
                     f"{r['chunk_waits']:.0f}", f"{r['staging_peak_bytes'] / 2**20:.1f}",
                     f"{r['peak_rss_over_start_bytes'] / 2**20:.0f}"])
    out.append(table(["state / budget", "budget (MiB)", "chunk (MiB)", "stall", "stall / memcpy", "end to end",
                      "end to end / torch::save", "streamed (MiB)", "waits for a chunk", "staging peak (MiB)",
                      "RSS growth (MiB)"], rows))
    for t in j.get("targets", []):
        value = t["value"]
        if "RSS" in t["what"]:
            shown = f"{value / 2**20:.0f} MiB (bound {t['bound'] / 2**20:.0f} MiB)"
        elif "bound" in t:
            shown = f"{value * 1e3:.0f} ms (bound {t['bound'] * 1e3:.0f} ms)"
        else:
            shown = f"{value:.2f} ×"
        targets.append({"group": "Staging ring: " + t["what"], "case": f"{j['bytes'] / 2**20:.0f} MiB state",
                        "value": shown, "met": t["met"], "gap": "see the table", "see": "staging budget"})
    worst = max(j["runs"], key=lambda r: r["ratio"]) if j["runs"] else None
    if worst:
        headline.append(
            f"**Staging budget** ({j['bytes'] / 2**20:.0f} MiB state): with a budget of state / {worst['ratio']:g} "
            f"({worst['budget_bytes'] / 2**20:.0f} MiB) the save streams through the ring: stall "
            f"{ms(worst['stall_seconds']['median'])} ms, durable after {ms(worst['end_to_end_seconds']['median'])} ms "
            f"({worst['end_to_end_over_torch_save']:.2f} × `torch::save` + fsync), staging peak "
            f"{worst['staging_peak_bytes'] / 2**20:.1f} MiB.")
    if plots and j["runs"]:
        plt = plots.plt
        fig, ax = plt.subplots(figsize=(7, 3.8))
        xs = [r["ratio"] for r in j["runs"]]
        for key, label in (("stall_seconds", "ackpt stall (inside save())"),
                           ("end_to_end_seconds", "ackpt save() to durable")):
            ys = [r[key]["median"] * 1e3 for r in j["runs"]]
            lo = [(r[key]["median"] - r[key]["min"]) * 1e3 for r in j["runs"]]
            hi = [(r[key]["max"] - r[key]["median"]) * 1e3 for r in j["runs"]]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=label)
        ax.axhline(memcpy_s * 1e3, color="gray", linestyle="--", label="memcpy of the state")
        ax.axhline(torch_s * 1e3, color="black", linestyle=":", label="torch::save + fsync")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
        ax.set_xlabel("state / staging budget")
        ax.set_ylabel("ms (median; bars min–max)")
        ax.set_title("Save time against the staging budget")
        ax.legend(fontsize=7)
        out.append("\n" + plots.save(fig, "ring.png"))
    return "".join(out)


# ------------------------------------------------------------------ main ----
def render(results, out_path, plots_dir, with_plots=True):
    machine = load(results, "machine") or {}
    run = load(results, "run") or {}
    rel = os.path.relpath(plots_dir, os.path.dirname(os.path.abspath(out_path)))
    plots = Plots(plots_dir, rel) if with_plots else None
    targets, headline, sections = [], [], []
    data = {n: load(results, n) for n in ("stall", "overhead", "throughput", "compression", "memory", "micro")}
    for n, convert in report_gbench.CONVERTERS.items():
        if report_gbench.is_gbench(data[n]):
            data[n] = convert(data[n])
    missing = [n for n, v in data.items() if v is None]
    if data["stall"]:
        sections.append(stall_section(data["stall"], plots, targets, headline))
    if data["overhead"]:
        sections.append(overhead_section(data["overhead"], plots, targets, headline))
    if data["throughput"]:
        sections.append(throughput_section(data["throughput"], plots, targets, headline, data["micro"]))
    if data["compression"]:
        sections.append(compression_section(data["compression"], plots, targets, headline))
    codec = load(results, "codec")  # bench/codec.cc; its section lives in bench/report_codec.py
    if codec:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from report_codec import codec_section
        sections.append(codec_section(codec, plots, targets, headline))
    if data["memory"]:
        sections.append(memory_section(data["memory"], plots, targets, headline))
    if load(results, "retention"):  # bench/retention.cc
        sections.append(retention_section(load(results, "retention"), targets))
    if load(results, "ring"):  # issue 16: bench/ring.cc
        sections.append(ring_section(load(results, "ring"), plots, targets, headline))
    if load(results, "distributed"):  # issue 11: bench/report_distributed.py
        sections.append(distributed_section(load(results, "distributed"), plots, targets, headline))
    if load(results, "load"):  # issue 12: bench/report_load.py
        sections.append(load_section(load(results, "load"), plots, targets, headline))
    if data["micro"]:
        sections.append(micro_section(data["micro"]))
    notes_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "BENCHMARK_NOTES.md")
    notes = open(notes_path).read() if os.path.exists(notes_path) else ""

    quick = run.get("quick", False)
    md = ["# ackpt benchmarks\n\n"]
    md.append("<!-- Generated by scripts/run-benchmarks.sh (bench/report.py); edit bench/BENCHMARK_NOTES.md for the "
              "analysis text, not this file. -->\n\n")
    if quick:
        md.append("> **Smoke-size run (`--quick`)**: these figures only check the pipeline; they are not measurements.\n\n")
    la = machine.get("loadavg_start", ["?"] * 3)
    md.append(
        f"Measured {machine.get('date_utc', '')} on a **noisy, shared {machine.get('nproc', '?')}-core VM**: other "
        f"builds and tests ran on the same machine during the run (load average {' / '.join(la)} at the start). Every "
        "figure is taken side by side with its baselines in the same run, repetitions interleaved; tables give the "
        "median and min–max over repetitions, and targets are judged on ratios of medians, never on lone timings. "
        "Expect single figures to move by tens of percent between runs on such a machine; the ratios move less.\n\n"
    )
    if missing:
        md.append(f"> Missing results (the benchmark failed or was not run): {', '.join(missing)}.\n\n")
    md.append("## Headline\n\n" + "".join(f"- {h}\n" for h in headline) + "\n")
    md.append("## Targets\n\n")
    groups = []
    for t in targets:
        if t["group"] not in groups:
            groups.append(t["group"])
    trows = []
    nmet = 0
    for gname in groups:
        ts = [t for t in targets if t["group"] == gname]
        k = sum(1 for t in ts if t["met"])
        nmet += k
        if k == len(ts):
            v = "**met**"
        elif k == 0:
            v = "**missed**"
        else:
            v = f"**{k} of {len(ts)} met**"
        cases = "; ".join(f"{t['case']}: {t['value']}" + ("" if t["met"] else " ✗") for t in ts)
        gaps = [t for t in ts if not t["met"] and t.get("gap")]
        gap = "; ".join(f"{t['case']}: {t['gap']}" for t in gaps)
        trows.append([gname, cases, v, gap, ts[0].get("see", "")])
    md.append(f"{nmet} of {len(targets)} individual checks met (✗ marks a miss). Why each miss happens and what "
              "would close it: *Analysis* below.\n\n")
    md.append(table(["target", "measured (ratios of medians)", "", "gap", "details"], trows) + "\n")
    if notes:
        md.append(notes.rstrip() + "\n\n")
    md.append("## Machine\n\n")
    md.append(table(["", ""], [
        ["CPU", f"{machine.get('cpu_model', '?')}, {machine.get('nproc', '?')} logical CPUs"
                + (" (virtual machine)" if machine.get("hypervisor") else "")],
        ["memory", f"{machine.get('mem_total_gib', '?')} GiB"],
        ["disk", f"{machine.get('scratch_device', '?')} ({machine.get('scratch_fs', '?')}, {machine.get('scratch_size', '?')}, "
                 f"mounted {machine.get('scratch_mount', '?')} with {machine.get('scratch_mount_options', '?')}; "
                 f"rotational={machine.get('scratch_rotational', '?')}); benchmark files in {machine.get('scratch_dir', '?')}"],
        ["OS / kernel", f"{machine.get('os', '?')} / {machine.get('kernel', '?')}"],
        ["compiler", machine.get("compiler", "?") + ", CMake Release (-O3)"],
        ["LibTorch", f"Debian libtorch-dev {machine.get('libtorch', '?')} (CPU build)"],
        ["zstd", f"libzstd {machine.get('libzstd', '?')}; {machine.get('zstd_cli', '?')}"],
        ["Google Benchmark", machine.get("libbenchmark", "?")],
        ["busy processes at start", machine.get("busy_processes_start", "").replace("\n", "; ")],
    ]))
    md.append("\n## Reproduce\n\n```sh\nscripts/run-benchmarks.sh            # builds Release, runs everything, "
              "rewrites this file and docs/bench/*.png\nscripts/run-benchmarks.sh --quick    # smoke-size run of the "
              "same pipeline\n```\n\n")
    if run:
        ph = run.get("phases", {})
        md.append(f"This run: build {run.get('build_seconds', '?')} s (incremental), benchmarks {run.get('run_seconds', '?')} s ("
                  + ", ".join(f"{k} {float(v):.0f} s" for k, v in ph.items()) + "). Each driver also runs alone, e.g. "
                  "`build/bench/ackpt_bench_stall --sizes 1G --dtypes fp32 --benchmark_repetitions=5 "
                  "--benchmark_out=stall.json`; every driver takes `--quick` (the ctest smoke runs, label `bench`) "
                  "and `--help`. bench/README.md lists the drivers and which run on Google Benchmark.\n\n")
    md.extend(s + "\n" for s in sections)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        f.write("".join(md))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collect-machine")
    ap.add_argument("--scratch", default="/tmp/ackpt-bench")
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--results")
    ap.add_argument("--out", default="docs/BENCHMARKS.md")
    ap.add_argument("--plots", default="docs/bench")
    ap.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    a = ap.parse_args()
    if a.collect_machine:
        collect_machine(a.collect_machine, a.scratch, a.build_dir)
        return 0
    if not a.results:
        ap.error("--results or --collect-machine is required")
    render(a.results, a.out, a.plots, with_plots=not a.no_plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
