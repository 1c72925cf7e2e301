// Incremental checkpoints (issue 26) on a LoRA-shaped state: a frozen
// backbone (>= 95 % of the bytes) and a trained adapter with its two Adam
// moments. In one run, against the same state saved in full:
//  - bytes written per incremental checkpoint vs the changed tensors' bytes
//    (target <= 1.1x);
//  - save() stall vs a memcpy of the changed bytes only (target <= 1.2x);
//  - load of the incremental checkpoint (following its references into the
//    base) vs load of a full checkpoint of the same state (target >= 0.9x);
//  - staging memory the save used vs the changed bytes (target <= 1.2x).
// Uncompressed by default (the byte counts are then exact); medians of --reps.
//
//   ackpt_bench_incremental [--size 1G] [--adapter-fraction 0.01] [--reps 7]
//                           [--compression none|zstd] [--dir D] [--json F] [--quick]
#include "bench_common.h"

namespace {

struct LoraState {
  std::vector<torch::Tensor> frozen, adapter, moments;
  // without_backbone: the changed tensors alone (what a save of only them costs).
  ackpt::Checkpoint checkpoint(bool without_backbone = false) const {
    ackpt::Checkpoint c;
    ackpt::StateDict backbone, lora, opt;
    for (size_t i = 0; i < frozen.size() && !without_backbone; ++i)
      backbone.set("w" + std::to_string(i), frozen[i]);
    for (size_t i = 0; i < adapter.size(); ++i) lora.set("a" + std::to_string(i), adapter[i]);
    for (size_t i = 0; i < moments.size(); ++i) opt.set("m" + std::to_string(i), moments[i]);
    c.module_interface_state.set("backbone", std::move(backbone));
    c.module_interface_state.set("lora", std::move(lora));
    c.trainer_state.set("optimizer", std::move(opt));
    return c;
  }
  void Step() {
    torch::NoGradGuard g;
    for (auto& t : adapter) t.add_(1e-3);
    for (auto& t : moments) t.mul_(0.9).add_(1e-3);
  }
  std::vector<torch::Tensor> changed() const {
    std::vector<torch::Tensor> v = adapter;
    v.insert(v.end(), moments.begin(), moments.end());
    return v;
  }
};

uint64_t BytesOf(const std::vector<torch::Tensor>& v) {
  uint64_t n = 0;
  for (const auto& t : v) n += t.nbytes();
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  bench::Args a(argc, argv,
                "usage: ackpt_bench_incremental [--size BYTES] [--adapter-fraction F] [--reps N] "
                "[--compression none|zstd] [--dir DIR] [--json FILE] [--quick]",
                {"quick"});
  const bool quick = a.Flag("quick");
  const uint64_t size = bench::ParseBytes(a.Str("size", quick ? "32M" : "1G"));
  const double fraction = a.Num("adapter-fraction", 0.01);
  const int reps = static_cast<int>(a.Num("reps", quick ? 2 : 7));
  const std::string compression = a.Str("compression", "none");
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-incremental");
  const std::string json_path = a.Str("json", "");
  a.Done();
  torch::set_num_threads(1);

  // 16 frozen matrices; per layer an adapter of `fraction` of its bytes
  // (in two factors) and its two Adam moments.
  LoraState st;
  const int layers = 16;
  const int64_t cols = 1024;
  const int64_t rows = std::max<int64_t>(1, static_cast<int64_t>(size / layers / 4 / cols));
  const int64_t rank =
      std::max<int64_t>(1, static_cast<int64_t>(fraction * rows * cols / 2 / cols));
  for (int i = 0; i < layers; ++i) {
    st.frozen.push_back(torch::randn({rows, cols}));
    st.adapter.push_back(torch::randn({rank, cols}));
    st.adapter.push_back(torch::randn({rank, cols}));
  }
  for (const auto& t : st.adapter) {
    st.moments.push_back(torch::zeros_like(t));
    st.moments.push_back(torch::zeros_like(t));
  }
  const uint64_t frozen_bytes = BytesOf(st.frozen), changed_bytes = BytesOf(st.changed());
  const uint64_t total = frozen_bytes + changed_bytes;
  std::printf("state: %s, %.2f %% frozen (%s changed per step), %s\n",
              bench::SizeLabel(total).c_str(), 100.0 * frozen_bytes / total,
              bench::SizeLabel(changed_bytes).c_str(), compression.c_str());

  bench::json j = bench::RunInfo("incremental", quick);
  j["state_bytes"] = total;
  j["frozen_bytes"] = frozen_bytes;
  j["changed_bytes"] = changed_bytes;
  j["compression"] = compression;
  j["reps"] = reps;

  // Baseline: a memcpy of the changed tensors alone, with the threads the
  // snapshot copy uses (snapshot_threads = 0: up to 4, the hardware's).
  const int copy_threads = std::min(4, bench::HardwareThreads());
  bench::Buffer scratch(changed_bytes);
  std::vector<double> memcpy_s;
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = bench::Clock::now();
    bench::CopyTensors(st.changed(), scratch.data(), copy_threads);
    if (r > 0) memcpy_s.push_back(bench::Since(t0));  // the first warms the pages
  }

