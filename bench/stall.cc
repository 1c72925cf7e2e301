// Item 1 — how long does save() stall the trainer? (Google Benchmark driver)
//
// For model-like states (transformer weights + Adam moments) of several sizes
// and dtypes, one benchmark per method and state, named
// stall/<method>/<size>/<dtype>; every repetition runs the method once and
// reports its time by hand (bench/gbench_driver.h: repetitions randomly
// interleaved, median/min/max aggregates, JSON via --benchmark_out):
//   memcpy_1t, memcpy_all  memcpy of the same bytes into a pre-faulted buffer,
//                          1 thread and all hardware threads (the floor)
//   ackpt_save             time inside DefaultCheckpointer::save() (the
//                          stall); the background write is waited for
//                          outside the timed region. Counters: end_to_end_s
//                          (save() entry to durable, from SaveStats) and
//                          snapshot_s (the copy inside save())
//   ackpt_force            save(force = true): ackpt's own blocking save
//   torch_save_fsync       torch::save(tensors, path) + fsync
//   pickle_save_fsync      torch::pickle_save(dict) + write + fsync
//   ackpt_overlap          overlap_snapshot = true: the time inside save()
//                          (it only plans the copy); then a compute phase of
//                          --overlap-compute x the all-threads memcpy time on
//                          the calling thread (standing in for forward and
//                          backward), then the fence. Counters: fence_s (time
//                          in wait_snapshot()), copy_s (the background copy,
//                          from SaveStats), compute_s. Expected: fence ~
//                          max(0, copy - compute)
// Every benchmark also reports bytes (the state's tensor bytes), tensors and
// bytes_per_second. Ratios between methods (stall / memcpy, stall /
// torch::save) are ratios of medians, computed by bench/report.py.
//
// Memory: with random interleaving (the default) every state stays loaded for
// the whole run with two checkpointers' staging each, about 3 x the sum of the
// state sizes, plus the memcpy buffer and torch::save's transient copies of the
// largest (measured: peak RSS 3.3 GB for 64M and 256M states in fp32 and bf16,
// 640 MiB in all; the defaults, 2.6 GiB of states, need about 11 GiB). With
// --benchmark_enable_random_interleaving=false one state at a time (2.0 GB
// for the same run: about 7 x the largest state).
//
//   ackpt_bench_stall [--sizes 64M,256M,1G] [--dtypes fp32,bf16]
//                     [--overlap-compute 0.5] [--dir DIR] [--quick]
//                     [--benchmark_repetitions=5] [--benchmark_out=FILE]
#include "gbench_driver.h"

using namespace bench;

