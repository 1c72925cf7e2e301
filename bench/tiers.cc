// Two tiers (issue 25): a node-local tier written at every checkpoint and a
// persistent tier (save_dir) that only every K-th checkpoint is promoted to,
// against one tier, same run. The three targets (reported, never
// asserted):
//
//   stall    single process, a model-like state of S bytes (--size), N saves
//            (--saves) each after a compute gap (--gap, a sleep: the
//            accelerator computing while the host's cores are free), one tier
//            (save_dir only) vs two tiers (local_tier.dir + save_dir,
//            persist_period K): the median time inside save() and the median
//            save()-to-durable time (SaveStats::end_to_end_seconds: the local
//            commit with two tiers). Target: stall(two) <= 1.05 x stall(one),
//            ratio of medians. Every round builds fresh checkpointers and
//            leaves out its first save (staging allocated then); the two
//            configurations alternate which goes first per round.
//   bytes    the bytes written into save_dir per save (an Env counting every
//            WritableFile::Append under each directory: temp files and
//            manifests included), two tiers over one tier. Target: 1/K.
//   resume   distributed, --ranks ranks (Gloo over a FileStore on 127.0.0.1,
//            one process per rank, a local directory per rank), a state of
//            --dist-size bytes: K checkpoints saved with persist_period K,
//            so the newest is in both tiers, with peer replication r -> r+1.
//            Then a fresh job (new processes) resumes with load() after
//              replica     rank --lost-rank's local directory was deleted (a
//                          lost node): its part comes back from its peer's
//                          replica, the others from their local tiers;
//              persistent  every local directory was deleted: every part
//                          from save_dir.
//            One sample is the slowest rank's time inside load(), started
//            behind a barrier (the checkpointer is built and the transfer
//            group created before it, untimed: both are per job). Target:
//            replica <= 0.5 x persistent (ratio of medians). Reported: bytes
//            received from other ranks (DistributedLoadInfo::
//            bytes_transferred) and bytes read from each tier's files (Env),
//            summed over ranks. Two states (--dist-states):
//              replicated  module_interface_state and the optimizer replicated
//                          (identical on every rank, written once spread
//                          across the parts): every rank reads every part;
//              rank_local  each rank its own S / ranks bytes (replicated =
//                          {}): every rank reads only its own part.
//            --caches: cold drops every checkpoint file from the page cache
//            (fsync + POSIX_FADV_DONTNEED, best effort on a VM) before each
//            resume; hot leaves them cached.
//   replication cost (optional figure): per-save time inside save() and
//            save() + wait() (local commit, replica included) on the slowest
//            rank, two tiers with replication vs replica_offset = world (no
//            replica), nothing promoted.
//
// Both tiers are directories on this machine's one disk, under --dir.
//
//   ackpt_bench_tiers [--size 256M] [--saves 12] [--persist-every 4] [--gap 0.5]
//       [--rounds 3] [--compression zstd|none] [--ranks 4] [--dist-size 64M]
//       [--dist-states replicated,rank_local] [--resume-reps 3] [--caches cold,hot]
//       [--lost-rank 2] [--cost-saves 5] [--parts single,resume,cost] [--timeout S]
//       [--dir DIR] [--json FILE] [--quick]
// --quick (the ctest smoke run, a few seconds): 4 MiB, 2 ranks, 1 round.
#include <signal.h>
#include <sys/prctl.h>

#include <filesystem>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "ackpt/distributed.h"
#include "bench_common.h"
#include "bench_launch.h"

using namespace bench;

namespace {

ackpt::Compression ParseCompression(const std::string& s) {
  if (s == "none") return ackpt::Compression::kNone;
  if (s == "zstd") return ackpt::Compression::kZstd;
  throw std::invalid_argument("--compression: none or zstd, not '" + s + "'");
}

// /proc/loadavg's first three fields: how busy the shared machine was.
std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

// Every regular file under dir, recursively.
std::vector<std::string> FilesUnder(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) out.push_back(it->path().string());
  }
  return out;
}

// Drops every file under the dirs from the page cache; returns how many
// files the kernel refused (0: all dropped, as far as the guest knows).
int DropAll(const std::vector<std::string>& dirs) {
  int refused = 0;
  for (const auto& d : dirs)
    for (const auto& f : FilesUnder(d)) refused += DropFromPageCache(f) ? 0 : 1;
  return refused;
}

void CopyTree(const std::string& from, const std::string& to) {
  RemoveTree(to);
  const std::string cmd = "cp -a '" + from + "' '" + to + "'";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error(cmd + " failed");
}

