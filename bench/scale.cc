// Issue 22 item 5 — the scale curve: how the stall, the persist time, the
// load time and the peak RSS grow with the state size (64 MiB .. 8 GiB by
// default), with ackpt's default options, next to same-size baselines.
//
// Every size runs in three fresh child processes (this program re-executed
// with --child), so each peak RSS belongs to one size and one kind of work:
//   save      DefaultCheckpointer with default options (zstd, automatic
//             staging budget: twice the state but at most a quarter of the
//             memory, so a large state streams through the ring): a first
//             save (the staging chunks are allocated in it) and --reps more;
//             per save the time inside save() (the stall) and save() entry to
//             wait() returning (durable: persist, as GB/s of state bytes).
//             The newest checkpoint stays on disk for the load child.
//   load      DefaultCheckpointer::load(LoadTargets) into existing tensors of
//             the same shapes (what a resuming trainer holds): hot page cache,
//             then cold (posix_fadvise DONTNEED first, as bench_common.h does).
//   baseline  memcpy of the state into a pre-faulted buffer (1 thread and all
//             hardware threads: the stall floor), torch::save + fsync (the
//             synchronous save a LibTorch user would otherwise do; skipped
//             above --torch-max), write(2) + fdatasync of the same bytes (the
//             persist baseline), then, with the state freed, pread of that
//             file into a pre-faulted buffer, hot and cold (the load
//             baseline). Every buffer is freed before the next measurement,
//             so the child never holds more than the state plus one copy.
// Peak RSS is VmHWM, reset (/proc/self/clear_refs) right after the state or
// the load targets exist, so "extra" is what the operation added above the
// live state; wait4's ru_maxrss of the whole child is recorded as well.
// Sizes whose files (2 x state + 1 GiB) do not fit the free disk space, or
// whose children (2 x state + 1 GiB) do not fit MemAvailable, are skipped and
// the JSON says why.
//
//   ackpt_bench_scale [--sizes 64M,256M,1G,2G,4G,8G] [--reps 3] [--torch-max 2G]
//                     [--dir DIR] [--json FILE] [--quick]
#include <sys/statvfs.h>

#include "bench_common.h"

using namespace bench;

