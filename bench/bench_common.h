// Shared helpers for ackpt's benchmark drivers: argument parsing, repetition
// statistics (median, min, max), model-like states, RSS readings, page-cache
// control and JSON output. Header-only; every driver includes it.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <torch/version.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ackpt/ackpt.h"

namespace bench {

// Counts the bytes read through every file it opens (RandomAccessFile::Read:
// headers and seek tables included): what a load cost in I/O. Optionally,
// per directory registered with Track() before use, the bytes read from and
// written to (WritableFile::Append: temp files included) files under it: what
// a save or a promotion cost each tier.
class CountingEnv : public ackpt::EnvWrapper {
 public:
  CountingEnv() : EnvWrapper(ackpt::Env::Default()) {}
  std::unique_ptr<ackpt::RandomAccessFile> NewRandomAccessFile(const std::string& path) override {
    return std::make_unique<File>(target()->NewRandomAccessFile(path), &bytes_, Find(path, true));
  }
  std::unique_ptr<ackpt::WritableFile> NewWritableFile(const std::string& path) override {
    return std::make_unique<Writable>(target()->NewWritableFile(path), &written_,
                                      Find(path, false));
  }
  uint64_t bytes() const { return bytes_.load(); }
  uint64_t bytes_written() const { return written_.load(); }
  // Files whose path starts with dir + "/" count under dir. Call before the
  // Env is used (the set of directories is not locked).
  void Track(const std::string& dir) { tracked_[dir]; }
  uint64_t bytes_read(const std::string& dir) const { return tracked_.at(dir).read.load(); }
  uint64_t bytes_written(const std::string& dir) const { return tracked_.at(dir).written.load(); }
  void Reset() {
    bytes_ = 0;
    written_ = 0;
    for (auto& kv : tracked_) kv.second.read = kv.second.written = 0;
  }

 private:
  struct Counts {
    std::atomic<uint64_t> read{0}, written{0};
  };
  // The counter of the tracked directory holding path, or null.
  std::atomic<uint64_t>* Find(const std::string& path, bool read) {
    for (auto& kv : tracked_) {
      if (path.compare(0, kv.first.size() + 1, kv.first + "/") == 0)
        return read ? &kv.second.read : &kv.second.written;
    }
    return nullptr;
  }
  class File : public ackpt::RandomAccessFile {
   public:
    File(std::unique_ptr<ackpt::RandomAccessFile> f, std::atomic<uint64_t>* bytes,
         std::atomic<uint64_t>* dir)
        : f_(std::move(f)), bytes_(bytes), dir_(dir) {}
    void Read(uint64_t offset, size_t n, void* dst) const override {
      *bytes_ += n;
      if (dir_) *dir_ += n;
      f_->Read(offset, n, dst);
    }
    uint64_t Size() const override { return f_->Size(); }
    const std::string& path() const override { return f_->path(); }

   private:
    std::unique_ptr<ackpt::RandomAccessFile> f_;
    std::atomic<uint64_t>* bytes_;
    std::atomic<uint64_t>* dir_;
  };
  class Writable : public ackpt::WritableFile {
   public:
    Writable(std::unique_ptr<ackpt::WritableFile> f, std::atomic<uint64_t>* bytes,
             std::atomic<uint64_t>* dir)
        : f_(std::move(f)), bytes_(bytes), dir_(dir) {}
    void Append(const void* data, size_t n) override {
      f_->Append(data, n);
      *bytes_ += n;
      if (dir_) *dir_ += n;
    }
    void Sync() override { f_->Sync(); }
    void StartWriteback(uint64_t offset, uint64_t n) override { f_->StartWriteback(offset, n); }
    void Close() override { f_->Close(); }
    const std::string& path() const override { return f_->path(); }