// True when every tensor of the loaded checkpoint equals the state's.
bool SameState(const ModelState& st, const ackpt::Checkpoint& c) {
  const ackpt::StateDict& optim = c.trainer_state.at("optimizer").dict().at("state").dict();
  for (size_t i = 0; i < st.names.size(); i += 3) {
    const std::string name = st.names[i].substr(6);  // "model/..."
    const ackpt::StateDict& o = optim.at(std::to_string(i / 3)).dict();
    if (!torch::equal(c.module_interface_state.at(name).tensor(), st.tensors[i]) ||
        !torch::equal(o.at("exp_avg").tensor(), st.tensors[i + 1]) ||
        !torch::equal(o.at("exp_avg_sq").tensor(), st.tensors[i + 2]))
      return false;
  }
  return true;
}

// A model-like state of about `bytes` (bench::MakeModelState); below its
// smallest shape (one 256-wide block, ~10 MiB) a few such tensors of the
// same layout (weights plus Adam's two moments), so --quick stays small.
ModelState MakeState(uint64_t bytes, uint64_t seed) {
  if (bytes >= (uint64_t{12} << 20)) return MakeModelState(bytes, torch::kFloat32, seed);
  torch::manual_seed(static_cast<int64_t>(seed));
  ModelState st;
  ackpt::StateDict optim_state;
  const int64_t n = std::max<int64_t>(1, static_cast<int64_t>(bytes / 4 / 12));
  for (int i = 0; i < 4; ++i) {
    const std::string name = "p" + std::to_string(i);
    torch::Tensor w = torch::randn({n}) * 0.02, m = torch::randn({n}) * 1e-3,
                  v = torch::rand({n}) * 1e-6;
    st.checkpoint.module_interface_state.set(name, w);
    optim_state.set(std::to_string(i),
                    ackpt::StateDict{{"step", int64_t{1000}}, {"exp_avg", m}, {"exp_avg_sq", v}});
    st.tensors.insert(st.tensors.end(), {w, m, v});
    st.names.insert(st.names.end(), {"model/" + name, "optim/" + std::to_string(i) + "/exp_avg",
                                     "optim/" + std::to_string(i) + "/exp_avg_sq"});
  }
  st.checkpoint.trainer_state.set("optimizer",
                                  ackpt::StateDict{{"state", optim_state}, {"lr", 3e-4}});
  for (const auto& t : st.tensors) st.bytes += t.nbytes();
  return st;
}

// ---- (a), (b): single process -------------------------------------------------------
struct SingleOptions {
  uint64_t size = 0;
  int saves = 12;
  int64_t k = 4;
  double gap = 0.5;
  ackpt::Compression compression = ackpt::Compression::kZstd;
  double timeout = 600;
};

struct SingleRun {
  std::vector<double> stall, end_to_end;  // saves 2..N
  uint64_t persistent_written = 0, local_written = 0;
  double wall = 0;  // first save() to wait() returning (promotions included)
  ackpt::CheckpointerCounters counters;
};

SingleRun RunSingle(const ModelState& st, const SingleOptions& o, bool two_tiers,
                    const std::string& dir) {
  const std::string persistent = dir + "/persistent", local = dir + "/local";
  FreshDir(dir);
  CountingEnv env;
  env.Track(persistent);
  env.Track(local);
  std::mutex mu;
  std::map<int64_t, double> e2e;
  std::string error;  // the callback runs on a writer thread: no throwing there
  ackpt::DefaultCheckpointerArguments a;
  a.save_dir = persistent;
  a.model_state_save_dir = "";
  a.log_level = "WARN";
  a.compression = o.compression;
  a.env = &env;
  a.drain_timeout_seconds = o.timeout;
  a.retention.keep_last = 2;  // bounded disk use; the counting Env saw every byte
  a.on_save = [&](const ackpt::SaveStats& s) {
    std::lock_guard<std::mutex> lock(mu);
    if (!s.ok && error.empty()) error = "save " + std::to_string(s.index) + ": " + s.error;
    e2e[s.index] = s.end_to_end_seconds;
  };
  if (two_tiers) {
    a.local_tier.dir = local;
    a.local_tier.persist_period = o.k;
  }
  SingleRun r;
  {
    ackpt::DefaultCheckpointer ck(a);
    const auto t0 = Clock::now();
    for (int i = 1; i <= o.saves; ++i) {
      if (i > 1) std::this_thread::sleep_for(std::chrono::duration<double>(o.gap));
      const auto ts = Clock::now();
      ck.save(st.checkpoint, i);
      const double s = Since(ts);
      if (i > 1) r.stall.push_back(s);
    }
    ck.wait();
    r.wall = Since(t0);
    r.counters = ck.counters();
    if (r.counters.promotions_failed > 0)
      throw std::runtime_error("a promotion failed: " + ck.promotion_error());
  }
  if (!error.empty()) throw std::runtime_error(error);
  for (const auto& [index, s] : e2e)
    if (index > 1) r.end_to_end.push_back(s);
  r.persistent_written = env.bytes_written(persistent);
  r.local_written = env.bytes_written(local);
  RemoveTree(dir);
  return r;
}

