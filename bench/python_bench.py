#!/usr/bin/python3
"""ackpt from Python against torch.save + fsync (and DCP where it imports),
for the same state_dicts in the same run (issue 23).

For each state (a model's state_dict plus its AdamW optimizer's, one step
taken so every moment exists), repetitions interleaved:
  ackpt save()        time inside Checkpointer.save() (the stall), and the
                      C++ stall of the same call (SaveStats.stall_seconds,
                      measured inside DefaultCheckpointer::save)
  ackpt durable       save() + wait(): the file fsynced and renamed
  torch.save + fsync  torch.save into an open file, flush, fsync file and dir
  DCP                 torch.distributed checkpoint save_state_dict with a
                      FileSystemWriter, where this torch ships an importable one
  resume              ackpt load() + load_state_dict (model and optimizer)
                      vs torch.load + load_state_dict (page cache warm for both)

  PYTHONPATH=build/python /usr/bin/python3 bench/python_bench.py [--sizes 64,256] [--reps 5]
      [--dir DIR] [--json OUT.json] [--plot docs/bench/python.png] [--markdown OUT.md]
"""
import argparse
import gc
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import torch

import ackpt


def make_state(mib):
    # Square Linear layers; parameters + exp_avg + exp_avg_sq = `mib` MiB of fp32.
    params = mib * (1 << 20) // 4 // 3
    width = 2048 if mib >= 128 else 1024
    layers = max(1, round(params / (width * width + width)))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, width)).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def nbytes(state):
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(nbytes(v) for v in state)
    return 0


