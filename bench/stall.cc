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
//
//   ackpt_bench_stall [--sizes 64M,256M,1G] [--dtypes fp32,bf16] [--reps 5]
//                     [--dir DIR] [--json FILE] [--quick]
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
};

json RunOne(uint64_t target, torch::ScalarType dtype, int reps, const std::string& dir) {
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
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    t["ackpt_end_to_end"] = e2e;
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
  std::printf("stall/memcpy(1t) = %.2f   stall/memcpy(all) = %.2f   (target <= 1.3)\n",
              rt["stall_over_memcpy_1t"].get<double>(), rt["stall_over_memcpy_all"].get<double>());
  std::printf("stall/torch::save+fsync = %.3f (target <= 0.1)   blocking/torch::save = %.2f\n",
              rt["stall_over_torch_save"].get<double>(),
              rt["blocking_over_torch_save"].get<double>());
  std::fflush(stdout);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Args a(argc, argv,
         "usage: ackpt_bench_stall [--sizes 64M,256M,1G] [--dtypes fp32,bf16] [--reps 5] [--dir "
         "DIR] [--json FILE] "
         "[--quick]",
         {"quick"});
  const bool quick = a.Flag("quick");
  auto sizes = a.List("sizes", quick ? "8M" : "64M,256M,1G");
  auto dtypes = a.List("dtypes", "fp32,bf16");
  const int reps = std::max(1, static_cast<int>(a.Num("reps", quick ? 2 : 5)));
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-stall");
  const std::string json_out = a.Str("json", "");
  a.Done();

  json j = RunInfo("stall", quick);
  j["methods"] = json::array();
  for (const auto& m : kMethods) j["methods"].push_back({{"key", m.key}, {"label", m.label}});
  j["runs"] = json::array();
  for (const auto& size : sizes) {
    for (const auto& dt : dtypes) {
      j["runs"].push_back(RunOne(ParseBytes(size), ParseDtype(dt), reps, dir));
      WriteJson(json_out, j);  // partial results survive a later failure
    }
  }
  RemoveTree(dir);
  WriteJson(json_out, j);
  return 0;
}
