"""docs/BENCHMARKS.md section for the byte-grouped codec (bench/codec.cc).

bench/report.py calls codec_section() with the JSON of `ackpt_bench_codec
--json` (docs/bench/results/codec.json); kept apart from report.py so the
codec's tables and targets live next to nothing else.
"""

from report_common import table as _table

TARGET_SMALLER = 0.08       # >= 8 % smaller than zstd -1 on fp32 and bf16 parameters
TARGET_SMALLER_BF16 = 0.15  # stretch, bf16 parameters
TARGET_SPEED = 0.9          # compression and decompression >= 0.9 x zstd -1, per thread


def _key(r):
    return (r["data"], r["kind"], r["dtype"])


def codec_section(j, plots, targets, headline, number="4b"):
    rows = j["rows"]
    sets = []
    for r in rows:
        if _key(r) not in sets:
            sets.append(_key(r))
    by = {(_key(r), r["codec"]): r for r in rows}
    out = [f"## {number}. Byte-grouped codec (`Compression::kZstdByteGrouped`) against zstd\n\n"]
    out.append(
        "Each data set is laid out as the writer lays out a data section and cut into its "
        f"{j['chunk_bytes'] >> 20} MiB frames; every codec encodes and decodes exactly those frames on **one thread** "
        "(the writer and the reader run one frame per thread), with the reader's checks (zstd's content checksum; the "
        f"byte-grouped frame's XXH64). Median of {j['reps']} interleaved repetitions; GB/s of original bytes. *demo*: "
        f"the checkpoint `ackpt_demo` wrote after 240 steps (`{j.get('demo') or 'not given'}`), parameters and "
        "AdamW's exp_avg / exp_avg_sq apart (bf16 rows: the same parameters cast). *synthetic*: N(0, 0.02) weights, "
        "exp_avg N(0, 1e-3), exp_avg_sq U(0, 1e-6). *bench state*: the model-like state the other benchmarks save. "
        "*byte-grouped* is what ackpt writes (docs/FORMAT.md §14.5: per-plane raw / Huffman-only / zstd, and plain "
        "zstd frames for frames that are mostly runs); the two *grouped, planes …* rows force one plane coder, "
        "which is how the adaptive choice was made. planes: streams stored raw / zstd / Huffman-only, and frames "
        "left plain zstd.\n\n")
    table_rows = []
    for k in sets:
        z1 = by.get((k, "zstd -1"))
        for name in ("zstd -1", "zstd -3", "byte-grouped", "grouped, planes zstd -1", "grouped, planes Huffman"):
            r = by.get((k, name))
            if not r:
                continue
            p = r.get("planes")
            planes = f"{p['raw']} / {p['zstd']} / {p['huffman']}, {p.get('plain_zstd_frames', 0)}" if p else ""
            rel_c = r["compress_gbps"] / z1["compress_gbps"] if z1 else 0
            rel_d = r["decompress_gbps"] / z1["decompress_gbps"] if z1 else 0
            bold = "**" if name == "byte-grouped" else ""
            table_rows.append([
                f"{k[0]} {k[1]}", k[2], f"{r['bytes'] / 2**20:.1f}", f"{bold}{name}{bold}", f"{r['ratio']:.3f}",
                f"{r['size_vs_zstd1'] * 100:+.1f} %", f"{r['compress_gbps']:.2f} ({rel_c:.2f}×)",
                f"{r['decompress_gbps']:.2f} ({rel_d:.2f}×)", planes])
    out.append(_table(["data", "dtype", "MiB", "codec", "ratio", "size vs zstd -1", "compress GB/s (vs zstd -1)",
                       "decompress GB/s (vs zstd -1)", "planes raw/zstd/Huffman, plain frames"], table_rows))

    tr = j.get("transpose", [])
    if tr:
        out.append("\nGrouping and ungrouping alone (4 MiB, SSE2 kernels; the plain scalar double loop for 4-byte "
                   "elements, which GCC does not vectorise well at the x86-64 baseline, for comparison):\n\n")
        out.append(_table(["element size", "group GB/s", "ungroup GB/s", "scalar loop group / ungroup GB/s"], [
            [t["elem_size"], f"{t['group_gbps']:.1f}", f"{t['ungroup_gbps']:.1f}",
             f"{t['scalar_group_gbps']:.1f} / {t['scalar_ungroup_gbps']:.1f}" if "scalar_group_gbps" in t else "—"]
            for t in tr]))

    # Targets.
    bg = {k: by.get((k, "byte-grouped")) for k in sets}
    z1 = {k: by.get((k, "zstd -1")) for k in sets}
    for dtype in ("fp32", "bf16"):
        ks = [k for k in sets if k[1] == "parameters" and k[2] == dtype and bg[k]]
        if ks:
            worst = min(-bg[k]["size_vs_zstd1"] for k in ks)
            targets.append({"group": "Byte-grouped ≥ 8 % smaller than zstd -1 on parameters", "case": dtype,
                            "value": f"{worst * 100:.1f} % smaller", "met": worst >= TARGET_SMALLER, "gap": "",
                            "see": f"§{number}"})
            if dtype == "bf16":
                targets.append({"group": "Byte-grouped ≥ 15 % smaller than zstd -1 (stretch)", "case": "bf16 parameters",
                                "value": f"{worst * 100:.1f} % smaller", "met": worst >= TARGET_SMALLER_BF16,
                                "gap": "", "see": f"§{number}"})
    larger = [k for k in sets if bg[k] and bg[k]["size_vs_zstd1"] > 0]
    targets.append({"group": "Byte-grouped never larger than zstd -1", "case": "every data set",
                    "value": "none larger" if not larger else ", ".join(" ".join(k) for k in larger),
                    "met": not larger, "gap": "", "see": f"§{number}"})
    for what, field in (("compression", "compress_gbps"), ("decompression", "decompress_gbps")):
        rel = [(bg[k][field] / z1[k][field], k) for k in sets if bg[k] and z1[k]]
        if rel:
            worst, wk = min(rel)
            targets.append({"group": f"Byte-grouped {what} ≥ 0.9 × zstd -1 per thread", "case": "worst data set",
                            "value": f"{worst:.2f} × ({' '.join(wk)})", "met": worst >= TARGET_SPEED, "gap": "",
                            "see": f"§{number}"})
    pk = [k for k in sets if k[1] == "parameters" and bg[k]]
    if pk:
        headline.append("**Byte-grouped codec** (`kZstdByteGrouped`): parameters " + ", ".join(
            f"{-bg[k]['size_vs_zstd1'] * 100:.1f} % smaller than zstd -1 ({k[0]} {k[2]})" for k in pk) +
            f"; compresses at {min(bg[k]['compress_gbps'] / z1[k]['compress_gbps'] for k in pk):.1f}–"
            f"{max(bg[k]['compress_gbps'] / z1[k]['compress_gbps'] for k in pk):.1f}× zstd -1's speed there.")

    if plots and sets:
        plt = plots.plt
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
        labels = [f"{k[0]} {k[1]} {k[2]}" for k in sets]
        xs = list(range(len(sets)))
        names = ("zstd -1", "zstd -3", "byte-grouped")
        w = 0.27
        for i, name in enumerate(names):
            axes[0].bar([x + (i - 1) * w for x in xs], [(by.get((k, name)) or {}).get("ratio", 0) for k in sets], w,
                        label=name)
        axes[0].set_yscale("log")
        axes[0].set_ylabel("compression ratio (log)")
        axes[0].set_title("ratio, same frames")
        for i, (name, field, mk) in enumerate((("zstd -1", "compress_gbps", "o"), ("byte-grouped", "compress_gbps", "o"),
                                               ("zstd -1", "decompress_gbps", "^"),
                                               ("byte-grouped", "decompress_gbps", "^"))):
            axes[1].plot(xs, [(by.get((k, name)) or {}).get(field, 0) for k in sets], mk + ("-" if "grouped" in name else "--"),
                         color="C2" if "grouped" in name else "C0",
                         label=f"{name} {'compress' if field == 'compress_gbps' else 'decompress'}")
        axes[1].set_ylabel("GB/s per thread")
        axes[1].set_title("speed, one thread")
        for ax in axes:
            ax.set_xticks(xs)
            ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
            ax.legend(fontsize=7)
        out.append("\n" + plots.save(fig, "codec.png"))
    return "".join(out)
