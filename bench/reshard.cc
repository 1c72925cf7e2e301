// Resharded load (issue 24): DistributedCheckpointer::load(targets) on
// another world size than the one that saved, against the same-world-size
// load of the same bytes, on ranks of this machine (Gloo over a
// c10d::FileStore on 127.0.0.1, as bench/distributed.cc and
// tests/reshard_worker.cc do).
//
// The state: two fp32 global tensors of S bytes together, each rank holding
// only its box (Checkpoint::shards):
//   rows  [3S/4 / 4 KiB, 1024], row-sharded on save (3/4 of the bytes),
//   cols  [S/4 / 4 KiB, 1024], column-sharded on save (1/4 of the bytes),
// with pseudo-random values in [-0.05, 0.05) that are a function of the
// element's global index (so any rank can check any box). No rank-local or
// replicated state.
//
// --saved-ranks ranks (default 4) save it once per compression (none, zstd).
// Then, per compression, each load configuration is launched --rounds times
// (the order of configurations rotated per round), each launch timing
// --reps calls of load(targets) after one untimed warm-up:
//   same    saved-ranks ranks, each loading the box it saved (the baseline),
//   W ranks (--worlds, default 2,3): each loading row box r of W of both
//           tensors (the cols tensor is cut across the saved boxes: every
//           target box overlaps every saved one),
//   control W ranks loading what W ranks saved (each its own box), unless
//           --no-controls: what W processes of this machine load without
//           resharding, so that the resharding cost can be told apart from
//           the cost of running W ranks on the shared cores.
// Every load starts behind a barrier; one sample is the slowest rank's time
// inside load() (the collective's wall time). Throughput: the bytes loaded
// (S, all ranks together) / that time. Per rank: bytes read / bytes needed
// from last_load_info() (slab bytes) and from an EnvWrapper counting every
// RandomAccessFile::Read (headers and index included). After the timed
// loads each rank checks its boxes element for element.
//
// The files were just written and are read from the page cache (hot loads):
// the driver does not drop caches, so this measures the CPU side of a
// resharded load (slab selection, partial slabs, decompression, copies),
// not the disk. The ranks share the machine's cores.
//
//   ackpt_bench_reshard [--size 256M] [--saved-ranks 4] [--worlds 2,3] [--rounds 3]
//       [--reps 3] [--compressions none,zstd] [--no-controls] [--timeout S] [--dir DIR]
//       [--json FILE] [--quick]
// --quick (the ctest smoke run, ~10 s): 8 MiB, --worlds 3, zstd only, no
// controls, one round of one load.
#include <signal.h>
#include <sys/prctl.h>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "ackpt/distributed.h"
#include "bench_common.h"
#include "bench_launch.h"

using namespace bench;

namespace {

constexpr int64_t kCols = 1024;  // fp32 columns of both tensors: 4 KiB rows
const char* const kRows = "module_interface_state/rows";
const char* const kColsName = "module_interface_state/cols";

struct Shapes {
  int64_t rows_rows = 0, cols_rows = 0;  // first extents of "rows" and "cols"
};
Shapes ShapesFor(uint64_t size) {
  const int64_t row_bytes = kCols * 4;
  Shapes s;
  s.rows_rows = std::max<int64_t>(1, static_cast<int64_t>(size * 3 / 4) / row_bytes);
  s.cols_rows = std::max<int64_t>(1, static_cast<int64_t>(size / 4) / row_bytes);
  return s;
}

// [begin, end) of part i of n of an extent (the first extent % n parts one longer).
std::pair<int64_t, int64_t> Range(int64_t extent, int i, int n) {
  const int64_t base = extent / n, extra = extent % n;
  const int64_t begin = i * base + std::min<int64_t>(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

struct Box {
  std::string name;
  std::vector<int64_t> global, offsets, shape;
};

// Rank r of w's box of a tensor: rows cut, or (by_cols) columns cut.
Box BoxOf(const std::string& name, int64_t rows, int r, int w, bool by_cols) {
  Box b{name, {rows, kCols}, {0, 0}, {rows, kCols}};
  const size_t d = by_cols ? 1 : 0;
  auto [lo, hi] = Range(b.global[d], r, w);
  b.offsets[d] = lo;
  b.shape[d] = hi - lo;
  return b;
}

// The boxes rank r of w saves (rows by rows, cols by columns) or loads
// (resharded: both by rows; same world size: what it saved).
std::vector<Box> BoxesOf(const Shapes& s, int r, int w, bool save_layout) {
  return {BoxOf(kRows, s.rows_rows, r, w, false), BoxOf(kColsName, s.cols_rows, r, w, save_layout)};
}

inline uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The values of box b: element (i, j) of the global tensor is a function of
// (tensor, i * kCols + j).
at::Tensor Values(const Box& b) {
  at::Tensor t = torch::empty(b.shape, torch::kFloat32);
  float* p = t.data_ptr<float>();
  const uint64_t salt = std::hash<std::string>{}(b.name);
  for (int64_t i = 0; i < b.shape[0]; ++i) {
    const uint64_t row = static_cast<uint64_t>(b.offsets[0] + i) * kCols;
    for (int64_t j = 0; j < b.shape[1]; ++j) {
      const uint64_t h = SplitMix(salt ^ (row + static_cast<uint64_t>(b.offsets[1] + j)));
      *p++ = static_cast<float>(static_cast<double>(h >> 40) / double(1 << 24) - 0.5) * 0.1f;
    }
  }
  return t;
}

struct WorkerOptions {
  std::string mode;  // save | load
  int rank = 0, world = 1, saved = 4, reps = 1;
  uint64_t size = 0;
  std::string store, dir, out, compression;
  double timeout = 120;
};

// One rank of one launch.
int Worker(const WorkerOptions& o) {
  torch::set_num_threads(1);  // the ranks share the machine
  auto store = c10::make_intrusive<c10d::FileStore>(o.store, o.world);
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000));
  store->setTimeout(timeout);
  auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
  gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world, gloo);
  auto barrier = [&] { pg->barrier()->wait(timeout); };

