"""Reads the Google Benchmark JSON (--benchmark_out) that ackpt's stall,
throughput and compression drivers write, and turns it into the per-driver
summaries bench/report.py renders: medians, minima and maxima from Google
Benchmark's aggregates, the repetitions as samples, and the ratios between
methods (ratios of medians), which no single benchmark can report.
"""
import statistics

# Fields of a benchmark entry that are not user counters.
_FIELDS = {"name", "family_index", "per_family_instance_index", "run_name", "run_type", "repetitions",
           "repetition_index", "threads", "iterations", "real_time", "cpu_time", "time_unit", "label",
           "aggregate_name", "aggregate_unit", "error_occurred", "error_message", "bytes_per_second",
           "items_per_second"}
_UNIT = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def is_gbench(j):
    return isinstance(j, dict) and "benchmarks" in j and "context" in j


def _stat(samples, aggregates):
    """{median, min, max, n, samples}; Google Benchmark's aggregates where it computed them."""
    s = {"samples": samples, "n": len(samples)}
    for k, f in (("median", statistics.median), ("min", min), ("max", max)):
        s[k] = aggregates[k] if k in aggregates else (f(samples) if samples else 0.0)
    return s


def base_name(run_name):
    """The benchmark's own name: run_name without Google Benchmark's suffixes
    (/iterations:1, /repeats:N, /manual_time, ...)."""
    parts = run_name.split("/")
    while parts and (":" in parts[-1] or parts[-1] in ("manual_time", "real_time", "process_time")):
        parts.pop()
    return "/".join(parts)


def runs(j):
    """{run_name: {"label", "time": stat in seconds, "counters": {name: stat}}} in file order.
    Failed repetitions (error_occurred) are left out."""
    out = {}
    for b in j.get("benchmarks", []):
        if b.get("error_occurred"):
            continue
        r = out.setdefault(base_name(b["run_name"]), {"label": "", "times": [], "counters": {}, "agg": {}, "cagg": {}})
        scale = _UNIT.get(b.get("time_unit", "ns"), 1e-9)
        counters = {k: v for k, v in b.items() if k not in _FIELDS and isinstance(v, (int, float))}
        if b.get("run_type") == "aggregate":
            name = b.get("aggregate_name")
            if name in ("median", "min", "max"):
                r["agg"][name] = b["real_time"] * scale
                for k, v in counters.items():
                    r["cagg"].setdefault(k, {})[name] = v
            continue
        r["label"] = b.get("label", r["label"])
        r["times"].append(b["real_time"] * scale)
        for k, v in counters.items():
            r["counters"].setdefault(k, []).append(v)
    result = {}
    for name, r in out.items():
        if not r["times"]:
            continue
        result[name] = {"label": r["label"], "time": _stat(r["times"], r["agg"]),
                        "counters": {k: _stat(v, r["cagg"].get(k, {})) for k, v in r["counters"].items()}}
    return result


# ----------------------------------------------------------------- stall ----
STALL_METHODS = [
    ("memcpy_1t", "memcpy, 1 thread"),
    ("memcpy_all", "memcpy, all threads"),
    ("ackpt_stall", "ackpt save() stall"),
    ("ackpt_end_to_end", "ackpt background, end to end"),
    ("ackpt_blocking", "ackpt save(force=true)"),
    ("torch_save_fsync", "torch::save + fsync"),
    ("pickle_save_fsync", "torch::pickle_save + write + fsync"),
    ("ackpt_overlap_stall", "ackpt overlapped save() stall"),
    ("ackpt_overlap_fence", "ackpt overlapped: wait at the fence"),
    ("ackpt_overlap_copy", "ackpt overlapped: background copy"),
]
# benchmark method -> (summary key of its time, {counter: summary key})
_STALL_SOURCES = {
    "memcpy_1t": ("memcpy_1t", {}),
    "memcpy_all": ("memcpy_all", {}),
    "ackpt_save": ("ackpt_stall", {"end_to_end_s": "ackpt_end_to_end", "snapshot_s": "ackpt_snapshot_copy"}),
    "ackpt_force": ("ackpt_blocking", {}),
    "torch_save_fsync": ("torch_save_fsync", {}),
    "pickle_save_fsync": ("pickle_save_fsync", {}),
    "ackpt_overlap": ("ackpt_overlap_stall", {"fence_s": "ackpt_overlap_fence", "copy_s": "ackpt_overlap_copy"}),
}


