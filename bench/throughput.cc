// Item 3 — background persist throughput and load throughput (Google
// Benchmark driver: bench/gbench_driver.h; one benchmark per method named
// throughput/<key>, repetitions randomly interleaved, median/min/max
// aggregates, bytes_per_second of logical bytes, JSON via --benchmark_out).
//
// One model-like state, measured side by side in one run:
//   ackpt background persist (hash + compress + write + fsync + rename), from
//     SaveStats of a DefaultCheckpointer with writer_threads = t:
//     end_to_end_seconds - stall_seconds, for compression none / zstd levels
//   raw disk write of the same bytes (the plain safetensors stream):
//     write(2) in 8 MiB calls + fdatasync; the same with sync_file_range
//     kicking writeback every 8 MiB; O_DIRECT from an aligned buffer + fdatasync
//   zstd single-thread speed in this process (4 MiB frames, content checksum):
//     the "threads x zstd speed" anchor
//   the zstd command-line tool on the same bytes (file in page cache, output
//     fsynced), -T1 and -T<t>
//   load: ackpt::ReadStateDict (parallel decompression, checksums verified)
//     vs a raw pread of the same file with the same threads, each after
//     posix_fadvise(DONTNEED) of the file ("cold"; best effort on a VM) and
//     with the file in page cache ("hot"); the raw read also into freshly
//     mapped memory (page faults included, as a loader allocating tensors pays)
//
// Keys: persist_<none|zstdL>_t<T>, raw_write_fsync, raw_write_kick_fsync,
// raw_write_odirect, zstd_lib_1t_l<L>, zstd_cli_l<L>_t<T>,
// raw_read[_fresh]_<cold|hot>_t<T>, load_<none|zstdL>_<cold|hot>_t<T>.
// Compressing benchmarks carry file_bytes and ratio (logical / file bytes)
// counters. After the run, the newest checkpoint of every persist
// configuration must load back bit for bit, or the driver exits 1.
//
//   ackpt_bench_throughput [--size 256M] [--dtype fp32] [--threads 1,2]
//       [--levels none,1,3] [--dir DIR] [--quick]
//       [--benchmark_repetitions=3] [--benchmark_out=FILE]
#include <zstd.h>

#include "gbench_driver.h"

using namespace bench;

namespace {

constexpr size_t kIoBlock = size_t{8} << 20;

double RawWrite(const std::string& path, const uint8_t* data, size_t n, bool kick_writeback) {
  std::remove(path.c_str());
  const auto t0 = Clock::now();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("open " + path);
  size_t off = 0;
  while (off < n) {
    ssize_t w = ::write(fd, data + off, std::min(kIoBlock, n - off));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("write " + path);
    }
    if (kick_writeback) ::sync_file_range(fd, static_cast<off_t>(off), w, SYNC_FILE_RANGE_WRITE);
    off += static_cast<size_t>(w);
  }
  ::fdatasync(fd);
  ::close(fd);
  return Since(t0);
}

// O_DIRECT write of n bytes (rounded up to 4096) from a page-aligned buffer.
// Returns a negative value if the file system refuses O_DIRECT.
double DirectWrite(const std::string& path, const uint8_t* aligned, size_t n) {
  std::remove(path.c_str());
  const size_t total = (n + 4095) / 4096 * 4096;
  const auto t0 = Clock::now();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0644);
  if (fd < 0) return -1;
  size_t off = 0;
  while (off < total) {
    ssize_t w = ::write(fd, aligned + off, std::min(kIoBlock, total - off));
    if (w < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      return -1;
    }
    off += static_cast<size_t>(w);
  }
  ::fdatasync(fd);
  ::close(fd);
  return Since(t0);
}

// Reads the whole file with `threads` threads (8 MiB preads) into dst.
double RawRead(const std::string& path, uint8_t* dst, int threads) {
  const auto t0 = Clock::now();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("open " + path);
  const uint64_t size = FileSize(path);
  const size_t blocks = static_cast<size_t>((size + kIoBlock - 1) / kIoBlock);
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t b; (b = next.fetch_add(1)) < blocks;) {
      uint64_t off = b * kIoBlock;
      size_t n = static_cast<size_t>(std::min<uint64_t>(kIoBlock, size - off));
      while (n > 0) {
        ssize_t r = ::pread(fd, dst + off, n, static_cast<off_t>(off));
        if (r <= 0) {
          if (r < 0 && errno == EINTR) continue;
          return;
        }
        off += static_cast<uint64_t>(r);
        n -= static_cast<size_t>(r);
      }
    }
  };
  std::vector<std::thread> ts;
  for (int t = 1; t < threads; ++t) ts.emplace_back(work);
  work();
  for (auto& t : ts) t.join();
  ::close(fd);
  return Since(t0);
}

