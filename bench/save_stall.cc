// How long does save() stall the trainer? Compared, in one run, with one
// memcpy of the same bytes (the physical floor) and with torch::save + fsync
// of the same state (what a LibTorch user would otherwise do).
//
//   ackpt_bench_save_stall [--gib 1.0] [--reps 5] [--dir DIR]
//                          [--compression zstd|none] [--rss-saves N] [--json FILE]
#include <fcntl.h>
#include <sys/mman.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ackpt/ackpt.h"

namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Stat {
  double median, min, max;
};
Stat Summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

// A transformer-shaped model (hidden h, `layers` blocks, vocab 8192) plus
// Adam's exp_avg / exp_avg_sq per parameter: ~300 fp32 tensors for 1 GiB.
ackpt::Checkpoint MakeState(double gib, std::vector<torch::Tensor>* all) {
  // Small states (smoke runs) use a narrower model so they stay small.
  const int64_t h = gib < 0.25 ? 256 : 1024, vocab = 8192;
  const double layer_bytes = 12.0 * h * h * 4 * 3;  // weights + Adam moments
  const int layers = std::max(1, static_cast<int>(gib * double(1 << 30) / layer_bytes + 0.5));
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
  ackpt::Checkpoint c;
  ackpt::StateDict optim_state;
  int64_t i = 0;
  for (const auto& s : shapes) {
    torch::Tensor w = torch::randn(s.second) * 0.02;
    c.module_interface_state.set(s.first, w);
    torch::Tensor m = torch::randn(s.second) * 1e-3, v = torch::rand(s.second) * 1e-6;
    optim_state.set(std::to_string(i++), ackpt::StateDict{{"step", int64_t{1000}}, {"exp_avg", m}, {"exp_avg_sq", v}});
    all->insert(all->end(), {w, m, v});
  }
  c.trainer_state.set("optimizer", ackpt::StateDict{{"state", optim_state}, {"lr", 3e-4}});
  c.trainer_backend_state.set("global_step_completed", int64_t{1000});
  return c;
}

