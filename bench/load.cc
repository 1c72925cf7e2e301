// Load: how close restoring a checkpoint gets to the speed of its bytes
// (issue 12). One model-like state is written uncompressed and with zstd -1;
// in one run, repetitions interleaved, it measures
//   ackpt load into fresh tensors (ReadStateDict), into existing tensors
//   (ReadInto), into existing tensors without checksums, and a partial load
//   (one tensor, with the bytes it read counted through an Env);
// next to its anchors on the same bytes:
//   raw pread of the file with the same threads into a reused (pre-faulted)
//   buffer and into fresh memory, mmap + memcpy into the reused buffer, page
//   cache hot and (after posix_fadvise DONTNEED) cold; libzstd decompression
//   of the file's frames from memory into a reused buffer on 1 and N threads.
// Peak RSS while loading into existing tensors is measured in a child process
// (VmHWM), above the RSS the destinations and LibTorch already hold.
#include <zstd.h>

#include "bench_common.h"

namespace {

using bench::Args;
using bench::Clock;
using bench::CountingEnv;
using bench::json;
using bench::OnThreads;
using bench::PreadFile;
using bench::Since;
using bench::Stat;
using bench::Summarize;

// mmap of the file and a parallel memcpy into dst.
void MmapCopy(const std::string& path, uint8_t* dst, uint64_t size, int threads) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("open " + path);
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw std::runtime_error("mmap " + path);
  ::madvise(p, size, MADV_SEQUENTIAL);
  constexpr uint64_t kBlock = 8 << 20;
  std::atomic<uint64_t> next{0};
  OnThreads(threads, [&](int) {
    for (;;) {
      const uint64_t off = next.fetch_add(kBlock);
      if (off >= size) return;
      std::memcpy(dst + off, static_cast<const uint8_t*>(p) + off, std::min(kBlock, size - off));
    }
  });
  ::munmap(p, size);
}

// The zstd frames of a compressed file (seek table and all skipped).
struct Frames {
  std::string bytes;                              // the file
  std::vector<std::pair<size_t, size_t>> frames;  // offset, compressed size
  std::vector<size_t> out_offsets;                // in the logical stream
  size_t logical = 0;
};

Frames ReadFrames(const std::string& path) {
  Frames f;
  std::ifstream in(path, std::ios::binary);
  f.bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  size_t pos = 0;
  while (pos < f.bytes.size()) {
    const size_t n = ZSTD_findFrameCompressedSize(f.bytes.data() + pos, f.bytes.size() - pos);
    if (ZSTD_isError(n)) break;
    const unsigned long long content =
        ZSTD_getFrameContentSize(f.bytes.data() + pos, f.bytes.size() - pos);
    if (content != ZSTD_CONTENTSIZE_ERROR && content != ZSTD_CONTENTSIZE_UNKNOWN) {
      f.frames.emplace_back(pos, n);  // skippable frames (the seek table) have no content size
      f.out_offsets.push_back(f.logical);
      f.logical += content;
    }
    pos += n;
  }
  return f;
}

// Decompresses every frame into out (the logical stream) on `threads` threads.
void Decompress(const Frames& f, uint8_t* out, int threads) {
  std::atomic<size_t> next{0};
  OnThreads(threads, [&](int) {
    ZSTD_DCtx* d = ZSTD_createDCtx();
    for (;;) {
      const size_t i = next.fetch_add(1);
      if (i >= f.frames.size()) break;
      const size_t cap =
          (i + 1 < f.frames.size() ? f.out_offsets[i + 1] : f.logical) - f.out_offsets[i];
      const size_t r = ZSTD_decompressDCtx(d, out + f.out_offsets[i], cap,
                                           f.bytes.data() + f.frames[i].first, f.frames[i].second);
      if (ZSTD_isError(r)) throw std::runtime_error(ZSTD_getErrorName(r));
    }
    ZSTD_freeDCtx(d);
  });
}

// Destinations shaped like the file's tensors, pre-faulted (written once).
std::map<std::string, at::Tensor> Destinations(const ackpt::FileInfo& info) {
  std::map<std::string, at::Tensor> out;
  for (const auto& t : info.tensors) {
    at::Tensor d = at::empty(t.shape, at::TensorOptions().dtype(t.scalar_type));
    if (d.nbytes()) std::memset(d.data_ptr(), 0, d.nbytes());
    out.emplace(t.name, d);
  }
  return out;
}