  // And of the whole state, for the full save's stall.
  std::vector<torch::Tensor> everything = st.frozen;
  for (const auto& t : st.changed()) everything.push_back(t);
  std::vector<double> memcpy_full_s;
  {
    bench::Buffer all(total);
    for (int r = 0; r < std::min(reps, 3) + 1; ++r) {
      const auto t0 = bench::Clock::now();
      bench::CopyTensors(everything, all.data(), copy_threads);
      if (r > 0) memcpy_full_s.push_back(bench::Since(t0));
    }
  }

  // One checkpointer per mode, each in its own directory.
  struct Mode {
    std::string name;
    bool incremental;
    bool changed_only;
    std::vector<double> stall, load;
    std::vector<uint64_t> file_bytes, staged, staging_chunks;
    std::string last_path;
  };
  // "changed_only": a full save of a state that holds only the changed
  // tensors, i.e. the engine's own cost for those bytes.
  std::vector<Mode> modes{{"full", false, false, {}, {}, {}, {}, {}, ""},
                          {"incremental", true, false, {}, {}, {}, {}, {}, ""},
                          {"changed_only", false, true, {}, {}, {}, {}, {}, ""}};
  for (Mode& m : modes) {
    const std::string d = dir + "/" + m.name;
    bench::FreshDir(d);
    std::mutex mu;
    std::vector<ackpt::SaveStats> stats;
    ackpt::DefaultCheckpointerArguments args;
    args.save_dir = d;
    args.model_state_save_dir = "";
    args.log_level = "WARN";
    args.compression =
        compression == "zstd" ? ackpt::Compression::kZstd : ackpt::Compression::kNone;
    args.incremental.enabled = m.incremental;
    args.retention.keep_last = 2;
    args.staging_budget_bytes = 2 * total;  // the first (full) save fits
    args.on_save = [&](const ackpt::SaveStats& s) {
      std::lock_guard<std::mutex> l(mu);
      stats.push_back(s);
    };
    ackpt::DefaultCheckpointer ck(args);
    uint64_t chunk = 0;
    for (int i = 0; i <= reps; ++i) {
      const ackpt::Checkpoint c = st.checkpoint(m.changed_only);
      const auto t0 = bench::Clock::now();
      ck.save(c, i);
      const double stall = bench::Since(t0);
      ck.wait();
      chunk = ck.counters().staging_chunk_bytes;
      // Save 0 is the first (full) one either way: it is the base.
      if (i > 0) m.stall.push_back(stall);
      st.Step();
    }
    ck.wait();
    for (size_t i = 1; i < stats.size(); ++i) {
      m.file_bytes.push_back(stats[i].file_bytes);
      m.staged.push_back(stats[i].bytes);
      m.staging_chunks.push_back(stats[i].staging_chunks * chunk);
    }
    m.last_path = stats.back().path;
  }
  // Loads, hot: into the live tensors, checksums verified, alternating the
  // two files so the page cache treats them alike.
  std::map<std::string, torch::Tensor> into = ackpt::FlattenTensors(
      ackpt::StateDict{{"module_interface_state", st.checkpoint().module_interface_state},
                       {"trainer_state", st.checkpoint().trainer_state}});
  for (int r = 0; r < reps + 1; ++r) {
    for (Mode& m : modes) {
      if (m.changed_only) continue;
      const auto t0 = bench::Clock::now();
      ackpt::CheckpointReader::Open(m.last_path)->ReadInto(into);
      if (r > 0) m.load.push_back(bench::Since(t0));
    }
  }

