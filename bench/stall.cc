// Item 1 — how long does save() stall the trainer?
//
// For model-like states (transformer weights + Adam moments) of several sizes
// and dtypes, measured side by side in one run, repetitions interleaved so
// machine noise hits every method alike:
//   memcpy of the same bytes, 1 thread and all hardware threads (the floor)
//   ackpt save() — time inside the call (the stall); the background write is
//                  waited for outside the timed region
//   ackpt background end to end (save() entry to durable), from SaveStats
//   ackpt save(force = true) — ackpt's own blocking save
//   torch::save(tensors, path) + fsync
//   torch::pickle_save(dict) + write + fsync
//   ackpt overlapped snapshot (overlap_snapshot = true): the time inside
//                  save() (it only plans the copy), then a compute phase of
//                  --overlap-compute x the all-threads memcpy time on the
//                  calling thread (standing in for forward/backward), then
//                  the time waiting at the fence (wait_snapshot()); the
//                  background copy time comes from SaveStats. Expected:
//                  fence ~ max(0, copy - compute).
//
//   ackpt_bench_stall [--sizes 64M,256M,1G] [--dtypes fp32,bf16] [--reps 5]
//                     [--overlap-compute 0.5] [--dir DIR] [--json FILE] [--quick]
#include "bench_common.h"

using namespace bench;

