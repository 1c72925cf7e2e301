// Distributed checkpointing (issue 11): the two targets for many ranks, never
// measured before, on N ranks of this machine (Gloo over a c10d::FileStore on
// 127.0.0.1, as tests/dist_worker.cc and the demo's --nproc do).
//
//   stall   time inside DistributedCheckpointer::save() on every rank, each
//           rank saving S bytes of rank-local state (replicated = {}), vs the
//           time inside DefaultCheckpointer::save() of the same S bytes in
//           one process while the other ranks sit idle in a barrier.
//           Target: per-rank stall <= 1.2 x the single-process stall (ratio
//           of medians). The slowest rank of each repetition is reported too.
//   spread  a replicated state of S bytes (module_interface_state and
//           trainer_state/optimizer in `replicated`, identical on every rank):
//           save(force = true) on rank 0, i.e. save() entry to manifest
//           durable, with ackpt spreading the replicated tensors across the
//           ranks, vs what a DDP user would otherwise do: rank 0 alone saves
//           the whole state (DefaultCheckpointer, force = true) while the
//           other ranks idle. Reported: both medians and their ratio.
//
// The launcher starts N workers (this program re-executed with --worker) once
// per repetition, each with a fresh FileStore, and kills them all when one
// fails or the repetition outlives --timeout. A worker builds the state
// (bench::MakeModelState, the same seed on every rank), warms every
// checkpointer up with one untimed save (staging is allocated once), then
// times each method once, in an order rotated per repetition; every method
// starts after a barrier and ends durable (wait() / force) and behind a
// barrier, so no background work of one method overlaps the next. Workers
// write their times as JSON; the launcher aggregates them (median, min, max).
// Only rank 0 owns a save_dir (the writer lock); every method has its own.
//
//   ackpt_bench_distributed [--ranks 4] [--size 256M] [--reps 5]
//       [--compression zstd|none] [--timeout S] [--dir DIR] [--json FILE] [--quick]
#include "ackpt/distributed.h"

#include <signal.h>
#include <sys/prctl.h>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "bench_common.h"

using namespace bench;