def fsync_dir(d):
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dcp_saver():
    try:
        try:
            import torch.distributed.checkpoint as dcp
        except ImportError:
            import torch.distributed._shard.checkpoint as dcp  # 1.13's location
        return dcp, None
    except Exception as e:  # noqa: BLE001
        return None, "%s: %s" % (type(e).__name__, e)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="64,256", help="state sizes in MiB (model + AdamW moments)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--dir", default=None, help="where files go (default: a temp dir under /tmp)")
    p.add_argument("--json")
    p.add_argument("--plot")
    p.add_argument("--markdown")
    a = p.parse_args()
    root = tempfile.mkdtemp(prefix="ackpt_pybench_", dir=a.dir)
    dcp, dcp_error = dcp_saver()
    results = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "torch": torch.__version__,
               "reps": a.reps, "dcp_error": dcp_error, "states": []}
    try:
        for mib in [int(s) for s in a.sizes.split(",")]:
            model, opt = make_state(mib)
            state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
            size = nbytes(state)
            times = {k: [] for k in ("ackpt_save_none", "ackpt_cpp_stall_none", "ackpt_durable_none",
                                     "ackpt_save_zstd", "ackpt_cpp_stall_zstd", "ackpt_durable_zstd",
                                     "torch_save_fsync", "dcp_save", "ackpt_resume_none", "ackpt_resume_zstd",
                                     "ackpt_resume_into_none", "ackpt_resume_into_zstd", "torch_load_resume")}
            ck = {}
            for comp in ("none", "zstd"):
                d = os.path.join(root, "ackpt_" + comp)
                ck[comp] = ackpt.Checkpointer(save_dir=d, model_state_save_dir=d, compression=comp, keep_last=1, log_level="WARN",
                                              delete_existing_checkpoints=True)
            pt = os.path.join(root, "torch.pt")
            index = [0]

            def ackpt_save(comp):
                c = ck[comp]
                index[0] += 1
                t0 = time.perf_counter()
                c.save(state, index[0])
                t1 = time.perf_counter()
                c.wait()
                t2 = time.perf_counter()
                times["ackpt_save_" + comp].append(t1 - t0)
                times["ackpt_durable_" + comp].append(t2 - t0)
                times["ackpt_cpp_stall_" + comp].append(c.stats()[-1]["stall_seconds"])

            def torch_save():
                t0 = time.perf_counter()
                with open(pt + ".tmp", "wb") as f:
                    torch.save(state, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(pt + ".tmp", pt)
                fsync_dir(root)
                times["torch_save_fsync"].append(time.perf_counter() - t0)

            def dcp_save():
                d = os.path.join(root, "dcp")
                shutil.rmtree(d, ignore_errors=True)
                os.makedirs(d)
                t0 = time.perf_counter()
                dcp.save_state_dict(state, dcp.FileSystemWriter(d), no_dist=True)
                times["dcp_save"].append(time.perf_counter() - t0)

            methods = [lambda: ackpt_save("none"), lambda: ackpt_save("zstd"), torch_save]
            if dcp is not None:
                methods.append(dcp_save)
            ackpt_save("none")  # warm the staging pools (first save allocates them)
            ackpt_save("zstd")
            for v in times.values():
                v.clear()
            rng = random.Random(1)
            for _ in range(a.reps):
                order = list(methods)
                rng.shuffle(order)
                for m in order:
                    gc.collect()
                    m()

            # Resume: into a freshly built model and optimizer, as a restarted job would.
            fresh_model, fresh_opt = make_state(mib)

            def ackpt_resume(comp):
                c = ck[comp]
                t0 = time.perf_counter()
                s = c.load()
                fresh_model.load_state_dict(s["model"])
                fresh_opt.load_state_dict(s["optimizer"])
                times["ackpt_resume_" + comp].append(time.perf_counter() - t0)

            def ackpt_resume_into(comp):
                c = ck[comp]
                t0 = time.perf_counter()
                s = c.load(into={"model": fresh_model.state_dict()})
                fresh_model.load_state_dict(s["model"])
                fresh_opt.load_state_dict(s["optimizer"])
                times["ackpt_resume_into_" + comp].append(time.perf_counter() - t0)

            def torch_resume():
                t0 = time.perf_counter()
                s = torch.load(pt)
                fresh_model.load_state_dict(s["model"])
                fresh_opt.load_state_dict(s["optimizer"])
                times["torch_load_resume"].append(time.perf_counter() - t0)

            loads = [lambda: ackpt_resume("none"), lambda: ackpt_resume("zstd"), lambda: ackpt_resume_into("none"),
                     lambda: ackpt_resume_into("zstd"), torch_resume]
            for m in loads:
                m()  # warm the page cache for every file
            for v in ("ackpt_resume_none", "ackpt_resume_zstd", "ackpt_resume_into_none", "ackpt_resume_into_zstd",
                      "torch_load_resume"):
                times[v].clear()
            for _ in range(a.reps):
                order = list(loads)
                rng.shuffle(order)
                for m in order:
                    gc.collect()
                    m()
            for c in ck.values():
                c.close()
            med = {k: statistics.median(v) for k, v in times.items() if v}
            rng_ = {k: (min(v), max(v)) for k, v in times.items() if v}
            results["states"].append({"mib": mib, "bytes": size, "tensors": len(state["model"]) * 3,
                                      "median": med, "min_max": rng_, "all": times})
            print("state %d MiB (%d bytes): %s" % (mib, size, {k: round(v * 1e3, 1) for k, v in med.items()}),
                  flush=True)
            del model, opt, state, fresh_model, fresh_opt
            gc.collect()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    md = markdown(results)
    print(md)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(md)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    if a.plot:
        plot(results, a.plot)


def markdown(r):
    ms = lambda s: "%.1f" % (s * 1e3)  # noqa: E731
    lines = ["| state | method | median ms | min–max ms |", "|---|---|---:|---:|"]
    names = [("ackpt_save_none", "ackpt `save()` (none): stall from Python"),
             ("ackpt_cpp_stall_none", "  the same save, stall inside C++ `DefaultCheckpointer::save`"),
             ("ackpt_durable_none", "ackpt `save()` + `wait()` (none): durable"),
             ("ackpt_save_zstd", "ackpt `save()` (zstd -1): stall from Python"),
             ("ackpt_cpp_stall_zstd", "  the same save, stall inside C++"),
             ("ackpt_durable_zstd", "ackpt `save()` + `wait()` (zstd -1): durable"),
             ("torch_save_fsync", "`torch.save` + fsync"),
             ("dcp_save", "DCP `save_state_dict` (FileSystemWriter)"),
             ("ackpt_resume_none", "resume: ackpt `load()` + `load_state_dict` (none)"),
             ("ackpt_resume_zstd", "resume: ackpt `load()` + `load_state_dict` (zstd)"),
             ("ackpt_resume_into_none", "resume: ackpt `load(into=model.state_dict())` + `load_state_dict` (none)"),
             ("ackpt_resume_into_zstd", "resume: ackpt `load(into=...)` + `load_state_dict` (zstd)"),
             ("torch_load_resume", "resume: `torch.load` + `load_state_dict`")]
    for s in r["states"]:
        for k, label in names:
            if k in s["median"]:
                lo, hi = s["min_max"][k]
                lines.append("| %d MiB | %s | %s | %s–%s |" % (s["mib"], label, ms(s["median"][k]), ms(lo), ms(hi)))
    lines += ["", "| state | stall Python / C++ (target ≤ 1.1) | stall / torch.save+fsync (target ≤ 0.1) | "
              "durable / torch.save+fsync | resume / torch.load (target ≤ 0.5) | resume with into= / torch.load |",
              "|---|---|---|---|---|---|"]
    for s in r["states"]:
        m = s["median"]
        t = m["torch_save_fsync"]
        lines.append("| %d MiB | none %.2f, zstd %.2f | none %.3f, zstd %.3f | none %.2f, zstd %.2f | none %.2f, zstd %.2f "
                     "| none %.2f, zstd %.2f |" % (
            s["mib"], m["ackpt_save_none"] / m["ackpt_cpp_stall_none"], m["ackpt_save_zstd"] / m["ackpt_cpp_stall_zstd"],
            m["ackpt_save_none"] / t, m["ackpt_save_zstd"] / t, m["ackpt_durable_none"] / t,
            m["ackpt_durable_zstd"] / t, m["ackpt_resume_none"] / m["torch_load_resume"],
            m["ackpt_resume_zstd"] / m["torch_load_resume"], m["ackpt_resume_into_none"] / m["torch_load_resume"],
            m["ackpt_resume_into_zstd"] / m["torch_load_resume"]))
    if r["dcp_error"]:
        lines += ["", "DCP not measured: importing it failed on this torch/Python: `%s`" % r["dcp_error"][:200]]
    return "\n".join(lines) + "\n"


def plot(r, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [("ackpt_save_none", "ackpt save() none"), ("ackpt_save_zstd", "ackpt save() zstd"),
            ("ackpt_durable_none", "ackpt durable none"), ("ackpt_durable_zstd", "ackpt durable zstd"),
            ("torch_save_fsync", "torch.save+fsync"), ("dcp_save", "DCP"),
            ("ackpt_resume_none", "resume ackpt none"), ("ackpt_resume_zstd", "resume ackpt zstd"),
            ("ackpt_resume_into_none", "resume ackpt into= none"),
            ("torch_load_resume", "resume torch.load")]
    keys = [k for k in keys if all(k[0] in s["median"] for s in r["states"])]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    w = 0.8 / len(r["states"])
    for i, s in enumerate(r["states"]):
        xs = [j + i * w for j in range(len(keys))]
        ax.bar(xs, [s["median"][k] * 1e3 for k, _ in keys], w, label="%d MiB state" % s["mib"])
    ax.set_xticks([j + w * (len(r["states"]) - 1) / 2 for j in range(len(keys))])
    ax.set_xticklabels([n for _, n in keys], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ms (median of %d)" % r["reps"])
    ax.set_yscale("log")
    ax.set_title("ackpt from Python vs torch.save/torch.load (model + AdamW state, %d CPUs)" % r["cpus"])
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