// ---- (c): distributed workers ---------------------------------------------------------
struct WorkerOptions {
  std::string mode;   // save | resume | cost
  std::string state;  // replicated | rank_local
  std::string scenario;
  int rank = 0, world = 1, saves = 4, lost = 2;
  bool replicate = true;
  int64_t k = 4;
  uint64_t size = 0;
  double gap = 0;
  std::string store, dir, local, out, compression;
  double timeout = 120;
};

// The state of a rank: the replicated one identical everywhere (seed 11), a
// rank-local one of size / world bytes (seed 100 + rank).
ModelState StateOf(const WorkerOptions& o) {
  return o.state == "replicated" ? MakeState(o.size, 11)
                                 : MakeState(o.size / static_cast<uint64_t>(o.world),
                                             100 + static_cast<uint64_t>(o.rank));
}

int Worker(const WorkerOptions& o) {
  torch::set_num_threads(1);  // the ranks share the machine; ackpt has its own threads
  auto store = c10::make_intrusive<c10d::FileStore>(o.store, o.world);
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000));
  store->setTimeout(timeout);
  auto gloo_opts = [&] {
    auto g = c10d::ProcessGroupGloo::Options::create(timeout);
    g->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    return g;
  };
  auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world, gloo_opts());
  auto barrier = [&] { pg->barrier()->wait(timeout); };
  // The checkpointing group, created here (untimed) rather than by the
  // checkpointer at its first save or load: a per-job cost, not a per-load one.
  auto tstart = Clock::now();
  auto tstore = c10::make_intrusive<c10d::PrefixStore>("bench_transfer", store);
  auto transfer = c10::make_intrusive<c10d::ProcessGroupGloo>(tstore, o.rank, o.world, gloo_opts());
  const double transfer_seconds = Since(tstart);

  const ModelState st = StateOf(o);
  CountingEnv env;
  const std::string local = o.local + "/rank" + std::to_string(o.rank);
  env.Track(local);
  env.Track(o.dir);
  ackpt::DistributedCheckpointerArguments a;
  a.checkpointer.save_dir = o.dir;
  a.checkpointer.model_state_save_dir = "";
  a.checkpointer.log_level = "WARN";
  a.checkpointer.compression = ParseCompression(o.compression);
  a.checkpointer.env = &env;
  a.checkpointer.drain_timeout_seconds = o.timeout;
  a.checkpointer.retention.keep_last = 2;
  a.checkpointer.local_tier.dir = o.local + "/rank{rank}";
  a.checkpointer.local_tier.persist_period = o.mode == "cost" ? int64_t{1} << 40 : o.k;
  a.process_group = pg;
  a.store = store;
  a.transfer_group = transfer;
  a.transfer_hostname = "127.0.0.1";
  a.replicated = o.state == "replicated"
                     ? std::vector<std::string>{"module_interface_state", "trainer_state/optimizer"}
                     : std::vector<std::string>{};
  a.replica_offset = o.replicate ? 1 : o.world;  // a multiple of world: no replica
  a.commit_timeout_seconds = o.timeout;
  json r;
  r["rank"] = o.rank;
  r["state_bytes"] = st.bytes;
  r["transfer_group_seconds"] = transfer_seconds;
  tstart = Clock::now();
  ackpt::DistributedCheckpointer ck(a);
  r["construct_seconds"] = Since(tstart);

  if (o.mode == "save" || o.mode == "cost") {
    // save: indices 1..saves (the last one a multiple of K: in both tiers).
    // cost: the same, each save followed by wait() (nothing is promoted).
    std::vector<double> stall, durable;
    for (int i = 1; i <= o.saves; ++i) {
      barrier();
      const auto t0 = Clock::now();
      ck.save(st.checkpoint, i);
      const double s = Since(t0);
      if (o.mode == "cost") ck.wait();
      const double d = Since(t0);
      barrier();
      if (o.mode == "cost" && i > 1) {  // the first one allocates staging
        stall.push_back(s);
        durable.push_back(d);
      }
      if (o.gap > 0) std::this_thread::sleep_for(std::chrono::duration<double>(o.gap));
    }
    ck.wait();
    barrier();
    const ackpt::CheckpointerCounters n = ck.counters();
    if (n.promotions_failed > 0 || n.replications_failed > 0)
      throw std::runtime_error("promotions failed " + std::to_string(n.promotions_failed) +
                               ", replications failed " + std::to_string(n.replications_failed) +
                               ": " + ck.promotion_error());
    r["stall_seconds"] = stall;
    r["durable_seconds"] = durable;
    r["promotions_completed"] = n.promotions_completed;
    r["bytes_promoted"] = n.bytes_promoted;
    r["replications_completed"] = n.replications_completed;
    r["bytes_replicated"] = n.bytes_replicated;
    r["local_bytes_written"] = env.bytes_written(local);
    r["persistent_bytes_written"] = env.bytes_written(o.dir);
    WriteJson(o.out, r);
    return 0;
  }

  // resume
  barrier();
  env.Reset();
  const auto t0 = Clock::now();
  const ackpt::Checkpoint c = ck.load();
  const double s = Since(t0);
  barrier();
  const ackpt::DistributedLoadInfo li = ck.last_load_info();
  const ackpt::Tier want = o.scenario == "replica" ? ackpt::Tier::kLocal : ackpt::Tier::kPersistent;
  if (li.index != o.saves || li.tier != want)
    throw std::runtime_error("resumed index " + std::to_string(li.index) + " from tier " +
                             ackpt::TierName(li.tier) + ", expected " + std::to_string(o.saves) +
                             " from " + ackpt::TierName(want));
  if (want == ackpt::Tier::kLocal && li.restored_from_replica != (o.rank == o.lost))
    throw std::runtime_error("restored_from_replica is " +
                             std::string(li.restored_from_replica ? "true" : "false") +
                             " on rank " + std::to_string(o.rank));
  if (!SameState(st, c)) throw std::runtime_error("loaded values differ from the saved state");
  r["seconds"] = s;
  r["tier"] = ackpt::TierName(li.tier);
  r["restored_from_replica"] = li.restored_from_replica;
  r["part_holders"] = li.part_holders;
  r["bytes_transferred"] = li.bytes_transferred;
  r["local_bytes_read"] = env.bytes_read(local);
  r["persistent_bytes_read"] = env.bytes_read(o.dir);
  r["local_bytes_written"] = env.bytes_written(local);
  WriteJson(o.out, r);
  return 0;
}