namespace {

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

// One state and everything its methods need, built on first use.
struct Fixture {
  ModelState st;
  std::string dir;
  std::vector<torch::Tensor> list;
  c10::Dict<std::string, at::Tensor> dict;
  LastStats plain_stats, overlap_stats;
  std::unique_ptr<ackpt::DefaultCheckpointer> plain, overlap;
  double compute_s = 0;
  int64_t index = 1;
};

struct Options {
  std::string dir;
  double overlap_compute = 0.5;
  bool keep_all = true;  // random interleaving: any state may be needed next
};

Options g_options;
std::map<std::string, std::unique_ptr<Fixture>> g_fixtures;
std::unique_ptr<Buffer> g_dst;  // the memcpy destination, sized to the largest state

uint8_t* Destination(uint64_t bytes) {
  if (!g_dst || g_dst->size() < bytes) {
    g_dst.reset();
    g_dst = std::make_unique<Buffer>(bytes);
  }
  return g_dst->data();
}

ackpt::DefaultCheckpointerArguments CheckpointerArgs(const std::string& dir) {
  ackpt::DefaultCheckpointerArguments args;
  args.save_dir = dir;
  args.model_state_save_dir = dir;
  args.log_level = "WARN";
  return args;
}

Fixture& Get(uint64_t target, torch::ScalarType dtype) {
  const std::string key = SizeLabel(target) + "/" + DtypeLabel(dtype);
  auto it = g_fixtures.find(key);
  if (it != g_fixtures.end()) return *it->second;
  if (!g_options.keep_all) g_fixtures.clear();
  auto f = std::make_unique<Fixture>();
  f->st = MakeModelState(target, dtype, 1);
  f->dir = g_options.dir + "/" + SizeLabel(target) + "_" + DtypeLabel(dtype);
  FreshDir(f->dir);
  f->list = f->st.tensors;
  for (size_t i = 0; i < f->st.tensors.size(); ++i)
    f->dict.insert(f->st.names[i], f->st.tensors[i]);
  auto args = CheckpointerArgs(f->dir + "/ackpt");
  args.on_save = f->plain_stats.Callback();
  f->plain = std::make_unique<ackpt::DefaultCheckpointer>(args);
  auto oargs = CheckpointerArgs(f->dir + "/ackpt_overlap");
  oargs.overlap_snapshot = true;
  oargs.on_save = f->overlap_stats.Callback();
  f->overlap = std::make_unique<ackpt::DefaultCheckpointer>(oargs);
  // Warm-up saves allocate the staging pools outside any timed region.
  for (auto* ck : {f->plain.get(), f->overlap.get()}) {
    ck->save(f->st.checkpoint, 0);
    ck->wait();
  }
  // The compute phase between an overlapped save() and its fence: a fixed
  // fraction of one all-threads memcpy of the state (the faster of two).
  uint8_t* dst = Destination(f->st.bytes);
  double best = 1e9;
  for (int i = 0; i < 2; ++i) {
    const auto c0 = Clock::now();
    CopyTensors(f->st.tensors, dst, HardwareThreads());
    best = std::min(best, Since(c0));
  }
  f->compute_s = g_options.overlap_compute * best;
  std::printf("state %s: %zu tensors, %.1f MiB (transformer + Adam)\n", key.c_str(),
              f->st.tensors.size(), f->st.bytes / 1048576.0);
  std::fflush(stdout);
  return *g_fixtures.emplace(key, std::move(f)).first->second;
}

std::string CheckpointPath(const std::string& dir, int64_t index) {
  return dir + "/model_" + std::to_string(index) + ".safetensors.zst";
}

void Register(uint64_t target, torch::ScalarType dtype) {
  const std::string suffix = "/" + SizeLabel(target) + "/" + DtypeLabel(dtype);
  // The state's size is known only once it is built; the counters carry it.
  auto measure = [&](const std::string& method,
                     std::function<double(Fixture&, benchmark::State&)> fn) {
    Measure("stall/" + method + suffix, 0, [=](benchmark::State& state) {
      Fixture& f = Get(target, dtype);
      const double seconds = fn(f, state);
      state.counters["bytes"] = static_cast<double>(f.st.bytes);
      state.counters["tensors"] = static_cast<double>(f.st.tensors.size());
      state.counters["bytes_per_second"] =
          benchmark::Counter(static_cast<double>(f.st.bytes), benchmark::Counter::kIsRate);
      return seconds;
    });
  };
  measure("memcpy_1t", [](Fixture& f, benchmark::State&) {
    uint8_t* dst = Destination(f.st.bytes);
    const auto t0 = Clock::now();
    CopyTensors(f.st.tensors, dst, 1);
    return Since(t0);
  });
  measure("memcpy_all", [](Fixture& f, benchmark::State& state) {
    uint8_t* dst = Destination(f.st.bytes);
    const auto t0 = Clock::now();
    CopyTensors(f.st.tensors, dst, HardwareThreads());
    const double s = Since(t0);
    state.counters["threads"] = HardwareThreads();
    return s;
  });
  measure("ackpt_save", [](Fixture& f, benchmark::State& state) {
    const int64_t index = f.index++;
    const auto t0 = Clock::now();
    f.plain->save(f.st.checkpoint, index);
    const double s = Since(t0);
    f.plain->wait();
    const ackpt::SaveStats stats = f.plain_stats.Get();
    state.counters["end_to_end_s"] = stats.end_to_end_seconds;
    state.counters["snapshot_s"] = stats.snapshot_seconds;
    // Outside the timed region: no retention work inside the next save.
    std::remove(CheckpointPath(f.dir + "/ackpt", index).c_str());
    return s;
  });
  measure("ackpt_force", [](Fixture& f, benchmark::State&) {
    const int64_t index = f.index++;
    const auto t0 = Clock::now();
    f.plain->save(f.st.checkpoint, index, /*force=*/true);
    const double s = Since(t0);
    std::remove(CheckpointPath(f.dir + "/ackpt", index).c_str());
    return s;
  });
  measure("torch_save_fsync", [](Fixture& f, benchmark::State&) {
    const std::string pt = f.dir + "/torch.pt";
    const auto t0 = Clock::now();
    torch::save(f.list, pt);
    FsyncPath(pt);
    const double s = Since(t0);
    std::remove(pt.c_str());
    return s;
  });
  measure("pickle_save_fsync", [](Fixture& f, benchmark::State&) {
    const std::string pk = f.dir + "/pickle.pt";
    const auto t0 = Clock::now();
    {
      std::vector<char> bytes = torch::pickle_save(c10::IValue(f.dict));
      WriteFile(pk, bytes.data(), bytes.size(), /*fsync=*/true);
    }
    const double s = Since(t0);
    std::remove(pk.c_str());
    return s;
  });
  measure("ackpt_overlap", [](Fixture& f, benchmark::State& state) {
    const int64_t index = f.index++;
    const auto t0 = Clock::now();
    f.overlap->save(f.st.checkpoint, index);
    const double s = Since(t0);
    Spin(f.compute_s);
    const auto f0 = Clock::now();
    f.overlap->wait_snapshot();
    state.counters["fence_s"] = Since(f0);
    f.overlap->wait();
    state.counters["copy_s"] = f.overlap_stats.Get().snapshot_seconds;
    state.counters["compute_s"] = f.compute_s;
    std::remove(CheckpointPath(f.dir + "/ackpt_overlap", index).c_str());
    return s;
  });
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = WantsQuick(argc, argv);
  Args a = InitGoogleBenchmark(
      argc, argv,
      "usage: ackpt_bench_stall [--sizes 64M,256M,1G] [--dtypes fp32,bf16] "
      "[--overlap-compute 0.5] [--dir DIR] [--quick] [Google Benchmark flags]\n"
      "Defaults: 5 repetitions (--quick: 8M states, 2 repetitions), randomly interleaved.",
      {"quick"}, quick ? 2 : 5);
  a.Flag("quick");
  const auto sizes = a.List("sizes", quick ? "8M" : "64M,256M,1G");
  const auto dtypes = a.List("dtypes", "fp32,bf16");
  g_options.overlap_compute = a.Num("overlap-compute", 0.5);
  g_options.dir = a.Str("dir", "/tmp/ackpt-bench-stall");
  a.Done();
  g_options.keep_all = Interleaving(argc, argv);
  benchmark::AddCustomContext("ackpt_benchmark", "stall");
  benchmark::AddCustomContext("torch_version", TORCH_VERSION);
  benchmark::AddCustomContext("torch_threads", std::to_string(torch::get_num_threads()));
  benchmark::AddCustomContext("overlap_compute", std::to_string(g_options.overlap_compute));
  for (const auto& size : sizes) {
    for (const auto& dt : dtypes) Register(ParseBytes(size), ParseDtype(dt));
  }
  const int rc = RunGoogleBenchmarks();
  g_fixtures.clear();
  RemoveTree(g_options.dir);
  return rc;
}