  CountingEnv env;
  ackpt::DistributedCheckpointerArguments a;
  a.checkpointer.save_dir = o.dir;
  a.checkpointer.model_state_save_dir = "";
  a.checkpointer.log_level = "WARN";
  a.checkpointer.drain_timeout_seconds = o.timeout;
  a.checkpointer.env = &env;
  a.checkpointer.compression =
      o.compression == "none" ? ackpt::Compression::kNone : ackpt::Compression::kZstd;
  a.process_group = pg;
  a.store = store;
  a.replicated = {};  // only sharded tensors
  a.commit_timeout_seconds = o.timeout;
  a.local_state_on_resize = ackpt::LocalStateOnResize::kEmpty;  // there is none
  ackpt::DistributedCheckpointer ck(a);
  const Shapes shapes = ShapesFor(o.size);
  json r;
  r["rank"] = o.rank;
  r["world"] = o.world;

  if (o.mode == "save") {
    ackpt::Checkpoint c;
    uint64_t bytes = 0;
    for (const Box& b : BoxesOf(shapes, o.rank, o.world, /*save_layout=*/true)) {
      at::Tensor t = Values(b);
      bytes += t.nbytes();
      c.module_interface_state.set(b.name.substr(b.name.find('/') + 1), t);
      c.shards[b.name] = ackpt::ShardBox{b.offsets, b.global};
    }
    barrier();
    const auto t0 = Clock::now();
    ck.save(c, 1, /*force=*/true);
    r["save_seconds"] = Since(t0);
    r["bytes"] = bytes;
    barrier();
    WriteJson(o.out, r);
    return 0;
  }

  // load: pre-faulted targets, allocated once (a resumed trainer's tensors).
  const bool same = o.world == o.saved;
  const std::vector<Box> boxes = BoxesOf(shapes, o.rank, o.world, /*save_layout=*/same);
  ackpt::LoadTargets targets;
  std::vector<at::Tensor> dst;
  uint64_t needed = 0;
  for (const Box& b : boxes) {
    dst.push_back(torch::zeros(b.shape, torch::kFloat32));
    needed += dst.back().nbytes();
    targets.into.module_interface_state.set(b.name.substr(b.name.find('/') + 1), dst.back());
    targets.into.shards[b.name] = ackpt::ShardBox{b.offsets, b.global};
  }
  std::vector<double> seconds;
  json info;
  for (int rep = -1; rep < o.reps; ++rep) {  // rep -1: the warm-up
    barrier();
    env.Reset();
    const auto t0 = Clock::now();
    ck.load(targets);
    const double s = Since(t0);
    const uint64_t env_bytes = env.bytes();
    barrier();
    const ackpt::DistributedLoadInfo li = ck.last_load_info();
    if (li.index != 1 || li.saved_world_size != o.saved)
      throw std::runtime_error("load found index " + std::to_string(li.index) + " saved by " +
                               std::to_string(li.saved_world_size) + " ranks");
    if (rep < 0) continue;
    seconds.push_back(s);
    info = json{{"sharded_bytes_read", li.sharded_bytes_read},
                {"sharded_bytes_needed", li.sharded_bytes_needed},
                {"env_bytes_read", env_bytes}};
  }
  // Element for element, outside the timing.
  for (size_t i = 0; i < boxes.size(); ++i) {
    if (!torch::equal(dst[i], Values(boxes[i])))
      throw std::runtime_error("rank " + std::to_string(o.rank) + ": " + boxes[i].name +
                               " loaded wrong values");
  }
  r["seconds"] = seconds;
  r["bytes_needed"] = needed;
  r["info"] = info;
  WriteJson(o.out, r);
  return 0;
}