namespace {

const char* const kMethods[] = {"single", "dist_local", "dist_replicated", "rank0_only"};

json StatsJson(const ackpt::SaveStats& s) {
  return json{{"ok", s.ok},
              {"error", s.error},
              {"bytes", s.bytes},
              {"file_bytes", s.file_bytes},
              {"stall_seconds", s.stall_seconds},
              {"snapshot_seconds", s.snapshot_seconds},
              {"write_seconds", s.write_seconds},
              {"end_to_end_seconds", s.end_to_end_seconds}};
}

struct WorkerOptions {
  int rank = 0, world = 1, rep = 0;
  uint64_t size = 0;
  std::string store, dir, out, compression;
  double timeout = 120;
};

// One rank of one repetition.
int Worker(const WorkerOptions& o) {
  torch::set_num_threads(1);  // N ranks share the machine; ackpt has its own threads
  auto store = c10::make_intrusive<c10d::FileStore>(o.store, o.world);
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000));
  store->setTimeout(timeout);
  auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
  gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world, gloo);
  auto barrier = [&] { pg->barrier()->wait(timeout); };

  // The same seed on every rank: the replicated state is identical, as in DDP.
  ModelState st = MakeModelState(o.size, torch::kFloat32, 11);

  ackpt::DefaultCheckpointerArguments base;
  base.model_state_save_dir = "";
  base.log_level = "WARN";
  base.retention.keep_last = 1;  // bounded disk use; rank 0 deletes as users' jobs would
  base.drain_timeout_seconds = o.timeout;
  if (o.compression == "none") base.compression = ackpt::Compression::kNone;

  std::map<std::string, LastStats> stats;
  auto dist_args = [&](const std::string& name, std::vector<std::string> replicated) {
    ackpt::DistributedCheckpointerArguments a;
    a.checkpointer = base;
    a.checkpointer.save_dir = o.dir + "/" + name;
    // A prefix of its own: a checkpointer's Store key space is numbered per
    // prefix by construction order, which two checkpointers built back to back
    // would interleave across ranks.
    a.checkpointer.file_prefix = name;
    a.checkpointer.on_save = stats[name].Callback();
    a.process_group = pg;
    a.store = store;
    a.replicated = std::move(replicated);
    a.commit_timeout_seconds = o.timeout;
    return a;
  };
  ackpt::DistributedCheckpointer dist_local(dist_args("dist_local", {}));
  ackpt::DistributedCheckpointer dist_replicated(
      dist_args("dist_replicated", {"module_interface_state", "trainer_state/optimizer"}));
  std::unique_ptr<ackpt::DefaultCheckpointer> single, rank0_only;
  if (o.rank == 0) {
    for (const char* name : {"single", "rank0_only"}) {
      ackpt::DefaultCheckpointerArguments a = base;
      a.save_dir = o.dir + "/" + name;
      a.on_save = stats[name].Callback();
      (std::string(name) == "single" ? single : rank0_only) =
          std::make_unique<ackpt::DefaultCheckpointer>(a);
    }
  }

  // Runs one method: a barrier, the timed call on the ranks that take part,
  // durable everywhere, a barrier. Returns the seconds this rank timed (-1
  // when it only waited).
  auto run = [&](const std::string& m, int64_t index) -> double {
    barrier();
    double seconds = -1;
    const auto t0 = Clock::now();
    if (m == "single") {
      if (single) {
        single->save(st.checkpoint, index);
        seconds = Since(t0);  // the stall
        single->wait();
      }
    } else if (m == "dist_local") {
      dist_local.save(st.checkpoint, index);
      seconds = Since(t0);  // the stall
      dist_local.wait();
    } else if (m == "dist_replicated") {
      dist_replicated.save(st.checkpoint, index, /*force=*/true);
      seconds = Since(t0);  // save() entry to manifest durable (rank 0)
    } else if (m == "rank0_only") {
      if (rank0_only) {
        rank0_only->save(st.checkpoint, index, /*force=*/true);
        seconds = Since(t0);  // save() entry to durable
      }
    }
    barrier();
    return seconds;
  };

  std::vector<std::string> order;
  for (size_t i = 0; i < 4; ++i) order.push_back(kMethods[(i + o.rep) % 4]);
  for (const auto& m : order) run(m, 0);  // warm-up: staging is allocated once
  json r;
  r["rank"] = o.rank;
  r["world"] = o.world;
  r["rep"] = o.rep;
  r["bytes"] = st.bytes;
  r["tensors"] = st.tensors.size();
  r["order"] = order;
  for (const auto& m : order) {
    const double s = run(m, 1);
    if (s < 0) continue;
    r["methods"][m] = json{{"seconds", s}, {"stats", StatsJson(stats[m].Get())}};
  }
  WriteJson(o.out, r);
  return 0;
}

// ---- launcher ------------------------------------------------------------------------
volatile sig_atomic_t g_signal = 0;
void OnSignal(int sig) { g_signal = sig; }

struct Child {
  pid_t pid = -1;
  std::string log;
};

// Starts argv with stdout and stderr to `log`; the child dies with us.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& log) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(126);
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::close(fd);
  }
  ::execv(args[0], args.data());
  ::_exit(127);
}

std::string Tail(const std::string& path, size_t n = 1500) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string s = ss.str();
  return s.size() > n ? "..." + s.substr(s.size() - n) : s;
}