namespace {

// The tensors' bytes, in order, into one new file with write(2), then fdatasync.
void WriteTensors(const std::vector<torch::Tensor>& tensors, const std::string& path) {
  int fd = CreateFileForWrite(path);
  for (const auto& t : tensors) WriteAll(fd, path, t.data_ptr(), t.nbytes());
  ::fdatasync(fd);
  ::close(fd);
}

uint64_t MemAvailableBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

uint64_t FreeDiskBytes(const std::string& dir) {
  struct statvfs v;
  if (::statvfs(dir.c_str(), &v) != 0) return 0;
  return static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
}

json Rss(uint64_t before, uint64_t state_bytes, bool reset) {
  const uint64_t peak = PeakRssBytes();
  return {{"peak_reset", reset},
          {"before_bytes", before},
          {"peak_bytes", peak},
          {"extra_bytes", peak > before ? peak - before : 0},
          {"peak_minus_state_bytes", peak > state_bytes ? peak - state_bytes : 0}};
}

json SecondsJson(const std::vector<double>& s, double bytes) {
  json j = ToJson(Summarize(s));
  j["gbps"] = ToJson(Rate(Summarize(s), bytes / 1e9));
  return j;
}

// ---- children ----------------------------------------------------------------------
json SaveChild(uint64_t size, int reps, const std::string& dir) {
  ModelState st = MakeModelState(size, torch::kFloat32, 3);
  const bool reset = ResetPeakRss();
  const uint64_t before = RssBytes();
  ackpt::DefaultCheckpointerArguments args;  // ackpt's defaults, but for where and how loud
  args.save_dir = dir;
  args.model_state_save_dir = dir;
  args.log_level = "WARN";
  LastStats last;
  args.on_save = last.Callback();
  json r;
  std::vector<double> stall, persist, streamed, waits;
  double first_stall = 0, first_persist = 0;
  uint64_t first_streamed = 0, file_bytes = 0;
  std::string prev;
  {
    ackpt::DefaultCheckpointer ck(args);
    for (int i = 0; i <= reps; ++i) {
      const auto t0 = Clock::now();
      ck.save(st.checkpoint, i);
      const double s = Since(t0);
      ck.wait();
      const double p = Since(t0);
      const ackpt::SaveStats ss = last.Get();
      if (!ss.ok) throw std::runtime_error("save failed: " + ss.error);
      file_bytes = ss.file_bytes;
      if (i == 0) {
        first_stall = s;
        first_persist = p;
        first_streamed = ss.streamed_bytes;
      } else {
        stall.push_back(s);
        persist.push_back(p);
        streamed.push_back(double(ss.streamed_bytes));
        waits.push_back(double(ss.chunk_waits));
      }
      // Only the newest checkpoint stays: the disk holds at most two at once.
      if (!prev.empty()) std::remove(prev.c_str());
      prev = ss.path;
      std::printf("  save %d: stall %.3f s, durable %.3f s, streamed %.1f MiB\n", i, s, p,
                  ss.streamed_bytes / 1048576.0);
      std::fflush(stdout);
    }
    const auto c = ck.counters();
    r["staging_budget_bytes"] = c.staging_budget_bytes;
    r["staging_peak_bytes"] = c.staging_bytes_peak;
    r["staging_chunk_bytes"] = c.staging_chunk_bytes;
    r["saves_streamed"] = c.saves_streamed;
    r["rss"] = Rss(before, st.bytes, reset);
  }
  r["state_bytes"] = st.bytes;
  r["tensors"] = st.tensors.size();
  r["file_bytes"] = file_bytes;
  r["path"] = prev;
  r["first_stall_seconds"] = first_stall;
  r["first_persist_seconds"] = first_persist;
  r["first_streamed_bytes"] = first_streamed;
  r["stall_seconds"] = SecondsJson(stall, double(st.bytes));
  r["persist_seconds"] = SecondsJson(persist, double(st.bytes));
  r["streamed_bytes"] = Summarize(streamed).median;
  r["chunk_waits"] = Summarize(waits).median;
  return r;
}

json LoadChild(uint64_t size, int reps, const std::string& dir) {
  // Targets of the same shapes (another seed: the load must overwrite them).
  ModelState st = MakeModelState(size, torch::kFloat32, 5);
  const bool reset = ResetPeakRss();
  const uint64_t before = RssBytes();
  ackpt::DefaultCheckpointerArguments args;
  args.checkpoint = false;  // read only
  args.save_dir = dir;
  args.model_state_save_dir = dir;
  args.log_level = "WARN";
  ackpt::LoadTargets targets;
  targets.into = st.checkpoint;
  const at::Tensor& probe = st.checkpoint.module_interface_state.get_tensor("embed.weight", "load");
  std::vector<double> hot, cold;
  bool in_place = true, dropped = true;
  std::string path;
  json r;
  {
    ackpt::DefaultCheckpointer ck(args);
    auto load = [&](std::vector<double>& into) {
      const auto t0 = Clock::now();
      ackpt::Checkpoint c = ck.load(targets);
      into.push_back(Since(t0));
      if (c.empty()) throw std::runtime_error("nothing to load in " + dir);
      in_place =
          in_place && c.module_interface_state.get_tensor("embed.weight", "load").data_ptr() ==
                          probe.data_ptr();
      path = ck.last_loaded_path();
    };
    for (int i = 0; i < reps; ++i) load(hot);
    for (int i = 0; i < reps; ++i) {
      dropped = DropFromPageCache(path) && dropped;
      load(cold);
    }
    r["rss"] = Rss(before, st.bytes, reset);
  }
  r["state_bytes"] = st.bytes;
  r["in_place"] = in_place;
  r["page_cache_drop"] = dropped ? "posix_fadvise(DONTNEED) accepted" : "failed";
  r["hot_seconds"] = SecondsJson(hot, double(st.bytes));
  r["cold_seconds"] = SecondsJson(cold, double(st.bytes));
  return r;
}

json BaselineChild(uint64_t size, int reps, const std::string& dir, uint64_t torch_max) {
  auto st = std::make_unique<ModelState>(MakeModelState(size, torch::kFloat32, 3));
  const uint64_t bytes = st->bytes;
  const int hw = HardwareThreads();
  json r;
  r["state_bytes"] = bytes;
  {
    Buffer dst(bytes);
    std::vector<double> one, all;
    for (int i = 0; i < reps; ++i) {
      auto t0 = Clock::now();
      CopyTensors(st->tensors, dst.data(), 1);
      one.push_back(Since(t0));
      t0 = Clock::now();
      CopyTensors(st->tensors, dst.data(), hw);
      all.push_back(Since(t0));
    }
    r["memcpy_1t_seconds"] = SecondsJson(one, double(bytes));
    r["memcpy_all_seconds"] = SecondsJson(all, double(bytes));
  }  // the buffer is unmapped before the next measurement
  const std::string raw = dir + "/raw.bin";
  {
    std::vector<double> w;
    for (int i = 0; i < reps; ++i) {
      const auto t0 = Clock::now();
      WriteTensors(st->tensors, raw);
      w.push_back(Since(t0));
    }
    r["raw_write_fsync_seconds"] = SecondsJson(w, double(bytes));
  }
  if (bytes <= torch_max) {
    std::vector<double> t;
    const std::string pt = dir + "/torch.pt";
    for (int i = 0; i < reps; ++i) {
      const auto t0 = Clock::now();
      torch::save(st->tensors, pt);
      FsyncPath(pt);
      t.push_back(Since(t0));
      std::remove(pt.c_str());
    }
    r["torch_save_fsync_seconds"] = SecondsJson(t, double(bytes));
  } else {
    r["torch_save_skipped"] = "state above --torch-max (" + SizeLabel(torch_max) + ")";
  }
  st.reset();  // the read needs only its buffer
  {
    Buffer dst(bytes);
    std::vector<double> hot, cold;
    bool dropped = true;
    for (int i = 0; i < reps; ++i) {
      const auto t0 = Clock::now();
      PreadFile(raw, dst.data(), bytes, hw);
      hot.push_back(Since(t0));
    }
    for (int i = 0; i < reps; ++i) {
      dropped = DropFromPageCache(raw) && dropped;
      const auto t0 = Clock::now();
      PreadFile(raw, dst.data(), bytes, hw);
      cold.push_back(Since(t0));
    }
    r["raw_read_hot_seconds"] = SecondsJson(hot, double(bytes));
    r["raw_read_cold_seconds"] = SecondsJson(cold, double(bytes));
    r["page_cache_drop"] = dropped ? "posix_fadvise(DONTNEED) accepted" : "failed";
  }
  std::remove(raw.c_str());
  r["threads"] = hw;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Args a(argc, argv,
         "usage: ackpt_bench_scale [--sizes 64M,256M,1G,2G,4G,8G] [--reps 3] [--torch-max 2G] "
         "[--dir DIR] [--json FILE] [--quick]\n"
         "Stall, persist, load and peak RSS against the state size, each size in fresh child "
         "processes.",
         {"quick"});
  const bool quick = a.Flag("quick");
  const std::string child = a.Str("child", "");
  const auto sizes = a.List("sizes", quick ? "8M,16M" : "64M,256M,1G,2G,4G,8G");
  const int reps = std::max(1, static_cast<int>(a.Num("reps", quick ? 1 : 3)));
  const uint64_t torch_max = ParseBytes(a.Str("torch-max", "2G"));
  const std::string dir = a.Str("dir", DiskBenchDir("scale"));
  const std::string json_out = a.Str("json", "");
  const std::string child_out = a.Str("out", "");
  a.Done();

  if (!child.empty()) {
    torch::ones({16}).sum();  // LibTorch initialized before any RSS baseline
    const uint64_t size = ParseBytes(sizes.at(0));
    json r;
    try {
      if (child == "save")
        r = SaveChild(size, reps, dir + "/ckpt");
      else if (child == "load")
        r = LoadChild(size, reps, dir + "/ckpt");
      else if (child == "baseline")
        r = BaselineChild(size, reps, dir, torch_max);
      else
        throw std::invalid_argument("unknown --child " + child);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %s: %s\n", child.c_str(), e.what());
      return 1;
    }
    WriteJson(child_out, r);
    return 0;
  }

  FreshDir(dir);
  const std::string self = SelfExe();
  json j = RunInfo("scale", quick);
  j["reps"] = reps;
  j["torch_max_bytes"] = torch_max;
  j["dir"] = dir;
  j["mem_total_bytes"] = static_cast<uint64_t>(::sysconf(_SC_PHYS_PAGES)) *
                         static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  json runs = json::array();
  std::printf("scale: sizes");
  for (const auto& s : sizes) std::printf(" %s", s.c_str());
  std::printf(", %d reps, dir %s\n", reps, dir.c_str());
  for (const auto& label : sizes) {
    const uint64_t size = ParseBytes(label);
    json run;
    run["label"] = SizeLabel(size);
    run["target_bytes"] = size;
    // A save keeps two checkpoints for a moment; the baseline a raw file and a
    // torch::save file: about twice the state on disk, and in memory the state
    // plus one copy (or staging).
    const uint64_t need = 2 * size + (uint64_t{1} << 30);
    const uint64_t disk = FreeDiskBytes(dir), mem = MemAvailableBytes();
    run["free_disk_bytes"] = disk;
    run["mem_available_bytes"] = mem;
    if (disk < need || mem < need) {
      run["skipped"] = std::string(disk < need ? "free disk" : "MemAvailable") + " " +
                       SizeLabel(disk < need ? disk : mem) + " < 2 x state + 1 GiB (" +
                       SizeLabel(need) + ")";
      std::printf("%s: skipped: %s\n", label.c_str(), run["skipped"].get<std::string>().c_str());
      runs.push_back(run);
      continue;
    }
    std::printf("%s:\n", label.c_str());
    std::fflush(stdout);
    FreshDir(dir + "/ckpt");
    for (const std::string mode : {"save", "load", "baseline"}) {
      const std::string out = dir + "/" + mode + ".json";
      run[mode] = RunChild({self, "--child", mode, "--sizes", label, "--reps", std::to_string(reps),
                            "--torch-max", std::to_string(torch_max), "--dir", dir, "--out", out},
                           out);
      if (run[mode].contains("error"))
        std::printf("  %s child failed: %s\n", mode.c_str(),
                    run[mode]["error"].get<std::string>().c_str());
      if (mode == "save" && run[mode].contains("error")) break;  // nothing to load
    }
    RemoveTree(dir + "/ckpt");
    const json& s = run["save"];
    if (!s.contains("error")) {
      const json& b = run["baseline"];
      const json& l = run["load"];
      auto med = [](const json& x, const char* k) {
        return x.contains(k) ? x[k]["median"].get<double>() : 0.0;
      };
      std::printf(
          "  stall %.3f s (memcpy %.3f s), durable %.3f s (write+fsync %.3f s), load hot %.3f / "
          "cold %.3f s (read %.3f / %.3f s), save RSS +%.0f MiB (budget %.0f MiB), load RSS "
          "+%.0f MiB\n",
          med(s, "stall_seconds"),
          std::min(med(b, "memcpy_1t_seconds"), med(b, "memcpy_all_seconds")),
          med(s, "persist_seconds"), med(b, "raw_write_fsync_seconds"), med(l, "hot_seconds"),
          med(l, "cold_seconds"), med(b, "raw_read_hot_seconds"), med(b, "raw_read_cold_seconds"),
          s["rss"]["extra_bytes"].get<double>() / 1048576.0,
          s["staging_budget_bytes"].get<double>() / 1048576.0,
          l.contains("rss") ? l["rss"]["extra_bytes"].get<double>() / 1048576.0 : 0.0);
    }
    std::fflush(stdout);
    runs.push_back(run);
    j["runs"] = runs;
    WriteJson(json_out, j);  // partial results survive a later size failing
  }
  j["runs"] = runs;
  WriteJson(json_out, j);
  RemoveTree(dir);
  return 0;
}
