// Issue 16 — a state larger than the staging memory: stall and end-to-end
// time of save() against the staging budget, next to the floors, in one run.
//
// For one model-like state and budgets of state / ratio (ratios 0.5, 1, 2,
// 4, 10 by default), repetitions interleaved so machine noise hits every
// method alike:
//   memcpy of the same bytes, 1 thread and all hardware threads (the floor)
//   torch::save(tensors) + fsync (what a LibTorch user would otherwise do)
//   ackpt save(): the time inside the call (the stall) and save() entry to
//                 durable (SaveStats::end_to_end_seconds), with the bytes it
//                 streamed (copied into chunks it had to wait for), the
//                 peak staging memory (the pool's counters) and the process's
//                 peak RSS above its level before the checkpointer existed.
// Target at budget = state / 4: stall <= 1.1 x (the persist time of the bytes
// that did not fit: (state - budget) / state x the background persist time
// of a save that fit, from the ratio 0.5 run) + one memcpy; peak RSS <= live
// state + budget + 64 MiB.
//
//   ackpt_bench_ring [--size 256M] [--ratios 0.5,1,2,4,10] [--reps 3]
//                    [--compression zstd|none] [--dir DIR] [--json FILE] [--quick]
#include "bench_common.h"

using namespace bench;

int main(int argc, char** argv) {
  Args a(argc, argv,
         "usage: ackpt_bench_ring [--size 256M] [--ratios 0.5,1,2,4,10] [--reps 3] "
         "[--compression zstd|none] [--dir DIR] [--json FILE] [--quick]",
         {"quick"});
  const bool quick = a.Flag("quick");
  const uint64_t size = ParseBytes(a.Str("size", quick ? "16M" : "256M"));
  std::vector<double> ratios;
  for (const auto& r : a.List("ratios", quick ? "0.5,4" : "0.5,1,2,4,10"))
    ratios.push_back(std::stod(r));
  const int reps = std::max(1, static_cast<int>(a.Num("reps", quick ? 1 : 3)));
  const std::string compression = a.Str("compression", "zstd");
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-ring");
  const std::string json_out = a.Str("json", "");
  a.Done();

  ModelState st = MakeModelState(size, torch::kFloat32, 3);
  const int hw = HardwareThreads();
  std::printf("state %.1f MiB (%zu tensors, fp32), compression %s, budgets state / {",
              st.bytes / 1048576.0, st.tensors.size(), compression.c_str());
  for (double r : ratios) std::printf(" %g", r);
  std::printf(" }, %d reps\n", reps);
  std::fflush(stdout);
  FreshDir(dir);
  json j = RunInfo("ring", quick);
  j["bytes"] = st.bytes;
  j["tensors"] = st.tensors.size();
  j["compression"] = compression;
  j["reps"] = reps;

  Buffer dst(st.bytes);
  std::vector<torch::Tensor> list = st.tensors;
  std::map<std::string, std::vector<double>> floors;
  auto measure_floors = [&](int r) {
    auto t0 = Clock::now();
    CopyTensors(st.tensors, dst.data(), 1);
    floors["memcpy_1t"].push_back(Since(t0));
    t0 = Clock::now();
    CopyTensors(st.tensors, dst.data(), hw);
    floors["memcpy_all"].push_back(Since(t0));
    const std::string pt = dir + "/torch_" + std::to_string(r) + ".pt";
    t0 = Clock::now();
    torch::save(list, pt);
    FsyncPath(pt);
    floors["torch_save_fsync"].push_back(Since(t0));
    std::remove(pt.c_str());
  };

  json runs = json::array();
  int floor_rep = 0;
  for (double ratio : ratios) {
    const uint64_t budget = static_cast<uint64_t>(double(st.bytes) / ratio);
    const std::string sdir = dir + "/ackpt";
    FreshDir(sdir);
    ResetPeakRss();
    const uint64_t rss0 = RssBytes();
    std::vector<double> stall, e2e, persist, streamed, waits;
    uint64_t peak = 0, chunk = 0, budget_used = 0;
    uint64_t peak_rss = 0;
    {
      ackpt::DefaultCheckpointerArguments args;
      args.save_dir = sdir;
      args.model_state_save_dir = sdir;
      args.log_level = "WARN";
      args.staging_budget_bytes = budget;
      if (compression == "none") args.compression = ackpt::Compression::kNone;
      std::mutex mu;
      ackpt::SaveStats last;
      args.on_save = [&](const ackpt::SaveStats& s) {
        std::lock_guard<std::mutex> lock(mu);
        last = s;
      };
      ackpt::DefaultCheckpointer ck(args);
      ck.save(st.checkpoint, 0);  // warm-up: the ring's chunks are allocated once
      ck.wait();
      for (int r = 0; r < reps; ++r) {
        measure_floors(floor_rep++);
        const int64_t index = r + 1;
        const auto t0 = Clock::now();
        ck.save(st.checkpoint, index);
        stall.push_back(Since(t0));
        ck.wait();
        {
          std::lock_guard<std::mutex> lock(mu);
          e2e.push_back(last.end_to_end_seconds);
          persist.push_back(last.end_to_end_seconds - last.stall_seconds);
          streamed.push_back(static_cast<double>(last.streamed_bytes));
          waits.push_back(static_cast<double>(last.chunk_waits));
        }
        RemoveTree(sdir + "/model_" + std::to_string(index) + ".safetensors.zst");
        RemoveTree(sdir + "/model_" + std::to_string(index) + ".safetensors");
      }
      const auto c = ck.counters();
      peak = c.staging_bytes_peak;
      chunk = c.staging_chunk_bytes;
      budget_used = c.staging_budget_bytes;
      peak_rss = PeakRssBytes();
    }
    json rj;
    rj["ratio"] = ratio;
    rj["budget_bytes"] = budget;
    rj["pool_budget_bytes"] = budget_used;
    rj["chunk_bytes"] = chunk;
    rj["staging_peak_bytes"] = peak;
    rj["peak_rss_over_start_bytes"] = peak_rss > rss0 ? peak_rss - rss0 : 0;
    rj["stall_seconds"] = ToJson(Summarize(stall));
    rj["end_to_end_seconds"] = ToJson(Summarize(e2e));
    rj["persist_seconds"] = ToJson(Summarize(persist));
    rj["streamed_bytes"] = Summarize(streamed).median;
    rj["chunk_waits"] = Summarize(waits).median;
    runs.push_back(rj);
    std::printf(
        "budget %6.1f MiB (state/%-4g): stall %8.1f ms  end-to-end %8.1f ms  streamed %6.1f MiB  "
        "staging peak %6.1f MiB  RSS +%6.1f MiB\n",
        budget / 1048576.0, ratio, Summarize(stall).median * 1e3, Summarize(e2e).median * 1e3,
        Summarize(streamed).median / 1048576.0, peak / 1048576.0,
        rj["peak_rss_over_start_bytes"].get<uint64_t>() / 1048576.0);
    std::fflush(stdout);
    j["runs"] = runs;
    WriteJson(json_out, j);
  }
  json fl;
  for (const auto& kv : floors) fl[kv.first] = ToJson(Summarize(kv.second));
  j["floors"] = fl;
  const double memcpy_s =
      std::min(Summarize(floors["memcpy_1t"]).median, Summarize(floors["memcpy_all"]).median);
  const double torch_s = Summarize(floors["torch_save_fsync"]).median;
  std::printf("memcpy (best of 1 / %d threads) %.1f ms; torch::save + fsync %.1f ms\n", hw,
              memcpy_s * 1e3, torch_s * 1e3);
  // Targets, from the same run.
  double fit_persist = 0;
  for (const auto& r : runs)
    if (r["ratio"].get<double>() <= 0.5) fit_persist = r["persist_seconds"]["median"].get<double>();
  json tg = json::array();
  for (auto& r : runs) {
    const double ratio = r["ratio"].get<double>();
    const double s = r["stall_seconds"]["median"].get<double>();
    r["stall_over_memcpy"] = s / memcpy_s;
    r["stall_over_torch_save"] = s / torch_s;
    r["end_to_end_over_torch_save"] = r["end_to_end_seconds"]["median"].get<double>() / torch_s;
    if (ratio <= 0.5) {
      tg.push_back({{"what", "budget >= 2 x state: stall <= 1.3 x memcpy"},
                    {"value", s / memcpy_s},
                    {"met", s / memcpy_s <= 1.3}});
    }
    if (ratio == 4 && fit_persist > 0) {
      const double not_fit = 1.0 - 1.0 / ratio;
      const double bound = 1.1 * not_fit * fit_persist + memcpy_s;
      const double rss = static_cast<double>(r["peak_rss_over_start_bytes"].get<uint64_t>());
      const double rss_bound = double(r["budget_bytes"].get<uint64_t>()) + 64.0 * 1048576;
      tg.push_back(
          {{"what", "budget = state / 4: stall <= 1.1 x persist(bytes not fitting) + memcpy"},
           {"value", s},
           {"bound", bound},
           {"met", s <= bound}});
      tg.push_back({{"what", "budget = state / 4: peak RSS growth <= budget + 64 MiB"},
                    {"value", rss},
                    {"bound", rss_bound},
                    {"met", rss <= rss_bound}});
    }
  }
  j["runs"] = runs;
  j["fit_persist_seconds"] = fit_persist;
  j["targets"] = tg;
  for (const auto& t : tg)
    std::printf("target %-70s %s\n", t["what"].get<std::string>().c_str(),
                t["met"].get<bool>() ? "met" : "MISSED");
  RemoveTree(dir);
  WriteJson(json_out, j);
  return 0;
}
