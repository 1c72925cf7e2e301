// Cost of a save against the number of checkpoints kept in the directory.
//
// Since the directory has an in-memory catalog (checkpoint_dir.h), a save
// opens no existing checkpoint: retention decides from the catalog. This
// driver measures the whole background work of a save (encode, write, fsync,
// rename, catalog update, retention pass) with 2 and with 200 checkpoints
// kept, in one run; the target is a ratio <= 1.1.
//
//   ackpt_bench_retention [--kept 2,200] [--saves 30] [--size 1M] [--dir D] [--json F] [--quick]
#include "bench_common.h"

int main(int argc, char** argv) {
  bench::Args a(
      argc, argv,
      "usage: ackpt_bench_retention [--kept 2,200] [--saves N] [--size BYTES] [--dir DIR] "
      "[--json FILE] [--quick]",
      {"quick"});
  const bool quick = a.Flag("quick");
  std::vector<int> kept;
  for (const auto& k : a.List("kept", quick ? "2,40" : "2,200")) kept.push_back(std::stoi(k));
  const int saves = static_cast<int>(a.Num("saves", quick ? 5 : 30));
  const uint64_t size = bench::ParseBytes(a.Str("size", quick ? "256K" : "1M"));
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-retention");
  const std::string json_path = a.Str("json", "");
  a.Done();

  bench::ModelState st = bench::MakeModelState(size, torch::kFloat32);
  bench::json j = bench::RunInfo("retention", quick);
  j["state_bytes"] = st.bytes;
  j["saves"] = saves;
  std::printf("%-6s %-28s %-28s\n", "kept", "background per save, median", "(min - max)");
  std::map<int, double> medians;
  for (int k : kept) {
    const std::string d = dir + "/kept_" + std::to_string(k);
    bench::FreshDir(d);
    ackpt::DefaultCheckpointerArguments args;
    args.save_dir = d;
    args.model_state_save_dir = "";
    args.log_level = "WARN";
    args.retention.keep_last = k;
    {
      ackpt::DefaultCheckpointer fill(args);
      for (int i = 0; i < k; ++i) fill.save(st.checkpoint, i);
      fill.wait();
    }
    ackpt::DefaultCheckpointer ck(args);  // one scan of the k kept headers
    // A forced save returns once the file is durable and the retention pass
    // after it has run: its time is the whole background work of the save
    // plus the (small) snapshot copy.
    std::vector<double> t;
    for (int i = k; i < k + saves; ++i) {
      const auto t0 = bench::Clock::now();
      ck.save(st.checkpoint, i, /*force=*/true);
      t.push_back(bench::Since(t0));
    }
    const bench::Stat s = bench::Summarize(t);
    medians[k] = s.median;
    j["results"]["kept_" + std::to_string(k)] = bench::ToJson(s);
    std::printf("%-6d %-28.2f %.2f - %.2f ms\n", k, s.median * 1e3, s.min * 1e3, s.max * 1e3);
    bench::RemoveTree(d);
  }
  if (kept.size() >= 2 && medians[kept.front()] > 0) {
    const double ratio = medians[kept.back()] / medians[kept.front()];
    j["ratio"] = ratio;
    j["target"] = 1.1;
    j["met"] = ratio <= 1.1;
    std::printf("ratio kept %d / kept %d: %.3f (target <= 1.1: %s)\n", kept.back(), kept.front(),
                ratio, ratio <= 1.1 ? "met" : "missed");
  }
  bench::WriteJson(json_path, j);
  return 0;
}
