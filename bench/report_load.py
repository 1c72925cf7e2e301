"""The "Load" section of docs/BENCHMARKS.md, from bench/load.cc's JSON
(issue 12). Called by report.py as load_section(j, plots, targets, headline),
like the other sections: returns the markdown, appends to `targets` and
`headline`, and saves its plot through `plots` when matplotlib is there."""


from report_common import median_bars, table as _table, verdict as _verdict


# Why a target is missed, when it is: what the measurement shows and what would close it.
_WHY = {
    "plain hot": "the per-tensor XXH3 is computed on the bytes as they land but still costs a pass of the CPU over "
                 "them (compare *into existing, no checksums*); with 2 cores the hash and the kernel's copy share them",
    "zstd hot": "each frame is read (pread of its compressed bytes) before it is decoded, and the XXH3 of the output "
                "runs on the same cores; libzstd's figure decodes from memory",
    "cold": "on this VM the page-cache drop may not reach the host's cache, so 'cold' reads are partly hot",
    "rss": "per-thread frame buffers and LibTorch's allocations",
}


def load_section(j, plots, targets, headline):
    r = j["results"]
    t = j["threads"]
    files = j["files"]
    mib = files["plain"]["logical_bytes"] / 2**20
    out = ["## Load into tensors (issue 12)\n\n"]
    out.append(
        f"One {mib:.0f} MiB fp32 model-like state ({j['tensors']} tensors: weights plus Adam's two moments), "
        f"written uncompressed (*plain*) and with zstd -1 in 4 MiB frames (*zstd*, "
        f"{files['zstd']['file_bytes'] / files['plain']['file_bytes'] * 100:.0f} % of plain). {t} threads; median "
        f"(min–max) over {j['reps']} repetitions, interleaved; GB/s = bytes / seconds, 1 GB = 10⁹ bytes: logical "
        "(uncompressed) bytes for ackpt and libzstd, file bytes for the raw reads. *into existing*: "
        "`CheckpointReader::ReadInto` into pre-faulted tensors of the right shapes (what a resuming trainer holds), "
        "checksums verified; *fresh*: `ReadStateDict`, which allocates. *raw read*: pread of the same file with the "
        "same threads in 8 MiB blocks; *reused* into one pre-faulted buffer, *fresh* into newly allocated memory; "
        "*mmap + copy*: the file mapped and memcpy'd into the reused buffer. *libzstd*: the zstd file's frames "
        "decoded from memory into the reused buffer. *cold*: the file was fsynced and dropped from the page cache "
        f"first ({j.get('page_cache_drop', '?')}).\n\n")

    def cell(k):
        if k not in r:
            return "–"
        g = r[k]["gbps"]
        return f"{g['median']:.2f} ({g['min']:.2f}–{g['max']:.2f})"

    rows = []
    for label, key in [
        ("ackpt: into existing tensors, hot", "load_into_hot_{}"),
        ("ackpt: into existing tensors, hot, no checksums", "load_into_noverify_hot_{}"),
        ("ackpt: into fresh tensors, hot", "load_fresh_hot_{}"),
        ("ackpt: into existing tensors, cold", "load_into_cold_{}"),
        ("raw read, reused buffer, hot", "raw_read_reused_hot_{}"),
        ("raw read, fresh buffer, hot", "raw_read_fresh_hot_{}"),
        ("mmap + copy, reused buffer, hot", "mmap_copy_reused_hot_{}"),
        ("raw read, reused buffer, cold", "raw_read_reused_cold_{}"),
    ]:
        rows.append([label, cell(key.format("plain")), cell(key.format("zstd"))])
    rows.append(["libzstd decode, 1 thread", "", cell("zstd_lib_1t")])
    rows.append([f"libzstd decode, {t} threads", "", cell(f"zstd_lib_{t}t")])
    out.append(_table(["GB/s", "plain", "zstd -1"], rows))

    pt = j.get("partial_tensor", "?")
    pb = j.get("partial_tensor_bytes", 0)
    prow = []
    for f in ("plain", "zstd"):
        rd = files[f].get("partial_bytes_read", 0)
        prow.append([f, f"{rd / 2**20:.2f} MiB", f"{rd / pb:.2f} ×" if pb else "–",
                     f"{files[f]['file_bytes'] / 2**20:.0f} MiB", cell(f"load_partial_hot_{f}")])
    out.append(f"\n**Partial load**: one tensor (`{pt}`, {pb / 2**20:.2f} MiB) read into an existing tensor; bytes "
               "read counted through an `Env` wrapper (header and seek table included).\n\n")
    out.append(_table(["file", "bytes read", "÷ tensor bytes", "file size", "GB/s of the tensor"], prow))

    rss = [[f, f"{files[f]['rss_extra_bytes'] / 2**20:.1f} MiB"] for f in ("plain", "zstd")
           if "rss_extra_bytes" in files[f]]
    if rss:
        out.append("\n**Peak RSS** above what the process held before `ReadInto` (the destinations, LibTorch), "
                   "measured in a child process (VmHWM):\n\n")
        out.append(_table(["file", "extra peak RSS"], rss))

    trows = []
    for tg in j["targets"]:
        w = tg["what"]
        if "ratio" in tg:
            key = "plain hot" if w.startswith("plain hot") else "zstd hot" if w.startswith("zstd hot") else "cold"
            why = "" if tg["met"] else _WHY[key]
            zn = r.get(f"zstd_lib_{t}t", {}).get("gbps", {}).get("median", 0)
            z1 = r.get("zstd_lib_1t", {}).get("gbps", {}).get("median", 0)
            if not tg["met"] and key == "zstd hot" and zn:
                why += (f"; libzstd itself reached {zn / z1 if z1 else 0:.2f} × its 1-thread speed on {t} threads "
                        f"in this run, and the load is {tg['value_gbps'] / zn:.2f} × that measured {t}-thread figure")
            if not tg["met"] and key == "cold" and w.startswith("zstd") and z1:
                why = (f"decoding, not the disk, bounds a compressed load: libzstd ran at {zn:.2f} GB/s on {t} "
                       "threads, below the cold read; " + _WHY["cold"])
            trows.append([w, f"{tg['value_gbps']:.2f} GB/s", f"{tg['anchor_gbps']:.2f} GB/s ({tg['anchor']})",
                          f"{tg['ratio']:.2f} ({_verdict(tg['met'])})", why])
            group = ("Load into existing tensors, hot, ≥ 0.8 × anchor" if "hot" in w
                     else "Load into existing tensors, cold, ≥ 0.8 × raw cold read")
            targets.append({"group": group, "case": w.split(" ")[0] + (" (vs raw read)" if "plain hot" in w else ""),
                            "value": f"{tg['ratio']:.2f} ×", "met": tg["met"],
                            "gap": f"{(1 - tg['ratio'] / tg['goal']) * 100:.0f} % short", "see": "Load"})
        else:
            mb = tg["value_bytes"] / 2**20
            trows.append([w, f"{mb:.1f} MiB", "64 MiB", _verdict(tg["met"]), "" if tg["met"] else _WHY["rss"]])
            targets.append({"group": "Peak RSS loading into existing tensors ≤ state + 64 MiB",
                            "case": w.split(" ")[0], "value": f"+{mb:.0f} MiB", "met": tg["met"],
                            "gap": f"{mb - 64:.0f} MiB over", "see": "Load"})
    out.append("\nTargets (ratios of medians):\n\n")
    out.append(_table(["what", "measured", "anchor", "ratio (goal ≥ 0.8)", "why missed"], trows))

    def med(k):
        return r[k]["gbps"]["median"] if k in r else 0.0

    headline.append(
        f"**Load into existing tensors** ({t} threads, hot, checksums on): {med('load_into_hot_plain'):.2f} GB/s "
        f"uncompressed vs {med('raw_read_reused_hot_plain'):.2f} GB/s raw read into a reused buffer; "
        f"{med('load_into_hot_zstd'):.2f} GB/s zstd -1 vs {med(f'zstd_lib_{t}t'):.2f} GB/s libzstd on {t} threads; "
        f"fresh tensors: {med('load_fresh_hot_plain'):.2f} / {med('load_fresh_hot_zstd'):.2f} GB/s.")

    if plots:
        plt = plots.plt
        fig, ax = plt.subplots(figsize=(9, 4.6))
        keys = [k for k in [
            "raw_read_reused_hot_plain", "mmap_copy_reused_hot_plain", "raw_read_fresh_hot_plain",
            "load_into_noverify_hot_plain", "load_into_hot_plain", "load_fresh_hot_plain",
            f"zstd_lib_{t}t", "zstd_lib_1t", "load_into_noverify_hot_zstd", "load_into_hot_zstd",
            "load_fresh_hot_zstd", "raw_read_reused_cold_plain", "load_into_cold_plain",
            "raw_read_reused_cold_zstd", "load_into_cold_zstd"] if k in r]
        colors = ["tab:blue" if k.startswith("load") else "tab:orange" if k.startswith("zstd") else "tab:gray"
                  for k in keys]
        median_bars(ax, [r[k]["gbps"] for k in keys], keys, colors,
                    xlabel="GB/s (log; median, bars min–max)",
                    title="Load (blue) vs raw read (gray) and libzstd (orange)")
        out.append("\n" + plots.save(fig, "load.png"))
    return "".join(out)