// Runs one repetition: N workers, all waited for; on a failure, a signal or
// the timeout the others are killed. Returns "" or what went wrong.
std::string RunRep(const std::vector<std::vector<std::string>>& argvs,
                   const std::vector<std::string>& logs, double timeout) {
  std::vector<Child> kids(argvs.size());
  std::string error;
  auto kill_all = [&] {
    for (auto& k : kids)
      if (k.pid > 0) ::kill(k.pid, SIGKILL);
  };
  for (size_t r = 0; r < argvs.size(); ++r) {
    kids[r].log = logs[r];
    kids[r].pid = Spawn(argvs[r], logs[r]);
    if (kids[r].pid < 0) {
      error = "cannot start rank " + std::to_string(r) + ": " + std::strerror(errno);
      kill_all();
      break;
    }
  }
  const auto t0 = Clock::now();
  size_t running = 0;
  for (const auto& k : kids) running += k.pid > 0;
  bool killed = !error.empty();
  while (running > 0) {
    for (size_t r = 0; r < kids.size(); ++r) {
      int st = 0;
      if (kids[r].pid <= 0 || ::waitpid(kids[r].pid, &st, killed ? 0 : WNOHANG) != kids[r].pid)
        continue;
      kids[r].pid = -1;
      --running;
      const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      if (code != 0 && !killed) {
        error = "rank " + std::to_string(r) + " ended with status " + std::to_string(code) +
                "; its log:\n" + Tail(kids[r].log);
        killed = true;
        kill_all();
      }
    }
    if (!killed && g_signal) {
      error = "interrupted (signal " + std::to_string(int(g_signal)) + ")";
      killed = true;
      kill_all();
    }
    if (!killed && Since(t0) > timeout) {
      error = "timed out after " + std::to_string(int(timeout)) + " s; rank 0's log:\n" +
              Tail(kids[0].log);
      killed = true;
      kill_all();
    }
    if (running > 0 && !killed) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return error;
}

double Median(const json& stat) { return stat["median"].get<double>(); }

}  // namespace

