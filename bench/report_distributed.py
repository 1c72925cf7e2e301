"""The "Many ranks" section of docs/BENCHMARKS.md, from bench/distributed.cc's
JSON (issue 11). Called by report.py as distributed_section(j, plots, targets,
headline), like the other sections: returns the markdown, appends to
`targets` and `headline`, and saves its plot through `plots` when matplotlib
is there."""


from report_common import median_bars, mm as _mm, table as _table


def distributed_section(j, plots, targets, headline):
    r = j["results"]
    n = j["ranks"]
    mib = j["bytes"] / 2**20
    hw = j.get("hardware_concurrency", "?")
    single = r["single_stall_seconds"]["median"]
    alone = r["rank0_only_seconds"]["median"]
    out = ["## Many ranks: distributed checkpointing (issue 11)\n\n"]
    out.append(
        f"{n} ranks on this machine ({hw} hardware threads), Gloo over a c10d `FileStore` on 127.0.0.1; each "
        f"rank holds the same {mib:.0f} MiB fp32 model-like state ({j['tensors']} tensors, compression "
        f"{j['compression']}). One launch of the ranks per repetition ({j['reps']}), every checkpointer warmed up "
        "by one untimed save, the methods' order rotated per repetition; each method starts after a barrier and "
        "ends durable. *Stall*: the time inside `save()`, the whole state rank-local (`replicated = {}`), so every "
        f"rank snapshots and writes {mib:.0f} MiB; its baseline is `DefaultCheckpointer::save()` of the same bytes "
        "in one process while the other ranks wait idle in a barrier. *Replicated*: the same state listed in "
        "`replicated` (module and optimizer, identical on every rank), `save(force = true)` on rank 0 = `save()` "
        "entry to manifest durable, ackpt spreading the tensors across the ranks; its baseline is what a DDP job "
        "does without it: rank 0 alone saves the whole state (`DefaultCheckpointer`, `force = true`) while the "
        "others idle. Times in ms, median (min–max).\n\n")
    rows = [
        ["stall: one process, `DefaultCheckpointer::save()`", _mm(r["single_stall_seconds"]), ""],
        [f"stall: every rank of {n}, `DistributedCheckpointer::save()`", _mm(r["dist_stall_seconds"]),
         f"{j['stall_ratio']:.2f} × one process"],
        ["stall: the slowest rank of each repetition", _mm(r["dist_stall_slowest_seconds"]),
         f"{j['stall_ratio_slowest']:.2f} × one process"],
        ["`save()` to durable: one process", _mm(r["single_end_to_end_seconds"]), ""],
        [f"`save()` to manifest durable: {n} ranks, rank-local state (rank 0)",
         _mm(r["dist_end_to_end_seconds"]), ""],
        ["replicated: rank 0 alone saves the whole state", _mm(r["rank0_only_seconds"]), ""],
        [f"replicated: spread across {n} ranks, `save()` to manifest durable (rank 0)",
         _mm(r["replicated_seconds"]), f"{j['replicated_ratio']:.2f} × rank 0 alone"],
        [f"replicated: spread, the last of the {n} ranks to return", _mm(r["replicated_slowest_seconds"]), ""],
    ]
    out.append(_table(["", "ms", "ratio of medians"], rows))
    parts = r.get("replicated_part_bytes", [])
    if parts:
        out.append("\nReplicated bytes each rank wrote (MiB, by rank): "
                   + ", ".join(f"{b / 2**20:.1f}" for b in parts) + ".\n")
    if "aggregate_stall_gbps" in j:
        out.append(f"\nBytes snapshotted per second of stall: the {n} ranks together "
                   f"{j['aggregate_stall_gbps']:.2f} GB/s ({n} × {mib:.0f} MiB / the slowest rank's stall), one "
                   f"process alone {j['single_stall_gbps']:.2f} GB/s. Where the two are about equal, the ranks' "
                   "stall is the machine's copy bandwidth shared out among them, not work the distributed path "
                   "adds.\n")
    if j.get("quick"):
        out.append("\n(`--quick`: smoke size; these times only check the pipeline.)\n")

    for t in j.get("targets", []):
        targets.append({"group": "Many ranks: per-rank stall ≤ 1.2 × single-process stall, same per-rank bytes",
                        "case": f"{n} ranks on {hw} hardware threads, {mib:.0f} MiB per rank",
                        "value": f"{t['value']:.2f} ×", "met": t["met"],
                        "gap": f"{(t['value'] / t['bound'] - 1) * 100:.0f} % over", "see": "Many ranks"})
    headline.append(
        f"**Many ranks** ({n} ranks on {hw} hardware threads, {mib:.0f} MiB per rank): stall "
        f"{r['dist_stall_seconds']['median'] * 1e3:.1f} ms per rank vs {single * 1e3:.1f} ms in one process "
        f"({j['stall_ratio']:.2f} ×); a replicated {mib:.0f} MiB state spread across the ranks is committed "
        f"(manifest durable) in {r['replicated_seconds']['median'] * 1e3:.0f} ms vs "
        f"{alone * 1e3:.0f} ms when rank 0 saves it alone ({j['replicated_ratio']:.2f} ×).")

    if plots:
        plt = plots.plt
        fig, ax = plt.subplots(figsize=(8, 3.6))
        keys = [("single_stall_seconds", "stall, one process", "tab:gray"),
                ("dist_stall_seconds", f"stall, every rank of {n}", "tab:blue"),
                ("dist_stall_slowest_seconds", "stall, slowest rank", "tab:blue"),
                ("rank0_only_seconds", "replicated: rank 0 alone", "tab:gray"),
                ("replicated_seconds", f"replicated: spread over {n}", "tab:blue")]
        median_bars(ax, [r[k] for k, _, _ in keys], [lbl for _, lbl, _ in keys], [c for _, _, c in keys],
                    scale=1e3, fontsize=8, xlabel="ms (log; median, bars min–max)",
                    title=f"Distributed checkpointing: {n} ranks (blue) vs one process (gray)")
        out.append("\n" + plots.save(fig, "distributed.png"))
    return "".join(out)