// Single-thread zstd over the buffer in 4 MiB frames with content checksums
// (what one ackpt writer thread does per frame). Returns seconds; *out_bytes
// gets the compressed size.
double ZstdInProcess(const uint8_t* data, size_t n, int level, uint64_t* out_bytes) {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  const size_t chunk = size_t{4} << 20;
  std::vector<uint8_t> out(ZSTD_compressBound(chunk));
  uint64_t total = 0;
  const auto t0 = Clock::now();
  for (size_t off = 0; off < n; off += chunk) {
    const size_t len = std::min(chunk, n - off);
    ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
    size_t r = ZSTD_compress2(cctx, out.data(), out.size(), data + off, len);
    if (ZSTD_isError(r)) throw std::runtime_error(ZSTD_getErrorName(r));
    total += r;
  }
  const double s = Since(t0);
  ZSTD_freeCCtx(cctx);
  *out_bytes = total;
  return s;
}

struct Config {
  std::string comp;  // "none" or zstd level as text
  int threads;
  std::string key() const {
    return (comp == "none" ? "none" : "zstd" + comp) + "_t" + std::to_string(threads);
  }
  std::string dir(const std::string& root) const {
    return root + "/ck_" + std::to_string(threads) + (comp == "none" ? "_none" : "_z" + comp);
  }
};

// Everything the benchmarks share: one state, its plain safetensors stream
// (the bytes every baseline writes or reads) in memory and on disk.
struct Fixture {
  ModelState st;
  ackpt::StateDict flat;
  std::string dir, plain_path;
  uint64_t logical = 0;
  std::unique_ptr<Buffer> plain, scratch;
  std::map<std::string, std::string> load_files;  // "none", "zstd1", ...: path
};

ackpt::DefaultCheckpointerArguments PersistArgs(const Config& c, const std::string& root) {
  ackpt::DefaultCheckpointerArguments args;
  args.save_dir = c.dir(root);
  args.log_level = "WARN";
  args.writer_threads = c.threads;
  const bool z = c.comp != "none";
  args.compression = z ? ackpt::Compression::kZstd : ackpt::Compression::kNone;
  args.zstd_level = z ? std::stoi(c.comp) : 1;
  args.retention.keep_last = 1;
  return args;
}