   private:
    std::unique_ptr<ackpt::WritableFile> f_;
    std::atomic<uint64_t>* bytes_;
    std::atomic<uint64_t>* dir_;
  };
  std::atomic<uint64_t> bytes_{0}, written_{0};
  std::map<std::string, Counts> tracked_;
};

using Clock = std::chrono::steady_clock;
using nlohmann::json;

inline double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- statistics ---------------------------------------------------------------
struct Stat {
  double median = 0, min = 0, max = 0;
  size_t n = 0;
  std::vector<double> samples;
};

inline Stat Summarize(std::vector<double> v) {
  Stat s;
  if (v.empty()) return s;
  s.samples = v;
  std::sort(v.begin(), v.end());
  s.n = v.size();
  s.median = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  s.min = v.front();
  s.max = v.back();
  return s;
}

inline json ToJson(const Stat& s) {
  return json{
      {"median", s.median}, {"min", s.min}, {"max", s.max}, {"n", s.n}, {"samples", s.samples}};
}

// Throughput (bytes / seconds) of every sample, summarized.
inline Stat Rate(const Stat& seconds, double bytes) {
  std::vector<double> r;
  for (double s : seconds.samples) r.push_back(s > 0 ? bytes / s : 0);
  return Summarize(r);
}

// ---- arguments ------------------------------------------------------------------
// "--name value" options and "--flag" switches; unknown options are an error.
class Args {
 public:
  Args(int argc, char** argv, std::string usage, std::set<std::string> flags)
      : usage_(std::move(usage)), flags_(std::move(flags)) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "-h" || a == "--help") Usage(0);
      if (a.rfind("--", 0) != 0) Usage(2);
      a = a.substr(2);
      if (flags_.count(a)) {
        values_[a] = "1";
      } else {
        if (i + 1 >= argc) Usage(2);
        values_[a] = argv[++i];
      }
    }
  }
  bool Flag(const std::string& name) {
    used_.insert(name);
    return values_.count(name) > 0;
  }
  std::string Str(const std::string& name, const std::string& def) {
    used_.insert(name);
    auto it = values_.find(name);
    return it == values_.end() ? def : it->second;
  }
  double Num(const std::string& name, double def) {
    std::string s = Str(name, "");
    return s.empty() ? def : std::stod(s);
  }
  // Comma-separated list.
  std::vector<std::string> List(const std::string& name, const std::string& def) {
    std::vector<std::string> out;
    std::stringstream ss(Str(name, def));
    std::string item;
    while (std::getline(ss, item, ',')) {
      if (!item.empty()) out.push_back(item);
    }
    return out;
  }
  // Call after reading every option: rejects options nobody read.
  void Done() {
    for (const auto& kv : values_) {
      if (!used_.count(kv.first)) {
        std::fprintf(stderr, "unknown option --%s\n", kv.first.c_str());
        Usage(2);
      }
    }
  }
  [[noreturn]] void Usage(int rc) const {
    std::fprintf(rc == 0 ? stdout : stderr, "%s\n", usage_.c_str());
    std::exit(rc);
  }

 private:
  std::string usage_;
  std::set<std::string> flags_;
  std::map<std::string, std::string> values_;
  std::set<std::string> used_;
};

// "64M", "1G", "512K", "1000" -> bytes (binary units).
inline uint64_t ParseBytes(const std::string& s) {
  size_t pos = 0;
  double v = std::stod(s, &pos);
  std::string unit = s.substr(pos);
  double mult = 1;
  if (unit == "K" || unit == "KiB")
    mult = 1024.0;
  else if (unit == "M" || unit == "MiB")
    mult = 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB")
    mult = 1024.0 * 1024 * 1024;
  else if (!unit.empty())
    throw std::invalid_argument("bad size '" + s + "'");
  return static_cast<uint64_t>(v * mult);
}

inline std::string SizeLabel(uint64_t bytes) {
  char buf[32];
  if (bytes >= (uint64_t{1} << 30) && bytes % (uint64_t{1} << 30) == 0) {
    std::snprintf(buf, sizeof buf, "%lluGiB", static_cast<unsigned long long>(bytes >> 30));
  } else if (bytes >= (uint64_t{1} << 20)) {
    std::snprintf(buf, sizeof buf, "%.0fMiB", bytes / 1048576.0);
  } else {
    std::snprintf(buf, sizeof buf, "%.0fKiB", bytes / 1024.0);
  }
  return buf;
}

inline torch::ScalarType ParseDtype(const std::string& s) {
  if (s == "fp32" || s == "f32" || s == "float32") return torch::kFloat32;
  if (s == "bf16" || s == "bfloat16") return torch::kBFloat16;
  if (s == "fp16" || s == "float16") return torch::kFloat16;
  throw std::invalid_argument("unknown dtype '" + s + "' (fp32, bf16, fp16)");
}

inline std::string DtypeLabel(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32:
      return "fp32";
    case torch::kBFloat16:
      return "bf16";
    case torch::kFloat16:
      return "fp16";
    default:
      return "other";
  }
}