int main(int argc, char** argv) {
  Args a(argc, argv,
         "usage: ackpt_bench_distributed [--ranks 4] [--size 256M] [--reps 5] "
         "[--compression zstd|none] [--timeout S] [--dir DIR] [--json FILE] [--quick]\n"
         "  --size: each rank's bytes (the stall), and the replicated state's bytes\n"
         "  --timeout: seconds one repetition (all ranks) may take before every rank is killed\n"
         "           (default 120 with --quick, else 600)",
         {"quick", "worker"});
  const bool quick = a.Flag("quick");
  const bool worker = a.Flag("worker");
  const int ranks = static_cast<int>(a.Num("ranks", quick ? 2 : 4));
  const uint64_t size = ParseBytes(a.Str("size", quick ? "4M" : "256M"));
  const int reps = std::max(1, static_cast<int>(a.Num("reps", quick ? 2 : 5)));
  const std::string compression = a.Str("compression", "zstd");
  const double timeout = a.Num("timeout", quick ? 120 : 600);
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-distributed");
  const std::string json_out = a.Str("json", "");
  WorkerOptions wo;
  wo.rank = static_cast<int>(a.Num("rank", 0));
  wo.rep = static_cast<int>(a.Num("rep", 0));
  wo.store = a.Str("store", "");
  wo.out = a.Str("out", "");
  a.Done();
  if (ranks < 2) {
    std::fprintf(stderr, "--ranks must be at least 2\n");
    return 2;
  }
  if (compression != "zstd" && compression != "none") {
    std::fprintf(stderr, "--compression must be zstd or none\n");
    return 2;
  }

  if (worker) {
    wo.world = ranks;
    wo.size = size;
    wo.dir = dir;
    wo.compression = compression;
    wo.timeout = timeout;
    try {
      return Worker(wo);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %d: %s\n", wo.rank, e.what());
      return 3;
    }
  }

  std::printf(
      "%d ranks (Gloo over a FileStore on 127.0.0.1), %s per rank / replicated, fp32 model-like "
      "state, compression %s, %d reps (one launch of the ranks each), %d hardware threads\n",
      ranks, SizeLabel(size).c_str(), compression.c_str(), reps, HardwareThreads());
  std::fflush(stdout);
  FreshDir(dir);
  ::signal(SIGINT, OnSignal);
  ::signal(SIGTERM, OnSignal);
  const std::string self = SelfExe();

  // Samples, by method.
  std::vector<double> single, local_all, local_slowest, local_e2e, single_e2e, repl, repl_slowest,
      rank0_only;
  std::vector<std::vector<double>> local_by_rank(static_cast<size_t>(ranks));
  std::vector<std::vector<double>> repl_part_bytes(static_cast<size_t>(ranks));
  uint64_t bytes = 0, tensors = 0;
  const auto t_all = Clock::now();
  for (int rep = 0; rep < reps; ++rep) {
    const std::string rdir = dir + "/rep" + std::to_string(rep);
    FreshDir(rdir);
    for (const char* m : kMethods) ackpt::Env::Default()->CreateDirs(rdir + "/" + m);
    const std::string store = rdir + "/store";  // a fresh FileStore per launch
    std::vector<std::vector<std::string>> argvs;
    std::vector<std::string> logs, outs;
    for (int r = 0; r < ranks; ++r) {
      outs.push_back(rdir + "/rank" + std::to_string(r) + ".json");
      logs.push_back(rdir + "/rank" + std::to_string(r) + ".log");
      argvs.push_back({self,
                       "--worker",
                       "--rank",
                       std::to_string(r),
                       "--ranks",
                       std::to_string(ranks),
                       "--size",
                       std::to_string(size),
                       "--rep",
                       std::to_string(rep),
                       "--store",
                       store,
                       "--dir",
                       rdir,
                       "--out",
                       outs.back(),
                       "--compression",
                       compression,
                       "--timeout",
                       std::to_string(timeout)});
    }
    const auto t0 = Clock::now();
    const std::string err = RunRep(argvs, logs, timeout);
    if (!err.empty()) {
      std::fprintf(stderr, "ackpt_bench_distributed: repetition %d failed: %s\n", rep, err.c_str());
      RemoveTree(dir);
      return 1;
    }
    std::vector<json> w(static_cast<size_t>(ranks));
    for (int r = 0; r < ranks; ++r) {
      std::ifstream in(outs[static_cast<size_t>(r)]);
      try {
        in >> w[static_cast<size_t>(r)];
      } catch (const std::exception& e) {
        std::fprintf(stderr, "ackpt_bench_distributed: rank %d wrote no result: %s\n", r, e.what());
        RemoveTree(dir);
        return 1;
      }
    }
    if (rep == 0) {
      std::printf("state: %.1f MiB per rank (%zu tensors)\n", w[0]["bytes"].get<double>() / 1048576,
                  w[0]["tensors"].get<size_t>());
    }
    bytes = w[0]["bytes"].get<uint64_t>();
    tensors = w[0]["tensors"].get<uint64_t>();
    const json& m0 = w[0]["methods"];
    single.push_back(m0["single"]["seconds"].get<double>());
    single_e2e.push_back(m0["single"]["stats"]["end_to_end_seconds"].get<double>());
    rank0_only.push_back(m0["rank0_only"]["seconds"].get<double>());
    repl.push_back(m0["dist_replicated"]["seconds"].get<double>());
    local_e2e.push_back(m0["dist_local"]["stats"]["end_to_end_seconds"].get<double>());
    double lmax = 0, rmax = 0;
    for (int r = 0; r < ranks; ++r) {
      const json& m = w[static_cast<size_t>(r)]["methods"];
      const double l = m["dist_local"]["seconds"].get<double>();
      local_all.push_back(l);
      local_by_rank[static_cast<size_t>(r)].push_back(l);
      lmax = std::max(lmax, l);
      rmax = std::max(rmax, m["dist_replicated"]["seconds"].get<double>());
      repl_part_bytes[static_cast<size_t>(r)].push_back(
          m["dist_replicated"]["stats"]["bytes"].get<double>());
    }
    local_slowest.push_back(lmax);
    repl_slowest.push_back(rmax);
    std::printf(
        "rep %d (%.1f s, order %s): stall single %.1f ms, %d ranks %.1f ms (slowest); replicated "
        "to manifest %.1f ms, rank 0 alone %.1f ms\n",
        rep, Since(t0), w[0]["order"].dump().c_str(), single.back() * 1e3, ranks, lmax * 1e3,
        repl.back() * 1e3, rank0_only.back() * 1e3);
    std::fflush(stdout);
    RemoveTree(rdir);
  }

  json j = RunInfo("distributed", quick);
  j["ranks"] = ranks;
  j["bytes"] = bytes;
  j["tensors"] = tensors;
  j["compression"] = compression;
  j["reps"] = reps;
  j["timeout_seconds"] = timeout;
  j["seconds"] = Since(t_all);
  json& res = j["results"];
  res["single_stall_seconds"] = ToJson(Summarize(single));
  res["dist_stall_seconds"] = ToJson(Summarize(local_all));
  res["dist_stall_slowest_seconds"] = ToJson(Summarize(local_slowest));
  for (const auto& v : local_by_rank) res["dist_stall_by_rank"].push_back(ToJson(Summarize(v)));
  res["single_end_to_end_seconds"] = ToJson(Summarize(single_e2e));
  res["dist_end_to_end_seconds"] = ToJson(Summarize(local_e2e));
  res["replicated_seconds"] = ToJson(Summarize(repl));
  res["replicated_slowest_seconds"] = ToJson(Summarize(repl_slowest));
  res["rank0_only_seconds"] = ToJson(Summarize(rank0_only));
  for (const auto& v : repl_part_bytes) res["replicated_part_bytes"].push_back(Summarize(v).median);

  const double stall_ratio =
      Median(res["dist_stall_seconds"]) / Median(res["single_stall_seconds"]);
  const double slowest_ratio =
      Median(res["dist_stall_slowest_seconds"]) / Median(res["single_stall_seconds"]);
  const double spread_ratio = Median(res["replicated_seconds"]) / Median(res["rank0_only_seconds"]);
  // The snapshot bytes the machine copied per second while the ranks stalled,
  // against one process alone: equal rates mean the stall is the copy shared out.
  const double agg_gbps =
      double(ranks) * double(bytes) / Median(res["dist_stall_slowest_seconds"]) / 1e9;
  const double single_gbps = double(bytes) / Median(res["single_stall_seconds"]) / 1e9;
  j["aggregate_stall_gbps"] = agg_gbps;
  j["single_stall_gbps"] = single_gbps;
  j["stall_ratio"] = stall_ratio;
  j["stall_ratio_slowest"] = slowest_ratio;
  j["replicated_ratio"] = spread_ratio;
  j["targets"] =
      json::array({{{"what", "per-rank stall <= 1.2 x single-process stall, same per-rank bytes"},
                    {"value", stall_ratio},
                    {"bound", 1.2},
                    {"met", stall_ratio <= 1.2}}});

  auto row = [](const char* what, const json& s, const std::string& note) {
    std::printf("%-58s %9.1f (%.1f-%.1f)  %s\n", what, Median(s) * 1e3,
                s["min"].get<double>() * 1e3, s["max"].get<double>() * 1e3, note.c_str());
  };
  char buf[128];
  std::printf("\n%-58s %s\n", "ms, median (min-max)", "");
  row("stall: single process, DefaultCheckpointer::save()", res["single_stall_seconds"], "");
  std::snprintf(buf, sizeof buf, "%.2f x single", stall_ratio);
  row("stall: every rank, DistributedCheckpointer::save()", res["dist_stall_seconds"], buf);
  std::snprintf(buf, sizeof buf, "%.2f x single", slowest_ratio);
  row("stall: slowest rank of each repetition", res["dist_stall_slowest_seconds"], buf);
  row("save() to durable: single process", res["single_end_to_end_seconds"], "");
  row("save() to manifest durable: all ranks, rank-local state", res["dist_end_to_end_seconds"],
      "");
  row("replicated: rank 0 alone saves it (force)", res["rank0_only_seconds"], "");
  std::snprintf(buf, sizeof buf, "%.2f x rank 0 alone", spread_ratio);
  row("replicated: spread across ranks, to manifest (force)", res["replicated_seconds"], buf);
  std::printf("replicated bytes written per rank (MiB):");
  for (const auto& b : res["replicated_part_bytes"])
    std::printf(" %.1f", b.get<double>() / 1048576);
  std::printf(
      "\nbytes snapshotted per second of stall: %d ranks together %.2f GB/s (%d x state / slowest "
      "stall), one process %.2f GB/s",
      ranks, agg_gbps, ranks, single_gbps);
  std::printf("\ntarget per-rank stall <= 1.2 x single process: %.2f x %s\n", stall_ratio,
              stall_ratio <= 1.2 ? "met" : "MISSED");
  std::printf("replicated writes spread across %d ranks vs all on rank 0: %.2f x (reported)\n",
              ranks, spread_ratio);
  RemoveTree(dir);
  WriteJson(json_out, j);
  return 0;
}