namespace {

struct Method {
  std::string key, label;
};

const std::vector<Method> kMethods = {
    {"memcpy_1t", "memcpy, 1 thread"},
    {"memcpy_all", "memcpy, all threads"},
    {"ackpt_stall", "ackpt save() stall"},
    {"ackpt_end_to_end", "ackpt background, end to end"},
    {"ackpt_blocking", "ackpt save(force=true)"},
    {"torch_save_fsync", "torch::save + fsync"},
    {"pickle_save_fsync", "torch::pickle_save + write + fsync"},
    {"ackpt_overlap_stall", "ackpt overlapped save() stall"},
    {"ackpt_overlap_fence", "ackpt overlapped: wait at the fence"},
    {"ackpt_overlap_copy", "ackpt overlapped: background copy"},
};

// Busy work on the calling thread for `seconds` (stands in for the forward
// and backward passes that run while an overlapped snapshot is copied).
volatile double g_spin_sink = 0;
void Spin(double seconds) {
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  double a = 1.0;
  while (Clock::now() < end) {
    for (int i = 0; i < 1000; ++i) a = a * 0.9999999 + 1e-9;
  }
  g_spin_sink = g_spin_sink + a;
}

json RunOne(uint64_t target, torch::ScalarType dtype, int reps, double overlap_compute,
            const std::string& dir) {
  ModelState st = MakeModelState(target, dtype, 1);
  const int hw = HardwareThreads();
  std::printf("\n== state %s %s: %zu tensors, %.1f MiB (transformer + Adam), %d reps ==\n",
              SizeLabel(target).c_str(), DtypeLabel(dtype).c_str(), st.tensors.size(),
              st.bytes / 1048576.0, reps);
  std::fflush(stdout);
  FreshDir(dir);
  std::map<std::string, std::vector<double>> t;
  std::vector<double> snapshot_s;

  Buffer dst(st.bytes);
  ackpt::DefaultCheckpointerArguments args;
  args.save_dir = dir + "/ackpt";
  args.model_state_save_dir = args.save_dir;
  args.log_level = "WARN";
  std::mutex mu;
  std::vector<double> e2e;
  args.on_save = [&](const ackpt::SaveStats& s) {
    if (s.forced) return;  // the blocking saves are timed around the call
    std::lock_guard<std::mutex> lock(mu);
    e2e.push_back(s.end_to_end_seconds);
    snapshot_s.push_back(s.snapshot_seconds);
  };
  ackpt::DefaultCheckpointer ck(args);
  ck.save(st.checkpoint, 0);  // warm-up: allocates the staging pool
  ck.wait();
  // The overlapped mode, on its own checkpointer (and staging).
  ackpt::DefaultCheckpointerArguments oargs = args;
  oargs.save_dir = dir + "/ackpt_overlap";
  oargs.model_state_save_dir = oargs.save_dir;
  oargs.overlap_snapshot = true;
  std::vector<double> overlap_copy;
  oargs.on_save = [&](const ackpt::SaveStats& s) {
    if (!s.overlapped) return;
    std::lock_guard<std::mutex> lock(mu);
    overlap_copy.push_back(s.snapshot_seconds);
  };
  ackpt::DefaultCheckpointer ov(oargs);
  ov.save(st.checkpoint, 0);
  ov.wait();
  {
    std::lock_guard<std::mutex> lock(mu);
    overlap_copy.clear();
  }
  // The compute phase between save() and the fence: a fixed fraction of one
  // all-threads memcpy of the state, timed once before the repetitions.
  double compute_s = 0;
  {
    std::vector<double> warm;
    for (int i = 0; i < 2; ++i) {
      const auto c0 = Clock::now();
      CopyTensors(st.tensors, dst.data(), hw);
      warm.push_back(Since(c0));
    }
    compute_s = overlap_compute * Summarize(warm).min;
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    e2e.clear();
    snapshot_s.clear();
  }
  std::vector<torch::Tensor> list = st.tensors;
  c10::Dict<std::string, at::Tensor> dict;
  for (size_t i = 0; i < st.tensors.size(); ++i) dict.insert(st.names[i], st.tensors[i]);
  auto remove_checkpoint = [&](int64_t i) {
    std::remove((args.save_dir + "/model_" + std::to_string(i) + ".safetensors.zst").c_str());
  };
  remove_checkpoint(0);
  int64_t index = 1;
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    CopyTensors(st.tensors, dst.data(), 1);
    t["memcpy_1t"].push_back(Since(t0));

    t0 = Clock::now();
    CopyTensors(st.tensors, dst.data(), hw);
    t["memcpy_all"].push_back(Since(t0));

    t0 = Clock::now();
    ck.save(st.checkpoint, index);
    t["ackpt_stall"].push_back(Since(t0));
    ck.wait();
    remove_checkpoint(index++);  // outside the timed region (no retention work inside it)

    t0 = Clock::now();
    ck.save(st.checkpoint, index, /*force=*/true);
    t["ackpt_blocking"].push_back(Since(t0));
    remove_checkpoint(index++);

    const std::string pt = dir + "/torch_" + std::to_string(r) + ".pt";
    t0 = Clock::now();
    torch::save(list, pt);
    FsyncPath(pt);
    t["torch_save_fsync"].push_back(Since(t0));
    std::remove(pt.c_str());

    const std::string pk = dir + "/pickle_" + std::to_string(r) + ".pt";
    t0 = Clock::now();
    {
      std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
      WriteFile(pk, bytes.data(), bytes.size(), /*fsync=*/true);
    }
    t["pickle_save_fsync"].push_back(Since(t0));
    std::remove(pk.c_str());

    t0 = Clock::now();
    ov.save(st.checkpoint, index);
    t["ackpt_overlap_stall"].push_back(Since(t0));
    Spin(compute_s);
    t0 = Clock::now();
    ov.wait_snapshot();
    t["ackpt_overlap_fence"].push_back(Since(t0));
    ov.wait();
    std::remove((oargs.save_dir + "/model_" + std::to_string(index) + ".safetensors.zst").c_str());
    ++index;
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    t["ackpt_end_to_end"] = e2e;
    t["ackpt_overlap_copy"] = overlap_copy;
  }
  json out;
  out["size_label"] = SizeLabel(target);
  out["target_bytes"] = target;
  out["bytes"] = st.bytes;
  out["dtype"] = DtypeLabel(dtype);
  out["tensors"] = st.tensors.size();
  out["reps"] = reps;
  out["memcpy_threads"] = hw;
  const double gib = st.bytes / double(1 << 30);
  std::printf("%-36s %10s %10s %10s %12s\n", "what", "median ms", "min ms", "max ms", "ms per GiB");
  std::map<std::string, Stat> s;
  for (const auto& m : kMethods) {
    s[m.key] = Summarize(t[m.key]);
    out["seconds"][m.key] = ToJson(s[m.key]);
    std::printf("%-36s %10.1f %10.1f %10.1f %12.1f\n", m.label.c_str(), s[m.key].median * 1e3,
                s[m.key].min * 1e3, s[m.key].max * 1e3, s[m.key].median * 1e3 / gib);
  }
  out["seconds"]["ackpt_snapshot_copy"] = ToJson(Summarize(snapshot_s));
  auto ratio = [&](const char* a, const char* b) { return s[a].median / s[b].median; };
  json& rt = out["ratios"];
  rt["stall_over_memcpy_1t"] = ratio("ackpt_stall", "memcpy_1t");
  rt["stall_over_memcpy_all"] = ratio("ackpt_stall", "memcpy_all");
  rt["stall_over_torch_save"] = ratio("ackpt_stall", "torch_save_fsync");
  rt["stall_over_pickle_save"] = ratio("ackpt_stall", "pickle_save_fsync");
  rt["blocking_over_torch_save"] = ratio("ackpt_blocking", "torch_save_fsync");
  // Overlapped mode: save() against the memcpy floor (target <= 0.1), and the
  // fence against what is left of the copy after the compute phase.
  const double floor = std::min(s["memcpy_1t"].median, s["memcpy_all"].median);
  const double left = std::max(0.0, s["ackpt_overlap_copy"].median - compute_s);
  out["overlap_compute_seconds"] = compute_s;
  out["overlap_expected_fence_seconds"] = left;
  rt["overlap_stall_over_memcpy"] = s["ackpt_overlap_stall"].median / floor;
  rt["overlap_fence_over_memcpy"] = s["ackpt_overlap_fence"].median / floor;
  rt["overlap_stall_plus_fence_over_stall"] =
      (s["ackpt_overlap_stall"].median + s["ackpt_overlap_fence"].median) / s["ackpt_stall"].median;
  std::printf("stall/memcpy(1t) = %.2f   stall/memcpy(all) = %.2f   (target <= 1.3)\n",
              rt["stall_over_memcpy_1t"].get<double>(), rt["stall_over_memcpy_all"].get<double>());
  std::printf("stall/torch::save+fsync = %.3f (target <= 0.1)   blocking/torch::save = %.2f\n",
              rt["stall_over_torch_save"].get<double>(),
              rt["blocking_over_torch_save"].get<double>());
  std::printf(
      "overlapped: save() %.2f ms = %.3f x memcpy (target <= 0.1); compute %.1f ms; fence %.1f ms "
      "(copy %.1f ms - compute = %.1f ms expected)\n",
      s["ackpt_overlap_stall"].median * 1e3, rt["overlap_stall_over_memcpy"].get<double>(),
      compute_s * 1e3, s["ackpt_overlap_fence"].median * 1e3, s["ackpt_overlap_copy"].median * 1e3,
      left * 1e3);
  std::fflush(stdout);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Args a(argc, argv,
         "usage: ackpt_bench_stall [--sizes 64M,256M,1G] [--dtypes fp32,bf16] [--reps 5] "
         "[--overlap-compute 0.5] [--dir DIR] [--json FILE] [--quick]",
         {"quick"});
  const bool quick = a.Flag("quick");
  auto sizes = a.List("sizes", quick ? "8M" : "64M,256M,1G");
  auto dtypes = a.List("dtypes", "fp32,bf16");
  const int reps = std::max(1, static_cast<int>(a.Num("reps", quick ? 2 : 5)));
  const double overlap_compute = a.Num("overlap-compute", 0.5);
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-stall");
  const std::string json_out = a.Str("json", "");
  a.Done();

  json j = RunInfo("stall", quick);
  j["methods"] = json::array();
  for (const auto& m : kMethods) j["methods"].push_back({{"key", m.key}, {"label", m.label}});
  j["runs"] = json::array();
  for (const auto& size : sizes) {
    for (const auto& dt : dtypes) {
      j["runs"].push_back(RunOne(ParseBytes(size), ParseDtype(dt), reps, overlap_compute, dir));
      WriteJson(json_out, j);  // partial results survive a later failure
    }
  }
  RemoveTree(dir);
  WriteJson(json_out, j);
  return 0;
}