// ---- states ----------------------------------------------------------------------
// A transformer-shaped model (hidden h, n blocks of attention + MLP + layer
// norms, an 8192-token embedding) plus Adam's exp_avg / exp_avg_sq per
// parameter, sized to about `target_bytes` in `dtype`: a model-like mix of a
// few large matrices and many small vectors. Weights ~ N(0, 0.02), exp_avg ~
// N(0, 1e-3), exp_avg_sq ~ U(0, 1e-6), as after some training steps.
struct ModelState {
  ackpt::Checkpoint checkpoint;
  std::vector<torch::Tensor> tensors;  // every tensor, in creation order
  std::vector<std::string> names;      // matching flat names
  uint64_t bytes = 0;
};

inline ModelState MakeModelState(uint64_t target_bytes, torch::ScalarType dtype,
                                 uint64_t seed = 0) {
  torch::manual_seed(static_cast<int64_t>(seed));
  const double esize = static_cast<double>(torch::elementSize(dtype));
  int64_t h = 1024;
  if (target_bytes < (uint64_t{48} << 20))
    h = 256;
  else if (target_bytes < (uint64_t{200} << 20))
    h = 512;
  // The embedding takes at most ~30 % of the state (8192 tokens for large states).
  const int64_t vocab = std::max<int64_t>(
      256,
      std::min<int64_t>(
          8192, static_cast<int64_t>(0.3 * double(target_bytes) / (h * esize * 3)) / 256 * 256));
  const double embed_bytes = double(vocab) * h * esize * 3;
  const double layer_bytes = (12.0 * h * h + 13.0 * h) * esize * 3;
  const int layers =
      std::max(1, static_cast<int>((double(target_bytes) - embed_bytes) / layer_bytes));
  // An output head takes up the rest, so the state is within a row of the target.
  const int64_t head_rows = static_cast<int64_t>(
      (double(target_bytes) - embed_bytes - layers * layer_bytes - h * esize * 3) /
      (h * esize * 3));
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  shapes.push_back({"embed.weight", {vocab, h}});
  for (int l = 0; l < layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    shapes.push_back({p + "attn.qkv.weight", {3 * h, h}});
    shapes.push_back({p + "attn.qkv.bias", {3 * h}});
    shapes.push_back({p + "attn.out.weight", {h, h}});
    shapes.push_back({p + "attn.out.bias", {h}});
    shapes.push_back({p + "ln1.weight", {h}});
    shapes.push_back({p + "ln1.bias", {h}});
    shapes.push_back({p + "mlp.fc1.weight", {4 * h, h}});
    shapes.push_back({p + "mlp.fc1.bias", {4 * h}});
    shapes.push_back({p + "mlp.fc2.weight", {h, 4 * h}});
    shapes.push_back({p + "mlp.fc2.bias", {h}});
    shapes.push_back({p + "ln2.weight", {h}});
    shapes.push_back({p + "ln2.bias", {h}});
  }
  shapes.push_back({"ln_f.weight", {h}});
  if (head_rows > 0) shapes.push_back({"head.weight", {head_rows, h}});
  ModelState st;
  ackpt::StateDict optim_state;
  int64_t i = 0;
  auto opts = torch::TensorOptions().dtype(dtype);
  for (const auto& s : shapes) {
    torch::Tensor w = (torch::randn(s.second) * 0.02).to(opts);
    torch::Tensor m = (torch::randn(s.second) * 1e-3).to(opts);
    torch::Tensor v = (torch::rand(s.second) * 1e-6).to(opts);
    st.checkpoint.module_interface_state.set(s.first, w);
    optim_state.set(std::to_string(i),
                    ackpt::StateDict{{"step", int64_t{1000}}, {"exp_avg", m}, {"exp_avg_sq", v}});
    st.tensors.insert(st.tensors.end(), {w, m, v});
    st.names.push_back("model/" + s.first);
    st.names.push_back("optim/" + std::to_string(i) + "/exp_avg");
    st.names.push_back("optim/" + std::to_string(i) + "/exp_avg_sq");
    ++i;
  }
  st.checkpoint.trainer_state.set("optimizer",
                                  ackpt::StateDict{{"state", optim_state}, {"lr", 3e-4}});
  st.checkpoint.trainer_backend_state.set("global_step_completed", int64_t{1000});
  for (const auto& t : st.tensors) st.bytes += t.nbytes();
  return st;
}