// /proc/loadavg's first three fields: how busy the shared machine was.
std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

uint64_t DirBytes(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& f : ackpt::Env::Default()->GetChildren(dir)) n += FileSize(dir + "/" + f);
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  Args a(argc, argv,
         "usage: ackpt_bench_reshard [--size 256M] [--saved-ranks 4] [--worlds 2,3] [--rounds 3]\n"
         "       [--reps 3] [--compressions none,zstd] [--no-controls] [--timeout S] [--dir DIR]\n"
         "       [--json FILE] [--quick]\n"
         "  --size: bytes of the sharded state, all ranks together\n"
         "  --worlds: the world sizes that load it resharded into row boxes\n"
         "  --rounds: launches per configuration; --reps: timed loads per launch\n"
         "  --no-controls: skip the W ranks -> W ranks loads (W of --worlds)\n"
         "  --timeout: seconds one launch (all ranks) may take before every rank is killed",
         {"quick", "worker", "no-controls"});
  const bool quick = a.Flag("quick");
  const bool worker = a.Flag("worker");
  const uint64_t size = ParseBytes(a.Str("size", quick ? "8M" : "256M"));
  const int saved = static_cast<int>(a.Num("saved-ranks", 4));
  std::vector<int> worlds;
  for (const auto& w : a.List("worlds", quick ? "3" : "2,3")) worlds.push_back(std::stoi(w));
  const int rounds = std::max(1, static_cast<int>(a.Num("rounds", quick ? 1 : 3)));
  const int reps = std::max(1, static_cast<int>(a.Num("reps", quick ? 1 : 3)));
  const std::vector<std::string> compressions =
      a.List("compressions", quick ? "zstd" : "none,zstd");
  const double timeout = a.Num("timeout", quick ? 60 : 600);
  const bool controls = !a.Flag("no-controls") && !quick;  // --quick: under 20 s
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-reshard");
  const std::string json_out = a.Str("json", "");
  WorkerOptions wo;
  wo.mode = a.Str("mode", "");
  wo.rank = static_cast<int>(a.Num("rank", 0));
  wo.world = static_cast<int>(a.Num("world", 1));
  wo.store = a.Str("store", "");
  wo.out = a.Str("out", "");
  wo.compression = a.Str("compression", "zstd");
  a.Done();
  if (worker) {
    wo.saved = saved;
    wo.reps = reps;
    wo.size = size;
    wo.dir = dir;
    wo.timeout = timeout;
    try {
      return Worker(wo);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %d: %s\n", wo.rank, e.what());
      return 3;
    }
  }
  if (saved < 1 || worlds.empty()) {
    std::fprintf(stderr, "--saved-ranks must be >= 1 and --worlds non-empty\n");
    return 2;
  }
  for (const auto& c : compressions) {
    if (c != "none" && c != "zstd") {
      std::fprintf(stderr, "--compressions: none or zstd, not '%s'\n", c.c_str());
      return 2;
    }
  }
  const Shapes shapes = ShapesFor(size);
  const uint64_t total = static_cast<uint64_t>(shapes.rows_rows + shapes.cols_rows) * kCols * 4;
  // (saved by, loaded by): the baseline first, the resharded loads, then the
  // controls (each W saved and loaded by W: what W ranks of this machine do
  // without resharding).
  std::vector<std::pair<int, int>> configs{{saved, saved}};
  std::vector<int> sources{saved};
  for (int w : worlds)
    if (w != saved) configs.push_back({saved, w});
  if (controls) {
    for (int w : worlds) {
      if (w == saved) continue;
      configs.push_back({w, w});
      sources.push_back(w);
    }
  }
  auto key = [](int s, int l) { return std::to_string(s) + "->" + std::to_string(l); };
  std::printf(
      "sharded state %s (rows [%lld, %lld] row-sharded, cols [%lld, %lld] column-sharded); "
      "configurations (saved by -> loaded by ranks):",
      SizeLabel(total).c_str(), (long long)shapes.rows_rows, (long long)kCols,
      (long long)shapes.cols_rows, (long long)kCols);
  for (const auto& c : configs) std::printf(" %s", key(c.first, c.second).c_str());
  std::printf(
      "\nGloo over a FileStore on 127.0.0.1; %d rounds x %d loads; hot (page cache); %d hardware "
      "threads shared by all ranks; load average %s\n",
      rounds, reps, HardwareThreads(), LoadAverage().c_str());
  std::fflush(stdout);
  FreshDir(dir);
  ::signal(SIGINT, OnSignal);
  ::signal(SIGTERM, OnSignal);
  const std::string self = SelfExe();
  int launches = 0;
  auto save_dir = [&](const std::string& comp, int s) {
    return dir + "/" + comp + "/saved" + std::to_string(s);
  };
  // Runs one launch of `world` ranks on the checkpoint `s` ranks saved;
  // returns their JSON or throws.
  auto launch = [&](const std::string& mode, int world, int s, const std::string& comp) {
    const std::string ldir = dir + "/launch" + std::to_string(++launches);
    FreshDir(ldir);
    std::vector<std::vector<std::string>> argvs;
    std::vector<std::string> logs, outs;
    for (int r = 0; r < world; ++r) {
      outs.push_back(ldir + "/rank" + std::to_string(r) + ".json");
      logs.push_back(ldir + "/rank" + std::to_string(r) + ".log");
      argvs.push_back({self,
                       "--worker",
                       "--mode",
                       mode,
                       "--rank",
                       std::to_string(r),
                       "--world",
                       std::to_string(world),
                       "--saved-ranks",
                       std::to_string(s),
                       "--size",
                       std::to_string(size),
                       "--reps",
                       std::to_string(reps),
                       "--store",
                       ldir + "/store",
                       "--dir",
                       save_dir(comp, s),
                       "--out",
                       outs.back(),
                       "--compression",
                       comp,
                       "--timeout",
                       std::to_string(timeout)});
    }
    const std::string err = RunRanks(argvs, logs, timeout);
    if (!err.empty())
      throw std::runtime_error(mode + " on " + std::to_string(world) + " ranks: " + err);
    std::vector<json> w(static_cast<size_t>(world));
    for (int r = 0; r < world; ++r) {
      std::ifstream in(outs[static_cast<size_t>(r)]);
      in >> w[static_cast<size_t>(r)];
    }
    RemoveTree(ldir);
    return w;
  };

  json j = RunInfo("reshard", quick);
  j["bytes"] = total;
  j["shapes"] = {{"rows", {shapes.rows_rows, kCols}}, {"cols", {shapes.cols_rows, kCols}}};
  j["saved_ranks"] = saved;
  for (const auto& c : configs) j["configurations"].push_back(key(c.first, c.second));
  j["rounds"] = rounds;
  j["reps_per_launch"] = reps;
  j["hot_page_cache"] = true;
  j["timeout_seconds"] = timeout;
  j["load_average_start"] = LoadAverage();
  const auto t_all = Clock::now();
  bool all_met = true;
  try {
    for (const auto& comp : compressions) {
      json& jc = j["results"][comp];
      std::printf("\n[%s]", comp.c_str());
      for (int s : sources) {
        ackpt::Env::Default()->CreateDirs(save_dir(comp, s));
        const auto sv = launch("save", s, s, comp);
        double save_max = 0;
        for (const auto& w : sv) save_max = std::max(save_max, w["save_seconds"].get<double>());
        jc["saves"][std::to_string(s)] = {
            {"ranks", s}, {"save_seconds", save_max}, {"file_bytes", DirBytes(save_dir(comp, s))}};
        std::printf(" saved by %d ranks in %.2f s (force), %.1f MiB on disk;", s, save_max,
                    DirBytes(save_dir(comp, s)) / 1048576.0);
      }
      std::printf("\n");
      std::fflush(stdout);
      std::map<std::string, std::vector<double>> slowest;               // config -> samples
      std::map<std::string, std::vector<std::vector<double>>> by_rank;  // config -> rank -> samples
      std::map<std::string, std::vector<json>> last;                    // config -> ranks' JSON
      for (int round = 0; round < rounds; ++round) {
        for (size_t k = 0; k < configs.size(); ++k) {
          const auto [s, world] = configs[(k + static_cast<size_t>(round)) % configs.size()];
          const std::string c = key(s, world);
          const auto w = launch("load", world, s, comp);
          by_rank[c].resize(static_cast<size_t>(world));
          for (int rep = 0; rep < reps; ++rep) {
            double m = 0;
            for (int r = 0; r < world; ++r) {
              const double t = w[static_cast<size_t>(r)]["seconds"][rep].get<double>();
              by_rank[c][static_cast<size_t>(r)].push_back(t);
              m = std::max(m, t);
            }
            slowest[c].push_back(m);
          }
          last[c] = w;
        }
      }
      std::map<std::string, double> median_s;
      for (const auto& c : configs)
        median_s[key(c.first, c.second)] = Summarize(slowest[key(c.first, c.second)]).median;
      const double base = median_s[key(saved, saved)];
      std::printf("%-22s %24s %8s %8s %9s %11s %11s\n", "saved -> loaded",
                  "load() ms med (min-max)", "GB/s", "x same", "x control", "slab r/n", "env r/n");
      for (const auto& [s, world] : configs) {
        const std::string c = key(s, world);
        json& jw = jc["load"][c];
        const Stat t = Summarize(slowest[c]);
        const Stat rate = Rate(t, double(total));
        jw["saved_ranks"] = s;
        jw["ranks"] = world;
        jw["resharded"] = world != s;
        jw["load_seconds"] = ToJson(t);
        jw["throughput_bytes_per_second"] = ToJson(rate);
        for (const auto& v : by_rank[c]) jw["load_seconds_by_rank"].push_back(ToJson(Summarize(v)));
        double slab_max = 0, env_max = 0;
        for (const auto& w : last[c]) {
          const double need = w["bytes_needed"].get<double>();
          const double slab = w["info"]["sharded_bytes_read"].get<double>();
          const double envb = w["info"]["env_bytes_read"].get<double>();
          slab_max = std::max(slab_max, slab / need);
          env_max = std::max(env_max, envb / need);
          jw["per_rank"].push_back({{"rank", w["rank"]},
                                    {"bytes_needed", need},
                                    {"sharded_bytes_needed", w["info"]["sharded_bytes_needed"]},
                                    {"sharded_bytes_read", slab},
                                    {"env_bytes_read", envb},
                                    {"slab_read_over_needed", slab / need},
                                    {"env_read_over_needed", envb / need}});
        }
        jw["slab_read_over_needed_max"] = slab_max;
        jw["env_read_over_needed_max"] = env_max;
        // Throughput ratios: a median time over this one's (same bytes).
        const double ratio = base / t.median;
        jw["throughput_over_same_world"] = ratio;
        double control = 0;
        if (world != s) {
          const bool met = ratio >= 0.8 && slab_max <= 1.1 && env_max <= 1.1;
          if (median_s.count(key(world, world))) {
            control = median_s[key(world, world)] / t.median;
            jw["throughput_over_control"] = control;
          }
          jw["targets"] =
              json::array({{{"what", "throughput >= 0.8 x same-world-size load"},
                            {"value", ratio},
                            {"bound", 0.8},
                            {"met", ratio >= 0.8}},
                           {{"what", "slab bytes read per rank <= 1.1 x bytes that rank needs"},
                            {"value", slab_max},
                            {"bound", 1.1},
                            {"met", slab_max <= 1.1}},
                           {{"what", "bytes read per rank (Env) <= 1.1 x bytes that rank needs"},
                            {"value", env_max},
                            {"bound", 1.1},
                            {"met", env_max <= 1.1}}});
          all_met = all_met && met;
        }
        const char* what = world != s ? " resharded" : (s == saved ? " baseline" : " control");
        char cell[64], ctl[16] = "-";
        std::snprintf(cell, sizeof cell, "%.1f (%.1f-%.1f)", t.median * 1e3, t.min * 1e3,
                      t.max * 1e3);
        if (control > 0) std::snprintf(ctl, sizeof ctl, "%.2f", control);
        std::printf("%-22s %24s %8.2f %8.2f %9s %11.3f %11.3f\n", (c + what).c_str(), cell,
                    rate.median / 1e9, ratio, ctl, slab_max, env_max);
      }
      std::fflush(stdout);
      RemoveTree(dir + "/" + comp);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ackpt_bench_reshard: %s\n", e.what());
    RemoveTree(dir);
    return 1;
  }
  j["seconds"] = Since(t_all);
  j["load_average_end"] = LoadAverage();
  j["all_targets_met"] = all_met;
  std::printf(
      "\nload average %s; targets (resharded throughput >= 0.8 x same world size, bytes read <= "
      "1.1 x needed): %s\n",
      LoadAverage().c_str(), all_met ? "met" : "MISSED (see above)");
  RemoveTree(dir);
  WriteJson(json_out, j);
  return 0;
}