json StatJson(const Stat& seconds, double bytes) {
  json j = bench::ToJson(seconds);
  j["gbps"] = bench::ToJson(bench::Rate(seconds, bytes / 1e9));
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  Args args(argc, argv,
            "ackpt_bench_load [--size 512M] [--reps 5] [--threads N] [--dir D] [--json F] "
            "[--quick] [--rss-child PATH]\n"
            "Load into fresh / existing tensors and partial load, next to raw read and libzstd.",
            {"quick"});
  const bool quick = args.Flag("quick");
  const uint64_t size = bench::ParseBytes(args.Str("size", quick ? "24M" : "512M"));
  const int reps = static_cast<int>(args.Num("reps", quick ? 1 : 5));
  const int threads = static_cast<int>(args.Num("threads", bench::HardwareThreads()));
  const std::string dir = args.Str("dir", "/tmp/ackpt-bench/load");
  const std::string json_path = args.Str("json", "");
  const std::string rss_child = args.Str("rss-child", "");
  args.Done();

  if (!rss_child.empty()) {
    // Child: destinations first, then the load; report VmHWM above the RSS before.
    auto reader = ackpt::CheckpointReader::Open(rss_child);
    auto dest = Destinations(reader->info());
    const uint64_t before = bench::RssBytes();
    bench::ResetPeakRss();
    ackpt::ReadOptions ro;
    ro.threads = threads;
    ackpt::CheckpointReader::Open(rss_child, ro)->ReadInto(dest);
    std::printf("%llu %llu\n", static_cast<unsigned long long>(bench::PeakRssBytes()),
                static_cast<unsigned long long>(before));
    return 0;
  }

  bench::FreshDir(dir);
  bench::ModelState st = bench::MakeModelState(size, torch::kFloat32);
  ackpt::StateDict state;
  state.set("model", st.checkpoint.module_interface_state);
  state.set("optimizer", st.checkpoint.trainer_state);
  json out = bench::RunInfo("load", quick);
  out["state_bytes"] = st.bytes;
  out["tensors"] = st.tensors.size();
  out["threads"] = threads;
  out["reps"] = reps;

  struct File {
    std::string name, path;
    uint64_t file_bytes = 0, logical_bytes = 0;
  };
  std::vector<File> files;
  for (auto c : {ackpt::Compression::kNone, ackpt::Compression::kZstd}) {
    File f;
    f.name = c == ackpt::Compression::kNone ? "plain" : "zstd";
    f.path = dir + "/state." + f.name + ".safetensors";
    ackpt::WriteOptions wo;
    wo.compression = c;
    wo.fsync = false;
    const auto w = ackpt::WriteStateDict(state, f.path, wo);
    f.file_bytes = w.file_bytes;
    f.logical_bytes = w.logical_bytes;
    files.push_back(f);
  }
  st = bench::ModelState();  // free the source state
  state = ackpt::StateDict();
  const uint64_t logical = files[0].logical_bytes;
  std::printf("state %s (%zu tensors), zstd file %.1f%% of plain, %d threads, %d reps\n",
              bench::SizeLabel(logical).c_str(), static_cast<size_t>(out["tensors"]),
              100.0 * files[1].file_bytes / files[0].file_bytes, threads, reps);

  // Shared buffers: one reused (pre-faulted) buffer of the largest file.
  bench::Buffer reused(logical);
  const Frames frames = ReadFrames(files[1].path);
  if (frames.logical != logical) throw std::runtime_error("frame walk does not cover the stream");
  ackpt::ReadOptions ro;
  ro.threads = threads;
  ackpt::ReadOptions ro_noverify = ro;
  ro_noverify.verify_checksums = false;
  std::map<std::string, std::map<std::string, at::Tensor>> dests;
  for (const auto& f : files)
    dests[f.name] = Destinations(ackpt::CheckpointReader::Open(f.path)->info());
  // The partial load: a tensor from the middle of the data section.
  const auto info = ackpt::CheckpointReader::Open(files[0].path)->info();
  const ackpt::TensorInfo* part = &info.tensors[info.tensors.size() / 2];
  for (const auto& t : info.tensors) {
    if (t.nbytes() >= part->nbytes() && t.begin > info.tensors.back().end / 3) {
      part = &t;
      break;
    }
  }
  out["partial_tensor"] = part->name;
  out["partial_tensor_bytes"] = part->nbytes();

  std::map<std::string, std::vector<double>> s;  // seconds per case
  std::map<std::string, double> bytes_of;        // bytes each case moves (GB/s)
  std::map<std::string, uint64_t> partial_read;
  auto time = [&](const std::string& key, double bytes, const std::function<void()>& fn) {
    const auto t0 = Clock::now();
    fn();
    s[key].push_back(Since(t0));
    bytes_of[key] = bytes;
  };
  bool dropped_ok = true;
  auto cold = [&](const std::string& path) {
    dropped_ok = bench::DropFromPageCache(path) && dropped_ok;
  };

  for (int rep = 0; rep < reps; ++rep) {
    for (const auto& f : files) {
      const double fb = static_cast<double>(f.file_bytes),
                   lb = static_cast<double>(f.logical_bytes);
      // Raw anchors on this file's bytes (GB/s of file bytes).
      time("raw_read_reused_hot_" + f.name, fb,
           [&] { PreadFile(f.path, reused.data(), f.file_bytes, threads); });
      time("mmap_copy_reused_hot_" + f.name, fb,
           [&] { MmapCopy(f.path, reused.data(), f.file_bytes, threads); });
      time("raw_read_fresh_hot_" + f.name, fb, [&] {
        std::unique_ptr<uint8_t[]> fresh(new uint8_t[f.file_bytes]);
        PreadFile(f.path, fresh.get(), f.file_bytes, threads);
      });
      cold(f.path);
      time("raw_read_reused_cold_" + f.name, fb,
           [&] { PreadFile(f.path, reused.data(), f.file_bytes, threads); });
      // ackpt (GB/s of logical bytes).
      time("load_fresh_hot_" + f.name, lb, [&] {
        ackpt::StateDict d = ackpt::CheckpointReader::Open(f.path, ro)->ReadStateDict();
      });
      time("load_into_hot_" + f.name, lb,
           [&] { ackpt::CheckpointReader::Open(f.path, ro)->ReadInto(dests[f.name]); });
      time("load_into_noverify_hot_" + f.name, lb,
           [&] { ackpt::CheckpointReader::Open(f.path, ro_noverify)->ReadInto(dests[f.name]); });
      cold(f.path);
      time("load_into_cold_" + f.name, lb,
           [&] { ackpt::CheckpointReader::Open(f.path, ro)->ReadInto(dests[f.name]); });
      CountingEnv env;
      time("load_partial_hot_" + f.name, static_cast<double>(part->nbytes()), [&] {
        auto r = ackpt::CheckpointReader::Open(f.path, ro, &env);
        std::map<std::string, at::Tensor> one = {{part->name, dests[f.name].at(part->name)}};
        r->ReadInto(one);
      });
      partial_read[f.name] = env.bytes();
    }
    // libzstd on the compressed file's frames, from memory (GB/s of logical bytes).
    time("zstd_lib_1t", static_cast<double>(logical),
         [&] { Decompress(frames, reused.data(), 1); });
    time("zstd_lib_" + std::to_string(threads) + "t", static_cast<double>(logical),
         [&] { Decompress(frames, reused.data(), threads); });
  }

  json r;
  for (const auto& kv : s) r[kv.first] = StatJson(Summarize(kv.second), bytes_of[kv.first]);
  out["results"] = r;
  out["page_cache_drop"] =
      dropped_ok ? "posix_fadvise(DONTNEED) accepted" : "posix_fadvise(DONTNEED) failed";
  out["files"] = json::object();
  for (const auto& f : files) {
    out["files"][f.name] = {{"file_bytes", f.file_bytes},
                            {"logical_bytes", f.logical_bytes},
                            {"partial_bytes_read", partial_read[f.name]}};
  }

  // Peak RSS while loading into existing tensors, in a child per file.
  for (const auto& f : files) {
    const std::string tmp = dir + "/rss." + f.name + ".txt";
    const int rc = bench::RunProcess(
        {bench::SelfExe(), "--rss-child", f.path, "--threads", std::to_string(threads)}, tmp);
    std::ifstream in(tmp);
    unsigned long long peak = 0, before = 0;
    if (rc == 0 && (in >> peak >> before)) {
      out["files"][f.name]["rss_peak_bytes"] = peak;
      out["files"][f.name]["rss_before_bytes"] = before;
      out["files"][f.name]["rss_extra_bytes"] = peak > before ? peak - before : 0;
    }
  }

  // Targets (ratios of medians).
  auto med = [&](const std::string& k) { return r[k]["gbps"]["median"].get<double>(); };
  auto secs = [&](const std::string& k) { return r[k]["median"].get<double>(); };
  json targets = json::array();
  auto add = [&](const std::string& what, double value, double anchor,
                 const std::string& anchor_what, double ratio, double goal) {
    targets.push_back({{"what", what},
                       {"value_gbps", value},
                       {"anchor_gbps", anchor},
                       {"anchor", anchor_what},
                       {"ratio", ratio},
                       {"goal", goal},
                       {"met", ratio >= goal}});
  };
  // Plain, hot: logical == file bytes, so the GB/s compare directly.
  add("plain hot into existing vs raw read (reused buffer)", med("load_into_hot_plain"),
      med("raw_read_reused_hot_plain"), "raw read, reused buffer",
      med("load_into_hot_plain") / med("raw_read_reused_hot_plain"), 0.8);
  {
    const std::string zn = "zstd_lib_" + std::to_string(threads) + "t";
    const double ideal =
        std::min(threads * med("zstd_lib_1t"),
                 static_cast<double>(logical) / secs("raw_read_reused_hot_plain") / 1e9);
    add("zstd hot into existing vs min(threads x 1-thread libzstd, raw read)",
        med("load_into_hot_zstd"), ideal,
        "min(" + std::to_string(threads) + " x libzstd 1 thread, raw read)",
        med("load_into_hot_zstd") / ideal, 0.8);
    (void)zn;
  }
  for (const auto& f : files) {
    // Same file, same bytes: a ratio of times.
    const double ratio = secs("raw_read_reused_cold_" + f.name) / secs("load_into_cold_" + f.name);
    add(f.name + " cold into existing vs raw cold read", med("load_into_cold_" + f.name),
        med("raw_read_reused_cold_" + f.name), "raw cold read of the same file", ratio, 0.8);
  }
  for (const auto& f : files) {
    const json& ff = out["files"][f.name];
    if (!ff.contains("rss_extra_bytes")) continue;
    const double extra = ff["rss_extra_bytes"].get<double>();
    targets.push_back(
        {{"what", f.name + " peak RSS above the destinations while loading into them"},
         {"value_bytes", extra},
         {"goal_bytes", 64.0 * 1048576},
         {"met", extra <= 64.0 * 1048576}});
  }
  out["targets"] = targets;

  // Human table.
  std::printf("\n%-34s %12s %12s\n", "case", "GB/s median", "(min-max)");
  for (const auto& kv : s) {
    const json& g = r[kv.first]["gbps"];
    std::printf("%-34s %12.3f  (%.3f-%.3f)\n", kv.first.c_str(), g["median"].get<double>(),
                g["min"].get<double>(), g["max"].get<double>());
  }
  for (const auto& f : files) {
    std::printf("partial load (%s, %s, %.1f MiB): read %.2f MiB\n", f.name.c_str(),
                part->name.c_str(), part->nbytes() / 1048576.0, partial_read[f.name] / 1048576.0);
  }
  std::printf("\ntargets:\n");
  for (const auto& t : targets) {
    if (t.contains("ratio")) {
      std::printf("  %-70s %.2f x (goal %.1f) %s\n", t["what"].get<std::string>().c_str(),
                  t["ratio"].get<double>(), t["goal"].get<double>(),
                  t["met"].get<bool>() ? "met" : "MISSED");
    } else {
      std::printf("  %-70s %.1f MiB (goal <= 64) %s\n", t["what"].get<std::string>().c_str(),
                  t["value_bytes"].get<double>() / 1048576.0,
                  t["met"].get<bool>() ? "met" : "MISSED");
    }
  }
  bench::WriteJson(json_path, out);
  bench::RemoveTree(dir);
  return 0;
}