// The same tensors as one flat StateDict (for the format-level API).
inline ackpt::StateDict FlatStateDict(const ModelState& st) {
  ackpt::StateDict d;
  for (size_t i = 0; i < st.tensors.size(); ++i) d.set(st.names[i], st.tensors[i]);
  return d;
}

// ---- SaveStats --------------------------------------------------------------------
// The newest SaveStats a checkpointer's on_save callback delivered (the
// callback runs on a writer thread).
class LastStats {
 public:
  std::function<void(const ackpt::SaveStats&)> Callback() {
    return [this](const ackpt::SaveStats& s) {
      std::lock_guard<std::mutex> lock(mu_);
      last_ = s;
    };
  }
  ackpt::SaveStats Get() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_;
  }

 private:
  std::mutex mu_;
  ackpt::SaveStats last_;
};

// ---- memcpy floors -----------------------------------------------------------------
// Copies every tensor into dst (contiguous, in order) with `threads` threads
// splitting the bytes into equal contiguous ranges.
inline void CopyTensors(const std::vector<torch::Tensor>& tensors, uint8_t* dst, int threads) {
  struct Piece {
    const uint8_t* src;
    uint8_t* dst;
    size_t n;
  };
  std::vector<Piece> pieces;
  uint64_t off = 0;
  for (const auto& t : tensors) {
    pieces.push_back({static_cast<const uint8_t*>(t.data_ptr()), dst + off, t.nbytes()});
    off += t.nbytes();
  }
  if (threads <= 1) {
    for (const auto& p : pieces) std::memcpy(p.dst, p.src, p.n);
    return;
  }
  const uint64_t total = off;
  auto run = [&](int k) {
    const uint64_t b = total * k / threads, e = total * (k + 1) / threads;
    uint64_t pos = 0;
    for (const auto& p : pieces) {
      const uint64_t pb = pos, pe = pos + p.n;
      pos = pe;
      const uint64_t lo = std::max(b, pb), hi = std::min(e, pe);
      if (lo < hi) std::memcpy(p.dst + (lo - pb), p.src + (lo - pb), hi - lo);
    }
  };
  std::vector<std::thread> ts;
  for (int k = 1; k < threads; ++k) ts.emplace_back(run, k);
  run(0);
  for (auto& t : ts) t.join();
}

// A pre-faulted anonymous buffer (so page faults are not timed).
class Buffer {
 public:
  explicit Buffer(uint64_t n) : n_(n) {
    p_ = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1,
                0);
    if (p_ == MAP_FAILED) throw std::runtime_error("mmap failed");
  }
  ~Buffer() { ::munmap(p_, n_); }
  uint8_t* data() const { return static_cast<uint8_t*>(p_); }
  uint64_t size() const { return n_; }

 private:
  void* p_;
  uint64_t n_;
};

// ---- files --------------------------------------------------------------------------
inline void FsyncPath(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// fsyncs the file and asks the kernel to drop its pages from the page cache
// (posix_fadvise DONTNEED). Returns false if the advice failed. Dropping is
// best effort: on a VM the host may still cache the bytes.
inline bool DropFromPageCache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return false;
  ::fsync(fd);
  int rc = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
  return rc == 0;
}

inline uint64_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
}

inline void RemoveTree(const std::string& dir) {
  if (dir.empty() || dir == "/") return;
  std::string cmd = "rm -rf '" + dir + "'";
  if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "warning: %s failed\n", cmd.c_str());
}

inline void FreshDir(const std::string& dir) {
  RemoveTree(dir);
  ackpt::Env::Default()->CreateDirs(dir);
}