json Target(const std::string& what, double value, double bound) {
  return json{{"what", what}, {"value", value}, {"bound", bound}, {"met", value <= bound}};
}

double Sum(const std::vector<json>& ranks, const char* key) {
  double s = 0;
  for (const auto& w : ranks) s += w[key].get<double>();
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  Args a(argc, argv,
         "usage: ackpt_bench_tiers [--size 256M] [--saves 12] [--persist-every 4] [--gap 0.5]\n"
         "       [--rounds 3] [--compression zstd|none] [--ranks 4] [--dist-size 64M]\n"
         "       [--dist-states replicated,rank_local] [--resume-reps 3] [--caches cold,hot]\n"
         "       [--lost-rank 2] [--cost-saves 5] [--parts single,resume,cost] [--timeout S]\n"
         "       [--dir DIR] [--json FILE] [--quick]\n"
         "  --size: single-process state; --saves per round; --gap: seconds between saves\n"
         "  --persist-every: K (local_tier.persist_period)\n"
         "  --dist-size: the distributed state (replicated: on every rank; rank_local: all\n"
         "    ranks together); --resume-reps: resumes per scenario and cache\n"
         "  --cost-saves: saves per launch of the replication-cost part\n"
         "  --timeout: seconds one launch (all ranks) may take before every rank is killed",
         {"quick", "worker", "no-replica"});
  const bool quick = a.Flag("quick");
  const bool worker = a.Flag("worker");
  SingleOptions so;
  so.size = ParseBytes(a.Str("size", quick ? "4M" : "256M"));
  so.saves = std::max(2, static_cast<int>(a.Num("saves", quick ? 5 : 12)));
  so.k = static_cast<int64_t>(a.Num("persist-every", 4));
  so.gap = a.Num("gap", quick ? 0.02 : 1.5);
  const std::string compression = a.Str("compression", "none");
  const int rounds = std::max(1, static_cast<int>(a.Num("rounds", quick ? 1 : 3)));
  const int ranks = static_cast<int>(a.Num("ranks", quick ? 2 : 4));
  const uint64_t dist_size = ParseBytes(a.Str("dist-size", quick ? "2M" : "64M"));
  const std::vector<std::string> states =
      a.List("dist-states", quick ? "replicated" : "replicated,rank_local");
  const int resume_reps = std::max(1, static_cast<int>(a.Num("resume-reps", quick ? 1 : 3)));
  const std::vector<std::string> caches = a.List("caches", quick ? "cold" : "cold,hot");
  const int lost = static_cast<int>(a.Num("lost-rank", quick ? 1 : 2));
  const int cost_saves = std::max(2, static_cast<int>(a.Num("cost-saves", quick ? 2 : 5)));
  const std::vector<std::string> parts_list =
      a.List("parts", quick ? "single,resume" : "single,resume,cost");
  const std::set<std::string> parts(parts_list.begin(), parts_list.end());
  so.timeout = a.Num("timeout", quick ? 60 : 600);
  const std::string dir = a.Str("dir", "/tmp/ackpt-bench-tiers");
  const std::string json_out = a.Str("json", "");
  WorkerOptions wo;
  wo.mode = a.Str("mode", "");
  wo.state = a.Str("state", "replicated");
  wo.scenario = a.Str("scenario", "");
  wo.rank = static_cast<int>(a.Num("rank", 0));
  wo.store = a.Str("store", "");
  wo.dir = a.Str("save-dir", "");
  wo.local = a.Str("local", "");
  wo.out = a.Str("out", "");
  wo.replicate = !a.Flag("no-replica");
  a.Done();
  try {
    so.compression = ParseCompression(compression);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  if (worker) {
    wo.world = ranks;
    wo.saves = static_cast<int>(a.Num("saves", 4));
    wo.k = so.k;
    wo.lost = lost;
    wo.size = dist_size;
    wo.gap = so.gap;
    wo.compression = compression;
    wo.timeout = so.timeout;
    try {
      return Worker(wo);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %d: %s\n", wo.rank, e.what());
      return 3;
    }
  }
  if (so.k < 1 || ranks < 2 || lost < 0 || lost >= ranks) {
    std::fprintf(stderr, "--persist-every must be >= 1, --ranks >= 2, 0 <= --lost-rank < ranks\n");
    return 2;
  }
  for (const auto& s : states) {
    if (s != "replicated" && s != "rank_local") {
      std::fprintf(stderr, "--dist-states: replicated or rank_local, not '%s'\n", s.c_str());
      return 2;
    }
  }
  for (const auto& c : caches) {
    if (c != "cold" && c != "hot") {
      std::fprintf(stderr, "--caches: cold or hot, not '%s'\n", c.c_str());
      return 2;
    }
  }
  ::signal(SIGINT, OnSignal);
  ::signal(SIGTERM, OnSignal);
  FreshDir(dir);
  json j = RunInfo("tiers", quick);
  j["persist_period"] = so.k;
  j["compression"] = compression;
  j["both_tiers_on_one_disk"] = true;
  j["load_average_start"] = LoadAverage();
  json targets = json::array();
  const auto t_all = Clock::now();
  try {
    // ---- (a), (b) ----
    if (parts.count("single")) {
      const ModelState st = MakeState(so.size, 7);
      std::printf(
          "single process: state %s, %d saves per round (the first left out), gap %.2f s, K = "
          "%lld, %s, %d rounds; %d hardware threads; load average %s\n",
          SizeLabel(st.bytes).c_str(), so.saves, so.gap, static_cast<long long>(so.k),
          compression.c_str(), rounds, HardwareThreads(), LoadAverage().c_str());
      std::fflush(stdout);
      std::map<std::string, std::vector<double>> stall, e2e, wall, per_save, local_per_save;
      std::map<std::string, json> counters;
      for (int round = 0; round < rounds; ++round) {
        for (int k = 0; k < 2; ++k) {
          const bool two = (k + round) % 2 == 1;
          const std::string name = two ? "two_tiers" : "one_tier";
          const SingleRun r = RunSingle(st, so, two, dir + "/single");
          stall[name].insert(stall[name].end(), r.stall.begin(), r.stall.end());
          e2e[name].insert(e2e[name].end(), r.end_to_end.begin(), r.end_to_end.end());
          wall[name].push_back(r.wall);
          per_save[name].push_back(double(r.persistent_written) / so.saves);
          local_per_save[name].push_back(double(r.local_written) / so.saves);
          counters[name] = {{"saves_completed", r.counters.saves_completed},
                            {"promotions_completed", r.counters.promotions_completed},
                            {"promotions_skipped", r.counters.promotions_skipped},
                            {"promotions_failed", r.counters.promotions_failed},
                            {"bytes_promoted", r.counters.bytes_promoted}};
        }
      }
      json& js = j["single"];
      js["state_bytes"] = st.bytes;
      js["saves_per_round"] = so.saves;
      js["gap_seconds"] = so.gap;
      js["rounds"] = rounds;
      std::printf("%-10s %22s %22s %14s %16s %14s\n", "", "save() ms med (min-max)",
                  "durable ms med", "run s med", "save_dir MiB/save", "local MiB/save");
      for (const char* name : {"one_tier", "two_tiers"}) {
        const Stat s = Summarize(stall[name]), e = Summarize(e2e[name]), w = Summarize(wall[name]);
        const Stat b = Summarize(per_save[name]), l = Summarize(local_per_save[name]);
        js[name] = {{"stall_seconds", ToJson(s)},        {"end_to_end_seconds", ToJson(e)},
                    {"run_seconds", ToJson(w)},          {"persistent_bytes_per_save", ToJson(b)},
                    {"local_bytes_per_save", ToJson(l)}, {"counters_last_round", counters[name]}};
        char cell[64];
        std::snprintf(cell, sizeof cell, "%.1f (%.1f-%.1f)", s.median * 1e3, s.min * 1e3,
                      s.max * 1e3);
        std::printf("%-10s %22s %22.1f %14.2f %16.2f %14.2f\n", name, cell, e.median * 1e3,
                    w.median, b.median / 1048576.0, l.median / 1048576.0);
      }
      const double stall_ratio = js["two_tiers"]["stall_seconds"]["median"].get<double>() /
                                 js["one_tier"]["stall_seconds"]["median"].get<double>();
      const double e2e_ratio = js["two_tiers"]["end_to_end_seconds"]["median"].get<double>() /
                               js["one_tier"]["end_to_end_seconds"]["median"].get<double>();
      const double bytes_ratio =
          js["two_tiers"]["persistent_bytes_per_save"]["median"].get<double>() /
          js["one_tier"]["persistent_bytes_per_save"]["median"].get<double>();
      js["stall_two_over_one"] = stall_ratio;
      js["end_to_end_two_over_one"] = e2e_ratio;
      js["persistent_bytes_two_over_one"] = bytes_ratio;
      js["one_over_k"] = 1.0 / double(so.k);
      targets.push_back(Target("save() stall, two tiers / one tier", stall_ratio, 1.05));
      // 1/K, within rounding: (saves / K) promotions of saves checkpoints.
      const double expect = std::floor(double(so.saves) / double(so.k)) / double(so.saves);
      js["expected_bytes_ratio"] = expect;
      targets.push_back(
          Target("bytes into save_dir, two tiers / one tier (bound: promoted share of the saves)",
                 bytes_ratio, expect * 1.01));
      std::printf(
          "two / one tier: stall %.3f (target <= 1.05), durable %.3f; bytes into save_dir %.4f "
          "(1/K = %.4f)\n",
          stall_ratio, e2e_ratio, bytes_ratio, 1.0 / double(so.k));
      std::fflush(stdout);
    }

    // ---- (c) ----
    const std::string self = SelfExe();
    int launches = 0;
    auto launch = [&](const WorkerOptions& w, int saves) {
      const std::string ldir = dir + "/launch" + std::to_string(++launches);
      FreshDir(ldir);
      std::vector<std::vector<std::string>> argvs;
      std::vector<std::string> logs, outs;
      for (int r = 0; r < ranks; ++r) {
        outs.push_back(ldir + "/rank" + std::to_string(r) + ".json");
        logs.push_back(ldir + "/rank" + std::to_string(r) + ".log");
        std::vector<std::string> v{self,
                                   "--worker",
                                   "--mode",
                                   w.mode,
                                   "--state",
                                   w.state,
                                   "--scenario",
                                   w.scenario.empty() ? "-" : w.scenario,
                                   "--rank",
                                   std::to_string(r),
                                   "--ranks",
                                   std::to_string(ranks),
                                   "--saves",
                                   std::to_string(saves),
                                   "--persist-every",
                                   std::to_string(so.k),
                                   "--lost-rank",
                                   std::to_string(lost),
                                   "--dist-size",
                                   std::to_string(dist_size),
                                   "--gap",
                                   std::to_string(w.gap),
                                   "--compression",
                                   compression,
                                   "--store",
                                   ldir + "/store",
                                   "--save-dir",
                                   w.dir,
                                   "--local",
                                   w.local,
                                   "--out",
                                   outs.back(),
                                   "--timeout",
                                   std::to_string(so.timeout)};
        if (!w.replicate) v.push_back("--no-replica");
        argvs.push_back(v);
      }
      const std::string err = RunRanks(argvs, logs, so.timeout);
      if (!err.empty())
        throw std::runtime_error(w.mode + " (" + w.state + ", " + w.scenario + ") on " +
                                 std::to_string(ranks) + " ranks: " + err);
      std::vector<json> out(static_cast<size_t>(ranks));
      for (int r = 0; r < ranks; ++r) {
        std::ifstream in(outs[static_cast<size_t>(r)]);
        in >> out[static_cast<size_t>(r)];
      }
      RemoveTree(ldir);
      return out;
    };

    if (parts.count("resume")) {
      j["resume"]["ranks"] = ranks;
      j["resume"]["lost_rank"] = lost;
      j["resume"]["replica_offset"] = 1;
      j["resume"]["reps"] = resume_reps;
      for (const auto& state : states) {
        const std::string sdir = dir + "/resume-" + state;
        FreshDir(sdir);
        WorkerOptions w;
        w.state = state;
        w.dir = sdir + "/persistent";
        w.local = sdir + "/local";
        w.replicate = true;
        w.mode = "save";
        w.gap = 0;
        const int saves = static_cast<int>(so.k);  // the newest is promoted: in both tiers
        const auto sv = launch(w, saves);
        CopyTree(w.local, sdir + "/pristine");
        json& jr = j["resume"][state];
        jr["state_bytes_per_rank"] = sv[0]["state_bytes"];
        jr["saves"] = saves;
        jr["bytes_replicated_per_rank"] = sv[0]["bytes_replicated"];
        jr["local_bytes_written_sum"] = Sum(sv, "local_bytes_written");
        jr["persistent_bytes_written_sum"] = Sum(sv, "persistent_bytes_written");
        std::printf(
            "\nresume, %s state (%s per rank), %d ranks, %d checkpoints saved (K = %lld, the "
            "newest in both tiers), rank %d's local dir lost\n",
            state.c_str(), SizeLabel(sv[0]["state_bytes"].get<uint64_t>()).c_str(), ranks, saves,
            static_cast<long long>(so.k), lost);
        std::printf("%-6s %-11s %22s %14s %14s %14s %14s\n", "cache", "scenario",
                    "load() ms med (min-max)", "MiB from peers", "MiB read local", "MiB read pers.",
                    "MiB written");
        for (const auto& cache : caches) {
          std::map<std::string, std::vector<double>> slowest;
          std::map<std::string, std::vector<json>> last;
          int refused = 0;
          for (int rep = 0; rep < resume_reps; ++rep) {
            for (int k = 0; k < 2; ++k) {
              const std::string sc = (k + rep) % 2 == 0 ? "replica" : "persistent";
              CopyTree(sdir + "/pristine", w.local);
              if (sc == "replica")
                RemoveTree(w.local + "/rank" + std::to_string(lost));
              else
                for (int r = 0; r < ranks; ++r) RemoveTree(w.local + "/rank" + std::to_string(r));
              if (cache == "cold") refused += DropAll({w.local, w.dir});
              WorkerOptions rw = w;
              rw.mode = "resume";
              rw.scenario = sc;
              const auto out = launch(rw, saves);
              double m = 0;
              for (const auto& o : out) m = std::max(m, o["seconds"].get<double>());
              slowest[sc].push_back(m);
              last[sc] = out;
            }
          }
          json& jc = jr[cache];
          jc["page_cache_drops_refused"] = refused;
          for (const char* sc : {"replica", "persistent"}) {
            const Stat t = Summarize(slowest[sc]);
            const auto& out = last[sc];
            json& js = jc[sc];
            js["load_seconds"] = ToJson(t);
            js["bytes_transferred_sum"] = Sum(out, "bytes_transferred");
            js["local_bytes_read_sum"] = Sum(out, "local_bytes_read");
            js["persistent_bytes_read_sum"] = Sum(out, "persistent_bytes_read");
            js["local_bytes_written_sum"] = Sum(out, "local_bytes_written");
            for (const auto& o : out) {
              js["per_rank"].push_back({{"rank", o["rank"]},
                                        {"seconds", o["seconds"]},
                                        {"tier", o["tier"]},
                                        {"restored_from_replica", o["restored_from_replica"]},
                                        {"part_holders", o["part_holders"]},
                                        {"bytes_transferred", o["bytes_transferred"]},
                                        {"local_bytes_read", o["local_bytes_read"]},
                                        {"persistent_bytes_read", o["persistent_bytes_read"]},
                                        {"local_bytes_written", o["local_bytes_written"]},
                                        {"construct_seconds", o["construct_seconds"]},
                                        {"transfer_group_seconds", o["transfer_group_seconds"]}});
            }
            char cell[64];
            std::snprintf(cell, sizeof cell, "%.1f (%.1f-%.1f)", t.median * 1e3, t.min * 1e3,
                          t.max * 1e3);
            std::printf("%-6s %-11s %22s %14.1f %14.1f %14.1f %14.1f\n", cache.c_str(), sc, cell,
                        js["bytes_transferred_sum"].get<double>() / 1048576.0,
                        js["local_bytes_read_sum"].get<double>() / 1048576.0,
                        js["persistent_bytes_read_sum"].get<double>() / 1048576.0,
                        js["local_bytes_written_sum"].get<double>() / 1048576.0);
          }
          const double ratio = jc["replica"]["load_seconds"]["median"].get<double>() /
                               jc["persistent"]["load_seconds"]["median"].get<double>();
          jc["replica_over_persistent"] = ratio;
          targets.push_back(Target("resume after a lost node, replica / persistent tier (" + state +
                                       " state, " + cache + " cache)",
                                   ratio, 0.5));
          std::printf("%-6s replica / persistent: %.3f (target <= 0.5)%s\n", cache.c_str(), ratio,
                      refused ? " (some page-cache drops refused)" : "");
          std::fflush(stdout);
        }
        RemoveTree(sdir);
      }
    }

    if (parts.count("cost")) {
      // Per-save cost of replication: nothing promoted, each save waited for.
      const std::string state = states.front();
      std::map<std::string, std::vector<double>> stall, durable;
      std::map<std::string, double> replicated;
      for (int round = 0; round < rounds; ++round) {
        for (int k = 0; k < 2; ++k) {
          const bool rep = (k + round) % 2 == 0;
          const std::string name = rep ? "replica" : "no_replica";
          const std::string cdir = dir + "/cost";
          FreshDir(cdir);
          WorkerOptions w;
          w.mode = "cost";
          w.state = state;
          w.dir = cdir + "/persistent";
          w.local = cdir + "/local";
          w.replicate = rep;
          w.gap = so.gap;
          const auto out = launch(w, cost_saves);
          for (size_t i = 0; i + 1 < static_cast<size_t>(cost_saves); ++i) {
            double s = 0, d = 0;
            for (const auto& o : out) {
              s = std::max(s, o["stall_seconds"][i].get<double>());
              d = std::max(d, o["durable_seconds"][i].get<double>());
            }
            stall[name].push_back(s);
            durable[name].push_back(d);
          }
          replicated[name] = out[0]["bytes_replicated"].get<double>();
          RemoveTree(cdir);
        }
      }
      json& jc = j["replication_cost"];
      jc["state"] = state;
      jc["saves_per_launch"] = cost_saves;
      std::printf("\nreplication cost per save (%s state, %d ranks, slowest rank):\n",
                  state.c_str(), ranks);
      for (const char* name : {"replica", "no_replica"}) {
        const Stat s = Summarize(stall[name]), d = Summarize(durable[name]);
        jc[name] = {{"stall_seconds", ToJson(s)},
                    {"durable_seconds", ToJson(d)},
                    {"bytes_replicated_rank0", replicated[name]}};
        std::printf("  %-10s save() %.1f ms, save()+wait() %.1f ms (medians)\n", name,
                    s.median * 1e3, d.median * 1e3);
      }
      jc["stall_replica_over_none"] = jc["replica"]["stall_seconds"]["median"].get<double>() /
                                      jc["no_replica"]["stall_seconds"]["median"].get<double>();
      jc["durable_replica_over_none"] = jc["replica"]["durable_seconds"]["median"].get<double>() /
                                        jc["no_replica"]["durable_seconds"]["median"].get<double>();
      std::printf("  replica / none: save() %.3f, durable %.3f\n",
                  jc["stall_replica_over_none"].get<double>(),
                  jc["durable_replica_over_none"].get<double>());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ackpt_bench_tiers: %s\n", e.what());
    RemoveTree(dir);
    return 1;
  }
  j["targets"] = targets;
  bool all = true;
  for (const auto& t : targets) all = all && t["met"].get<bool>();
  j["all_targets_met"] = all;
  j["seconds"] = Since(t_all);
  j["load_average_end"] = LoadAverage();
  std::printf("\nload average %s; targets:\n", LoadAverage().c_str());
  for (const auto& t : targets)
    std::printf("  %-90s %.3f (<= %.3f) %s\n", t["what"].get<std::string>().c_str(),
                t["value"].get<double>(), t["bound"].get<double>(),
                t["met"].get<bool>() ? "met" : "MISSED");
  RemoveTree(dir);
  WriteJson(json_out, j);
  return 0;
}