// Resident set size of this process in bytes (Linux /proc).
uint64_t RssBytes() {
  std::ifstream in("/proc/self/statm");
  uint64_t pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

// RSS after 10 saves vs after n saves of a ~16 MiB state: host memory must not
// grow with the number of saves.
void RssGrowth(int n, const std::string& dir, nlohmann::json* out) {
  ackpt::DefaultCheckpointerArguments args;
  args.save_dir = dir + "/rss";
  args.log_level = "WARN";
  args.fsync = false;
  ackpt::Checkpoint c;
  for (int i = 0; i < 16; ++i) c.module_interface_state.set("w" + std::to_string(i), torch::randn({256, 1024}));
  ackpt::DefaultCheckpointer ck(args);
  uint64_t after10 = 0;
  for (int i = 0; i < n; ++i) {
    // Overwrite the same few names so the disk does not fill.
    ck.save(c, i % 4);
    if (i == 9) {
      ck.wait();
      after10 = RssBytes();
    }
  }
  ck.wait();
  const uint64_t after_n = RssBytes();
  std::printf("\nRSS after 10 saves: %.1f MB; after %d saves: %.1f MB (growth %+.1f MB)\n", after10 / 1e6, n,
              after_n / 1e6, (double(after_n) - double(after10)) / 1e6);
  (*out)["rss_after_10"] = after10;
  (*out)["rss_after_n"] = after_n;
  (*out)["rss_saves"] = n;
}

void FsyncPath(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

int main(int argc, char** argv) {
  double gib = 1.0;
  int reps = 5;
  std::string dir = "/tmp/ackpt-bench-stall";
  std::string json_out;
  std::string compression = "zstd";
  int rss_saves = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--gib") gib = std::stod(next());
    else if (a == "--reps") reps = std::max(1, std::stoi(next()));
    else if (a == "--dir") dir = next();
    else if (a == "--json") json_out = next();
    else if (a == "--compression") compression = next();
    else if (a == "--rss-saves") rss_saves = std::stoi(next());
    else {
      std::fprintf(stderr, "usage: %s [--gib G] [--reps N] [--dir DIR] [--compression zstd|none] [--rss-saves N] [--json FILE]\n", argv[0]);
      return 2;
    }
  }
  torch::manual_seed(0);
  std::system(("rm -rf '" + dir + "'").c_str());
  ackpt::Env::Default()->CreateDirs(dir);

  std::vector<torch::Tensor> tensors;
  ackpt::Checkpoint state = MakeState(gib, &tensors);
  uint64_t bytes = 0;
  for (const auto& t : tensors) bytes += t.nbytes();
  std::printf("state: %zu tensors, %.3f GiB (fp32, transformer + Adam state)\n", tensors.size() + 1,
              bytes / double(1 << 30));

  // 1. memcpy floor: one copy of the same bytes into a pre-faulted buffer.
  std::vector<double> memcpy_s;
  {
    void* dst = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    for (int r = 0; r < reps; ++r) {
      auto t0 = Clock::now();
      uint8_t* p = static_cast<uint8_t*>(dst);
      for (const auto& t : tensors) {
        std::memcpy(p, t.data_ptr(), t.nbytes());
        p += t.nbytes();
      }
      memcpy_s.push_back(Since(t0));
    }
    ::munmap(dst, bytes);
  }

  // 2. ackpt: time inside save(); the background write finishes (wait())
  //    outside the timed region before the next repetition.
  std::vector<double> stall_s, e2e_s, blocking_s;
  uint64_t file_bytes = 0;
  {
    ackpt::DefaultCheckpointerArguments args;
    args.save_dir = dir;
    args.log_level = "WARN";
    args.compression = compression == "none" ? ackpt::Compression::kNone : ackpt::Compression::kZstd;
    args.on_save = [&](const ackpt::SaveStats& s) {
      e2e_s.push_back(s.end_to_end_seconds);
      file_bytes = s.file_bytes;
    };
    ackpt::DefaultCheckpointer ck(args);
    // Warm-up: the first save allocates the staging pool.
    ck.save(state, 0);
    ck.wait();
    e2e_s.clear();
    for (int r = 1; r <= reps; ++r) {
      auto t0 = Clock::now();
      ck.save(state, r);
      stall_s.push_back(Since(t0));
      ck.wait();
    }
    for (int r = 1; r <= reps; ++r) {
      auto t0 = Clock::now();
      ck.save(state, 100 + r, /*force=*/true);
      blocking_s.push_back(Since(t0));
    }
  }

  // 3. torch::save of the same tensors, then fsync.
  std::vector<double> torch_s;
  {
    std::vector<torch::Tensor> list = tensors;
    for (int r = 0; r < reps; ++r) {
      const std::string path = dir + "/torch_" + std::to_string(r) + ".pt";
      auto t0 = Clock::now();
      torch::save(list, path);
      FsyncPath(path);
      torch_s.push_back(Since(t0));
      std::remove(path.c_str());
    }
  }

  const Stat m = Summarize(memcpy_s), s = Summarize(stall_s), t = Summarize(torch_s), b = Summarize(blocking_s),
             e = Summarize(e2e_s);
  const std::string what = "what (" + std::to_string(reps) + " repetitions)";
  std::printf("\n%-34s %10s %10s %10s %12s\n", what.c_str(), "median ms", "min ms", "max ms", "ms per GiB");
  auto row = [&](const char* name, const Stat& x) {
    std::printf("%-34s %10.1f %10.1f %10.1f %12.1f\n", name, x.median * 1e3, x.min * 1e3, x.max * 1e3,
                x.median * 1e3 / (bytes / double(1 << 30)));
  };
  row("memcpy of the same bytes", m);
  row("ackpt save() stall", s);
  row("ackpt background, end to end", e);
  row("ackpt save(force=true)", b);
  row("torch::save + fsync", t);
  std::printf("\nstall / memcpy          = %.2f   (target <= 1.3)\n", s.median / m.median);
  std::printf("stall / torch::save     = %.3f  (target <= 0.1)\n", s.median / t.median);
  std::printf("compression: %s, file %.1f MB for %.1f MB of tensors\n", compression.c_str(), file_bytes / 1e6,
              bytes / 1e6);
  nlohmann::json j;
  if (rss_saves > 0) RssGrowth(rss_saves, dir, &j);
  if (!json_out.empty()) {
    auto js = [](const Stat& x) { return nlohmann::json{{"median_s", x.median}, {"min_s", x.min}, {"max_s", x.max}}; };
    j["bytes"] = bytes;
    j["tensors"] = tensors.size() + 1;
    j["reps"] = reps;
    j["compression"] = compression;
    j["memcpy"] = js(m);
    j["ackpt_stall"] = js(s);
    j["ackpt_end_to_end"] = js(e);
    j["ackpt_blocking"] = js(b);
    j["torch_save_fsync"] = js(t);
    j["ratio_stall_memcpy"] = s.median / m.median;
    j["ratio_stall_torch_save"] = s.median / t.median;
    std::ofstream(json_out) << j.dump(2) << "\n";
  }
  std::system(("rm -rf '" + dir + "'").c_str());
  return 0;
}