// Writes `n` bytes from `data` to fd (file `path`) with write(2) in 8 MiB
// calls; on failure closes fd and throws.
inline void WriteAll(int fd, const std::string& path, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{8} << 20));
    if (w < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      throw std::runtime_error("write " + path + ": " + std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// Creates (truncates) `path` for writing; throws naming it.
inline int CreateFileForWrite(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("open " + path + ": " + std::strerror(errno));
  return fd;
}

// Writes `n` bytes from `data` to a new file with write(2) in 8 MiB calls.
inline void WriteFile(const std::string& path, const void* data, size_t n, bool fsync) {
  int fd = CreateFileForWrite(path);
  WriteAll(fd, path, data, n);
  if (fsync) ::fdatasync(fd);
  ::close(fd);
}

// Runs fn(k) for k in [0, threads) on `threads` threads (the caller is one).
template <typename F>
void OnThreads(int threads, F&& fn) {
  std::vector<std::thread> ts;
  for (int k = 1; k < threads; ++k) ts.emplace_back([&fn, k] { fn(k); });
  fn(0);
  for (auto& t : ts) t.join();
}

// pread of the whole file into dst, `threads` threads taking 8 MiB blocks in
// turn. A failed read stops every thread and throws on the caller's (never
// from a worker thread, where it would terminate the process).
inline void PreadFile(const std::string& path, uint8_t* dst, uint64_t size, int threads) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("open " + path);
  constexpr uint64_t kBlock = 8 << 20;
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  OnThreads(threads, [&](int) {
    for (;;) {
      const uint64_t off = next.fetch_add(kBlock);
      if (off >= size || failed) return;
      const uint64_t n = std::min(kBlock, size - off);
      uint64_t done = 0;
      while (done < n) {
        ssize_t r = ::pread(fd, dst + off + done, n - done, static_cast<off_t>(off + done));
        if (r <= 0) {
          if (r < 0 && errno == EINTR) continue;
          failed = true;
          return;
        }
        done += static_cast<uint64_t>(r);
      }
    }
  });
  ::close(fd);
  if (failed) throw std::runtime_error("pread " + path);
}

// ---- memory --------------------------------------------------------------------------
// A field of /proc/self/status in bytes ("VmRSS", "VmHWM").
inline uint64_t ProcStatusBytes(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string key = std::string(field) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::stoull(line.substr(key.size())) * 1024;
  }
  return 0;
}
inline uint64_t RssBytes() { return ProcStatusBytes("VmRSS"); }
inline uint64_t PeakRssBytes() { return ProcStatusBytes("VmHWM"); }

// Resets VmHWM to the current RSS (Linux >= 4.0); returns false if refused.
inline bool ResetPeakRss() {
  std::ofstream out("/proc/self/clear_refs");
  if (!out) return false;
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

// ---- subprocesses ----------------------------------------------------------------------
// Runs argv (no shell) and returns its exit status; stdout goes to out_path
// when given, else inherited.
inline int RunProcess(const std::vector<std::string>& argv, const std::string& out_path = "") {
  pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    if (!out_path.empty()) {
      int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::close(fd);
      }
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// fork + exec of this program as a child; its JSON comes back through a file,
// its whole-life peak RSS through wait4.
inline json RunChild(const std::vector<std::string>& argv, const std::string& out_path) {
  const auto t0 = Clock::now();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  struct rusage ru;
  std::memset(&ru, 0, sizeof ru);
  while (::wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
  }
  json r;
  std::ifstream in(out_path);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && in) {
    in >> r;
  } else {
    r["error"] = WIFSIGNALED(status) ? "child killed by signal " + std::to_string(WTERMSIG(status))
                                     : "child exited " + std::to_string(WEXITSTATUS(status));
  }
  r["child_maxrss_bytes"] = static_cast<uint64_t>(ru.ru_maxrss) * 1024;  // KiB on Linux
  r["child_wall_seconds"] = Since(t0);
  std::remove(out_path.c_str());
  return r;
}

// A disk-backed scratch directory for a driver's files: $TMPDIR, else
// /var/tmp (not a tmpfs /tmp), plus "ackpt-bench-NAME".
inline std::string DiskBenchDir(const std::string& name) {
  const char* t = std::getenv("TMPDIR");
  return std::string(t && *t ? t : "/var/tmp") + "/ackpt-bench-" + name;
}

inline bool HaveProgram(const std::string& name) {
  return std::system(("command -v " + name + " >/dev/null 2>&1").c_str()) == 0;
}

inline std::string SelfExe() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  buf[n] = 0;
  return buf;
}

// ---- output ---------------------------------------------------------------------------
inline void WriteJson(const std::string& path, const json& j) {
  if (path.empty()) return;
  std::ofstream out(path);
  out << j.dump(2) << "\n";
  if (!out) std::fprintf(stderr, "warning: could not write %s\n", path.c_str());
}

// Common facts every driver records.
inline json RunInfo(const std::string& name, bool quick) {
  json j;
  j["benchmark"] = name;
  j["quick"] = quick;
  j["hardware_concurrency"] = std::thread::hardware_concurrency();
  j["torch_version"] = TORCH_VERSION;
  j["torch_threads"] = torch::get_num_threads();
  j["unix_time"] = static_cast<int64_t>(std::time(nullptr));
  return j;
}

inline int HardwareThreads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

}  // namespace bench