void SetFileBytes(benchmark::State& state, uint64_t logical, uint64_t file_bytes) {
  state.counters["file_bytes"] = static_cast<double>(file_bytes);
  state.counters["ratio"] = file_bytes ? double(logical) / double(file_bytes) : 0.0;
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = WantsQuick(argc, argv);
  Args a = InitGoogleBenchmark(
      argc, argv,
      "usage: ackpt_bench_throughput [--size 256M] [--dtype fp32] [--threads 1,2] "
      "[--levels none,1,3] [--dir DIR] [--quick] [Google Benchmark flags]\n"
      "Defaults: 3 repetitions (--quick: a 24M state, 1 repetition), randomly interleaved.",
      {"quick"}, quick ? 1 : 3);
  a.Flag("quick");
  const uint64_t size = ParseBytes(a.Str("size", quick ? "24M" : "256M"));
  const auto dtype = ParseDtype(a.Str("dtype", "fp32"));
  std::vector<int> threads;
  for (const auto& t :
       a.List("threads",
              quick ? "1,2"
                    : (HardwareThreads() > 1 ? "1," + std::to_string(HardwareThreads()) : "1"))) {
    threads.push_back(std::stoi(t));
  }
  const auto levels = a.List("levels", "none,1,3");
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-throughput");
  a.Done();
  const int tmax = *std::max_element(threads.begin(), threads.end());

  Fixture f;  // the benchmarks below refer to it; they run before main returns
  FreshDir(dir);
  f.dir = dir;
  f.st = MakeModelState(size, dtype, 3);
  f.flat = FlatStateDict(f.st);
  f.plain_path = dir + "/plain.safetensors";
  {
    ackpt::WriteOptions wo;
    wo.compression = ackpt::Compression::kNone;
    ackpt::WriteStateDict(f.flat, f.plain_path, wo);
  }
  f.logical = FileSize(f.plain_path);
  f.plain = std::make_unique<Buffer>((f.logical + 4095) / 4096 * 4096);
  RawRead(f.plain_path, f.plain->data(), 1);
  f.scratch = std::make_unique<Buffer>(f.plain->size());
  f.load_files["none"] = f.plain_path;
  for (const auto& l : levels) {
    if (l == "none") continue;
    ackpt::WriteOptions wo;
    wo.zstd_level = std::stoi(l);
    const std::string p = dir + "/load_z" + l + ".safetensors.zst";
    ackpt::WriteStateDict(f.flat, p, wo);
    f.load_files["zstd" + l] = p;
  }
  const uint64_t logical = f.logical;
  std::printf("state: %zu tensors, %s, %.1f MiB of tensors, %.1f MiB safetensors stream\n",
              f.st.tensors.size(), DtypeLabel(dtype).c_str(), f.st.bytes / 1048576.0,
              logical / 1048576.0);
  std::fflush(stdout);

  const bool have_zstd = HaveProgram("zstd");
  const bool drop_ok = DropFromPageCache(f.plain_path);
  const std::string raw_path = dir + "/raw.bin";
  const bool direct_ok = DirectWrite(raw_path, f.plain->data(), 4096) > 0;
  std::remove(raw_path.c_str());
  std::string thread_list, level_list;
  for (int t : threads) thread_list += (thread_list.empty() ? "" : ",") + std::to_string(t);
  for (const auto& l : levels) level_list += (level_list.empty() ? "" : ",") + l;
  benchmark::AddCustomContext("ackpt_benchmark", "throughput");
  benchmark::AddCustomContext("bytes", std::to_string(f.st.bytes));
  benchmark::AddCustomContext("logical_bytes", std::to_string(logical));
  benchmark::AddCustomContext("dtype", DtypeLabel(dtype));
  benchmark::AddCustomContext("tensors", std::to_string(f.st.tensors.size()));
  benchmark::AddCustomContext("threads", thread_list);
  benchmark::AddCustomContext("levels", level_list);
  benchmark::AddCustomContext("zstd_cli", have_zstd ? "true" : "false");
  benchmark::AddCustomContext(
      "page_cache_drop",
      drop_ok ? "posix_fadvise(POSIX_FADV_DONTNEED) after fsync: succeeded"
              : "posix_fadvise(POSIX_FADV_DONTNEED) failed; cold reads may be cached");

  // Raw disk baselines: the plain stream written three ways.
  Measure("throughput/raw_write_fsync", logical, [&](benchmark::State&) {
    const double s = RawWrite(raw_path, f.plain->data(), f.logical, false);
    std::remove(raw_path.c_str());
    return s;
  });
  Measure("throughput/raw_write_kick_fsync", logical, [&](benchmark::State&) {
    const double s = RawWrite(raw_path, f.plain->data(), f.logical, true);
    std::remove(raw_path.c_str());
    return s;
  });
  if (direct_ok) {
    Measure("throughput/raw_write_odirect", logical, [&](benchmark::State&) {
      const double s = DirectWrite(raw_path, f.plain->data(), f.logical);
      std::remove(raw_path.c_str());
      if (s < 0) throw std::runtime_error("O_DIRECT write failed");
      return s;
    });
  }
  // ackpt persist: the background part of a save (hash, compress, write,
  // fsync, rename, directory fsync), one checkpointer per configuration.
  std::map<std::string, ackpt::SaveStats> last;
  std::mutex mu;
  std::map<std::string, std::unique_ptr<ackpt::DefaultCheckpointer>> checkpointers;
  int64_t index = 0;
  std::vector<Config> configs;
  for (const auto& l : levels) {
    for (int t : threads) configs.push_back({l, t});
  }
  for (const auto& c : configs) {
    auto args = PersistArgs(c, dir);
    const std::string key = c.key();
    args.on_save = [key, &last, &mu](const ackpt::SaveStats& s) {
      std::lock_guard<std::mutex> lock(mu);
      last[key] = s;
    };
    checkpointers[key] = std::make_unique<ackpt::DefaultCheckpointer>(args);
    Measure("throughput/persist_" + key, logical, [&, key](benchmark::State& state) {
      ackpt::DefaultCheckpointer& ck = *checkpointers[key];
      ck.save(f.st.checkpoint, index++);
      ck.wait();
      std::lock_guard<std::mutex> lock(mu);
      const ackpt::SaveStats& s = last[key];
      SetFileBytes(state, f.logical, s.file_bytes);
      return s.end_to_end_seconds - s.stall_seconds;
    });
  }
  // zstd: this process on one thread (the "threads x zstd speed" anchor) and
  // the command-line tool on the plain file.
  for (const auto& l : levels) {
    if (l == "none") continue;
    Measure("throughput/zstd_lib_1t_l" + l, logical, [l, &f](benchmark::State& state) {
      uint64_t zb = 0;
      const double s = ZstdInProcess(f.plain->data(), f.logical, std::stoi(l), &zb);
      SetFileBytes(state, f.logical, zb);
      return s;
    });
    if (!have_zstd) continue;
    for (int th : std::set<int>{1, tmax}) {
      Measure("throughput/zstd_cli_l" + l + "_t" + std::to_string(th), logical,
              [l, th, &f](benchmark::State& state) {
                const std::string out = f.dir + "/cli.zst";
                std::remove(out.c_str());
                const auto t0 = Clock::now();
                const int rc = RunProcess({"zstd", "-" + l, "-T" + std::to_string(th), "-q", "-f",
                                           f.plain_path, "-o", out});
                FsyncPath(out);
                const double s = Since(t0);
                if (rc != 0) throw std::runtime_error("zstd exited with " + std::to_string(rc));
                SetFileBytes(state, f.logical, FileSize(out));
                std::remove(out.c_str());
                return s;
              });
    }
  }
  // Load: the plain stream read raw (into a pre-faulted buffer and into fresh
  // memory, as any loader returning new tensors pays the page faults) and
  // every file through ackpt::ReadStateDict; "cold" drops the file from the
  // page cache first (best effort on a VM).
  for (int th : threads) {
    for (const bool cold : {true, false}) {
      const std::string ts = std::string(cold ? "cold" : "hot") + "_t" + std::to_string(th);
      Measure("throughput/raw_read_" + ts, logical, [cold, th, &f](benchmark::State&) {
        if (cold) DropFromPageCache(f.plain_path);
        return RawRead(f.plain_path, f.scratch->data(), th);
      });
      Measure("throughput/raw_read_fresh_" + ts, logical, [cold, th, &f](benchmark::State&) {
        if (cold) DropFromPageCache(f.plain_path);
        const uint64_t n = (f.logical + 4095) / 4096 * 4096;
        void* fresh =
            ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (fresh == MAP_FAILED) throw std::runtime_error("mmap failed");
        const auto t0 = Clock::now();
        RawRead(f.plain_path, static_cast<uint8_t*>(fresh), th);
        const double s = Since(t0);
        ::munmap(fresh, n);
        return s;
      });
      for (const auto& lf : f.load_files) {
        const std::string path = lf.second;
        Measure("throughput/load_" + lf.first + "_" + ts, logical,
                [cold, th, path](benchmark::State&) {
                  if (cold) DropFromPageCache(path);
                  ackpt::ReadOptions ro;
                  ro.threads = th;
                  const auto t0 = Clock::now();
                  { ackpt::StateDict d = ackpt::ReadStateDict(path, ro); }
                  return Since(t0);
                });
      }
    }
  }
  int rc = RunGoogleBenchmarks();
  checkpointers.clear();

  // The files are also a correctness check of the save path (snapshot copy
  // split across threads, compression, commit): the newest checkpoint of each
  // configuration that ran must load back bit for bit.
  for (const auto& c : configs) {
    ackpt::DefaultCheckpointer reader(PersistArgs(c, dir));
    if (reader.list_checkpoints().empty()) continue;  // filtered out
    const ackpt::Checkpoint back = reader.load_latest();
    std::string why;
    if (!ackpt::ExactlyEqual(back.module_interface_state, f.st.checkpoint.module_interface_state,
                             &why) ||
        !ackpt::ExactlyEqual(back.trainer_state, f.st.checkpoint.trainer_state, &why)) {
      std::fprintf(stderr, "ERROR: checkpoint of %s does not load back identically: %s\n",
                   c.key().c_str(), why.c_str());
      rc = 1;
    }
  }
  RemoveTree(dir);
  return rc;
}