def stall(j):
    rs = runs(j)
    states = {}
    for name, r in rs.items():
        parts = name.split("/")
        if len(parts) != 4 or parts[0] != "stall" or parts[1] not in _STALL_SOURCES:
            continue
        _, method, size, dtype = parts
        st = states.setdefault((size, dtype), {"size_label": size, "dtype": dtype, "seconds": {}})
        key, counters = _STALL_SOURCES[method]
        st["seconds"][key] = r["time"]
        for c, k in counters.items():
            if c in r["counters"]:
                st["seconds"][k] = r["counters"][c]
        c = r["counters"]
        if "bytes" in c:
            st["bytes"] = int(c["bytes"]["median"])
            st["tensors"] = int(c["tensors"]["median"])
        if method == "memcpy_all" and "threads" in c:
            st["memcpy_threads"] = int(c["threads"]["median"])
        if method == "ackpt_overlap" and "compute_s" in c:
            st["overlap_compute_seconds"] = c["compute_s"]["median"]
        st["reps"] = max(st.get("reps", 0), r["time"]["n"])
    out_runs = []
    # Google Benchmark's random interleaving shuffles the file: sort by size, then dtype.
    for _, st in sorted(states.items(), key=lambda kv: (_size_bytes(kv[0][0]), _index(_DTYPES, kv[0][1]))):
        s = st["seconds"]
        need = ("memcpy_1t", "memcpy_all", "ackpt_stall", "torch_save_fsync")
        if "bytes" not in st or any(k not in s for k in need):
            continue  # a filtered run: not enough to judge this state
        med = {k: v["median"] for k, v in s.items()}

        def ratio(a, b):
            return med[a] / med[b] if a in med and med.get(b) else 0.0

        floor = min(med["memcpy_1t"], med["memcpy_all"])
        st["ratios"] = {
            "stall_over_memcpy_1t": ratio("ackpt_stall", "memcpy_1t"),
            "stall_over_memcpy_all": ratio("ackpt_stall", "memcpy_all"),
            "stall_over_torch_save": ratio("ackpt_stall", "torch_save_fsync"),
            "stall_over_pickle_save": ratio("ackpt_stall", "pickle_save_fsync"),
            "blocking_over_torch_save": ratio("ackpt_blocking", "torch_save_fsync"),
        }
        if "ackpt_overlap_stall" in med:
            compute = st.get("overlap_compute_seconds", 0.0)
            st["overlap_expected_fence_seconds"] = max(0.0, med.get("ackpt_overlap_copy", 0.0) - compute)
            st["ratios"]["overlap_stall_over_memcpy"] = med["ackpt_overlap_stall"] / floor
            st["ratios"]["overlap_fence_over_memcpy"] = med.get("ackpt_overlap_fence", 0.0) / floor
        out_runs.append(st)
    return {"benchmark": "stall", "gbench": True, "methods": [{"key": k, "label": v} for k, v in STALL_METHODS], "runs": out_runs}