  auto median_u = [](std::vector<uint64_t> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : static_cast<double>(v[v.size() / 2]);
  };
  const bench::Stat mc = bench::Summarize(memcpy_s);
  j["memcpy_changed_seconds"] = bench::ToJson(mc);
  const bench::Stat mf = bench::Summarize(memcpy_full_s);
  j["memcpy_full_seconds"] = bench::ToJson(mf);
  std::printf("%-12s %12s %12s %12s %12s\n", "mode", "stall ms", "file bytes", "staged", "load ms");
  for (Mode& m : modes) {
    const bench::Stat s = bench::Summarize(m.stall), l = bench::Summarize(m.load);
    j["results"][m.name] = {{"stall_seconds", bench::ToJson(s)},
                            {"load_seconds", bench::ToJson(l)},
                            {"file_bytes_median", median_u(m.file_bytes)},
                            {"staged_bytes_median", median_u(m.staged)},
                            {"staging_chunk_bytes_median", median_u(m.staging_chunks)}};
    std::printf("%-12s %12.2f %12.0f %12.0f %12.2f\n", m.name.c_str(), s.median * 1e3,
                median_u(m.file_bytes), median_u(m.staged), l.median * 1e3);
  }
  const Mode& full = modes[0];
  const Mode& inc = modes[1];
  const double inc_stall = bench::Summarize(inc.stall).median;
  const double full_load = bench::Summarize(full.load).median;
  const double inc_load = bench::Summarize(inc.load).median;
  bench::json ratios = {
      {"bytes_written_over_changed", median_u(inc.file_bytes) / changed_bytes},
      {"stall_over_memcpy_changed", mc.median > 0 ? inc_stall / mc.median : 0.0},
      {"load_speed_over_full", inc_load > 0 ? full_load / inc_load : 0.0},
      {"staged_over_changed", median_u(inc.staged) / changed_bytes},
      {"staging_chunks_over_changed", median_u(inc.staging_chunks) / changed_bytes},
      {"full_stall_over_incremental",
       inc_stall > 0 ? bench::Summarize(full.stall).median / inc_stall : 0.0},
      {"full_stall_over_memcpy_full",
       mf.median > 0 ? bench::Summarize(full.stall).median / mf.median : 0.0},
      {"incremental_stall_minus_memcpy_seconds", inc_stall - mc.median},
      {"changed_only_stall_over_memcpy_changed",
       mc.median > 0 ? bench::Summarize(modes[2].stall).median / mc.median : 0.0},
      {"incremental_stall_over_changed_only",
       bench::Summarize(modes[2].stall).median > 0
           ? inc_stall / bench::Summarize(modes[2].stall).median
           : 0.0}};
  j["ratios"] = ratios;
  std::printf(
      "memcpy of the changed bytes: %.2f ms\n"
      "bytes written / changed bytes:        %.3f (target <= 1.1)\n"
      "stall / memcpy of changed bytes:      %.3f (target <= 1.2)\n"
      "load speed, incremental / full:       %.3f (target >= 0.9)\n"
      "staged bytes / changed bytes:         %.3f; staging chunks held / changed: %.3f (target "
      "<= 1.2)\n"
      "full save stall / incremental stall:  %.1f\n"
      "full save stall / memcpy of the state: %.3f (memcpy %.1f ms)\n"
      "save of the changed tensors alone / memcpy of them: %.3f; incremental / that: %.3f\n",
      mc.median * 1e3, ratios["bytes_written_over_changed"].get<double>(),
      ratios["stall_over_memcpy_changed"].get<double>(),
      ratios["load_speed_over_full"].get<double>(), ratios["staged_over_changed"].get<double>(),
      ratios["staging_chunks_over_changed"].get<double>(),
      ratios["full_stall_over_incremental"].get<double>(),
      ratios["full_stall_over_memcpy_full"].get<double>(), mf.median * 1e3,
      ratios["changed_only_stall_over_memcpy_changed"].get<double>(),
      ratios["incremental_stall_over_changed_only"].get<double>());
  bench::WriteJson(json_path, j);
  bench::RemoveTree(dir);
  return 0;
}