# ------------------------------------------------------------ throughput ----
def throughput(j):
    ctx = j["context"]
    rs = runs(j)
    logical = int(ctx["logical_bytes"])
    threads = [int(t) for t in ctx["threads"].split(",") if t]
    levels = [lv for lv in ctx["levels"].split(",") if lv]
    results = {}
    reps = 0
    for name, r in rs.items():
        if not name.startswith("throughput/"):
            continue
        key = name.split("/", 1)[1]
        e = dict(r["time"])
        g = [logical / s / 1e9 for s in e["samples"] if s > 0]
        e["gbps"] = {"median": statistics.median(g), "min": min(g), "max": max(g), "n": len(g), "samples": g}
        if "file_bytes" in r["counters"]:
            fb = r["counters"]["file_bytes"]["median"]
            e["file_bytes"] = int(fb)
            e["ratio"] = logical / fb if fb else 0.0
        results[key] = e
        reps = max(reps, e["n"])
    results = dict(sorted(results.items()))

    def gbps(k):
        return results[k]["gbps"]["median"] if k in results else 0.0

    # The disk's write bandwidth: the best of the raw methods of this run.
    disk = max(gbps("raw_write_fsync"), gbps("raw_write_kick_fsync"), gbps("raw_write_odirect"))
    disk_what = "raw write+fsync"
    if disk == gbps("raw_write_kick_fsync"):
        disk_what = "raw write+sync_file_range+fsync"
    if disk == gbps("raw_write_odirect"):
        disk_what = "raw O_DIRECT write"
    targets = []
    for lv in levels:
        for t in threads:
            key = f"{'none' if lv == 'none' else 'zstd' + lv}_t{t}"
            k = "persist_" + key
            if k not in results:
                continue
            anchor, anchor_what = disk, disk_what
            if lv != "none":
                z = gbps(f"zstd_lib_1t_l{lv}") * t
                if z and z < anchor:
                    anchor, anchor_what = z, f"{t} x single-thread zstd -{lv}"
            ratio = gbps(k) / anchor if anchor > 0 else 0.0
            targets.append({"what": "persist " + key, "value_gbps": gbps(k), "anchor_gbps": anchor,
                            "anchor": anchor_what, "ratio": ratio, "target": 0.8, "met": ratio >= 0.8})
            cli = results.get(f"zstd_cli_l{lv}_t1", {}).get("file_bytes")
            if lv != "none" and cli and t == threads[0]:
                rel = results[k]["file_bytes"] / cli - 1.0
                targets.append({"what": f"size zstd{lv} vs zstd CLI -{lv}", "value": rel, "target": 0.01,
                                "met": abs(rel) <= 0.01})
    files = sorted({k.split("_")[1] for k in results if k.startswith("load_")})
    for t in threads:
        for temp in ("cold", "hot"):
            ts = f"{temp}_t{t}"
            raw = gbps("raw_read_" + ts)
            for f in files:
                v = gbps(f"load_{f}_{ts}")
                ratio = v / raw if raw > 0 else 0.0
                targets.append({"what": f"load {f} {ts}", "value_gbps": v, "anchor_gbps": raw,
                                "anchor": "raw read of the plain file", "ratio": ratio, "target": 0.8,
                                "met": ratio >= 0.8})
    return {"benchmark": "throughput", "gbench": True, "bytes": int(ctx["bytes"]), "logical_bytes": logical, "dtype": ctx["dtype"],
            "tensors": int(ctx["tensors"]), "threads": threads, "levels": levels, "reps": reps,
            "page_cache_drop": ctx.get("page_cache_drop", ""), "zstd_cli": ctx.get("zstd_cli") == "true",
            "results": results, "targets": targets}


# ----------------------------------------------------------- compression ----
def compression(j):
    ctx = j["context"]
    rs = runs(j)
    rows = {}
    reps = 0
    for name, r in rs.items():
        parts = name.split("/")
        if len(parts) != 5 or parts[0] != "compression":
            continue
        _, method, key, dtype, level = parts
        c = r["counters"]
        row = rows.setdefault((key, dtype, level), {"data": r["label"] or key, "dtype": dtype, "level": int(level)})
        row["bytes"] = int(c["bytes"]["median"])
        row["logical_bytes"] = logical = int(c["logical_bytes"]["median"])
        t = r["time"]
        reps = max(reps, t["n"])
        if method == "ackpt":
            row["ackpt_file_bytes"] = int(c["file_bytes"]["median"])
            row["ackpt_ratio"] = c["ratio"]["median"]
            row["ackpt_seconds"] = t
            row["ackpt_mbps"] = logical / t["median"] / 1e6
            row["bytegrouped_ratio"] = c["bytegrouped_ratio"]["median"]
        elif method == "zstd_cli":
            row["cli_file_bytes"] = int(c["file_bytes"]["median"])
            row["cli_ratio"] = c["ratio"]["median"]
            row["cli_seconds"] = t
            row["cli_mbps"] = logical / t["median"] / 1e6
    out_rows = []
    order = sorted(rows, key=lambda k: (_index(_DTYPES, k[1]), _index(_SETS, k[0]), int(k[2])))
    for row in (rows[k] for k in order):
        if "ackpt_ratio" not in row:
            continue
        if "cli_file_bytes" in row:
            row["size_vs_cli"] = row["ackpt_file_bytes"] / row["cli_file_bytes"] - 1.0
        out_rows.append(row)
    return {"benchmark": "compression", "gbench": True, "train_steps": int(ctx["train_steps"]),
            "train_seconds": float(ctx["train_seconds"]), "model": ctx["model"],
            "loss_first": float(ctx["loss_first"]), "loss_last": float(ctx["loss_last"]),
            "levels": [lv for lv in ctx["levels"].split(",") if lv], "reps": reps, "rows": out_rows}


_DTYPES = ["fp32", "bf16", "fp16"]
_SETS = ["trained", "trained_weights", "trained_adam", "randn", "synthetic"]


def _index(seq, x):
    return seq.index(x) if x in seq else len(seq)


def _size_bytes(label):
    """'8MiB' / '1GiB' / '512KiB' -> bytes (the driver's SizeLabel)."""
    for unit, mult in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if label.endswith(unit):
            return float(label[: -len(unit)]) * mult
    return 0.0


CONVERTERS = {"stall": stall, "throughput": throughput, "compression": compression}
