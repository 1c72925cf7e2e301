// DistributedCheckpointer: per-rank parts, a two-phase commit through the
// c10d Store, a manifest that makes a checkpoint exist, collective load.
// docs/DISTRIBUTED.md describes the protocol.
#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "ackpt/async_writer.h"
#include "ackpt/distributed.h"
#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "checkpointer/checkpoint_dir.h"
#include "checkpointer/checkpoint_file.h"
#include "checkpointer/guard.h"
#include "checkpointer/metadata_keys.h"
#include "engine/engine.h"
#include "format/internal.h"
#include "io/atomic_file.h"
#include "util/logger.h"

namespace ackpt {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kGroups[] = {"module_interface_state", "trainer_state",
                                   "trainer_backend_state"};
// Top-level keys of a part file.
constexpr const char* kPartLocal = "local";
constexpr const char* kPartReplicated = "replicated";
constexpr const char* kPartReplicatedNames = "replicated_names";  // rank 0's part only
constexpr const char* kPartReplicatedTree = "replicated_tree";    // rank 0's part only
constexpr const char* kManifestFormat = "ackpt.manifest";
constexpr int kManifestVersion = 1;

std::vector<std::string> SplitPath(const std::string& path) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= path.size()) {
    size_t e = path.find('/', b);
    if (e == std::string::npos) e = path.size();
    out.push_back(path.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

// Removes the subtree at `path` from root and returns it; null if absent.
std::unique_ptr<Value> TakeSubtree(StateDict* root, const std::vector<std::string>& path) {
  StateDict* d = root;
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    Value* v = d->find(path[i]);
    if (v == nullptr || !v->is_dict()) return nullptr;
    d = &v->dict();
  }
  Value* v = d->find(path.back());
  if (v == nullptr) return nullptr;
  auto out = std::make_unique<Value>(std::move(*v));
  d->erase(path.back());
  return out;
}

void PutSubtree(StateDict* root, const std::vector<std::string>& path, Value v) {
  StateDict* d = root;
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    Value* child = d->find(path[i]);
    if (child == nullptr || !child->is_dict()) {
      d->set(path[i], StateDict());
      child = d->find(path[i]);
    }
    d = &child->dict();
  }
  d->set(path.back(), std::move(v));
}

bool HasContent(const StateDict& d) {
  for (const auto& kv : d) {
    if (!kv.second.is_dict() || HasContent(kv.second.dict())) return true;
  }
  return false;
}

// Replicated tensors to ranks: largest first, each to the rank with the
// fewest bytes so far (ties: lowest rank). Every rank computes the same
// assignment from the same names and sizes, without communicating.
std::vector<int> AssignOwners(const std::vector<format::FlatTensor>& tensors, int world) {
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  auto bytes = [&](size_t i) {
    return static_cast<uint64_t>(tensors[i].tensor.numel()) * tensors[i].tensor.element_size();
  };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return bytes(a) != bytes(b) ? bytes(a) > bytes(b) : tensors[a].name < tensors[b].name;
  });
  std::vector<uint64_t> load(static_cast<size_t>(world), 0);
  std::vector<int> owner(tensors.size(), 0);
  for (size_t i : order) {
    const auto it = std::min_element(load.begin(), load.end());
    owner[i] = static_cast<int>(it - load.begin());
    *it += bytes(i);
  }
  return owner;
}

std::string Bytes(const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); }
std::vector<uint8_t> Bytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

struct Manifest {
  int64_t index = 0;
  int world_size = 0;
  double time = 0;
  uint64_t generation = 0;
  int64_t parent = -1;
  std::map<std::string, double> metrics;
  struct Part {
    std::string file;
    uint64_t file_bytes = 0;
    std::string header_xxh3;
    bool has_local = false;
  };
  std::vector<Part> parts;
};

Manifest ParseManifest(const std::string& text, const std::string& path) {
  Manifest m;
  try {
    const json j = json::parse(text);
    if (j.value("format", "") != kManifestFormat)
      throw Error::Corruption("'" + path + "' is not an ackpt manifest");
    if (j.value("version", 0) != kManifestVersion) {
      throw Error::Unsupported("'" + path + "' has manifest version " +
                               std::to_string(j.value("version", 0)));
    }
    m.index = j.at("index").get<int64_t>();
    m.world_size = j.at("world_size").get<int>();
    m.time = j.value("time", 0.0);
    m.generation = j.value("generation", uint64_t{0});
    m.parent = j.value("parent", int64_t{-1});
    if (j.contains("metrics")) {
      for (auto it = j["metrics"].begin(); it != j["metrics"].end(); ++it) {
        m.metrics[it.key()] = it.value().is_number() ? it.value().get<double>() : std::nan("");
      }
    }
    for (const auto& p : j.at("parts")) {
      Manifest::Part part;
      part.file = p.at("file").get<std::string>();
      part.file_bytes = p.at("file_bytes").get<uint64_t>();
      part.header_xxh3 = p.at("header_xxh3").get<std::string>();
      part.has_local = p.value("has_local", true);
      if (part.file.find('/') != std::string::npos)
        throw Error::Corruption("'" + path + "' names a part outside its directory");
      m.parts.push_back(std::move(part));
    }
    if (m.world_size <= 0 || static_cast<int>(m.parts.size()) != m.world_size)
      throw Error::Corruption("'" + path + "' lists " + std::to_string(m.parts.size()) +
                              " parts for world size " + std::to_string(m.world_size));
  } catch (const json::exception& e) {
    throw Error::Corruption("manifest '" + path + "' does not parse: " + e.what());
  }
  return m;
}

std::string ReadWholeFile(Env* env, const std::string& path, uint64_t limit) {
  auto f = env->NewRandomAccessFile(path);
  if (f->Size() > limit)
    throw Error::Corruption("'" + path + "' is larger than " + std::to_string(limit) + " bytes");
  std::string s(static_cast<size_t>(f->Size()), '\0');
  f->Read(0, s.size(), s.data());
  return s;
}

// Manifests are small (a few hundred bytes per rank); a larger one is not ours.
constexpr uint64_t kMaxManifestBytes = uint64_t{64} << 20;

}  // namespace

class DistributedCheckpointer::Impl {
 public:
  explicit Impl(DistributedCheckpointerArguments a) : args(std::move(a)), base(args.checkpointer) {
    if (!args.process_group)
      throw Error::InvalidArgument("DistributedCheckpointerArguments.process_group is null");
    if (!args.store) throw Error::InvalidArgument("DistributedCheckpointerArguments.store is null");
    if (base.save_dir.empty())
      throw Error::InvalidArgument(
          "DistributedCheckpointerArguments.checkpointer.save_dir is empty");
    if (base.backpressure != BackpressurePolicy::kBlock) {
      throw Error::InvalidArgument(
          "DistributedCheckpointerArguments.checkpointer.backpressure must be kBlock: a save "
          "dropped on one rank could never commit");
    }
    if (base.period <= 0)
      throw Error::InvalidArgument(
          "DistributedCheckpointerArguments.checkpointer.period must be >= 1");
    if (!(args.commit_timeout_seconds > 0))
      throw Error::InvalidArgument(
          "DistributedCheckpointerArguments.commit_timeout_seconds must be > 0");
    for (const auto& p : args.replicated) {
      const auto parts = SplitPath(p);
      if (p.empty() ||
          std::find(std::begin(kGroups), std::end(kGroups), parts[0]) == std::end(kGroups) ||
          std::find(parts.begin(), parts.end(), "") != parts.end()) {
        throw Error::InvalidArgument("DistributedCheckpointerArguments.replicated: '" + p +
                                     "' is not a path under module_interface_state, trainer_state "
                                     "or trainer_backend_state");
      }
    }
    rank = args.process_group->getRank();
    world = args.process_group->getSize();
    user_env = base.env ? base.env : Env::Default();
    logger = ResolveLogger(base.log_level, base.logger, "DefaultCheckpointerArguments.log_level");
    AsyncWriterOptions w = AsyncWriterOptionsFrom(base);
    w.env = user_env;
    w.logger = logger;
    writer = std::make_unique<AsyncWriter>(std::move(w));
    engine = &WriterEngine(*writer);
    env = engine->env();
    // This instance's key space in the Store: every rank counts its own
    // checkpointers of this prefix, so the k-th one on each rank gets the same
    // number however the ranks' constructions interleave in time (a second
    // checkpointer, or a later job on the same Store, never reads stale keys).
    const int64_t ticket =
        args.store->add("ackpt/" + base.file_prefix + "/instances/rank" + std::to_string(rank), 1);
    instance = ticket - 1;
    if (rank == 0) {
      CheckpointDirOptions d;
      d.dir = base.save_dir;
      d.prefix = base.file_prefix;
      d.ext = base.file_ext;
      d.writer = true;
      d.env = env;
      d.logger = logger;
      dir = CheckpointDir::Open(std::move(d));  // the ownership lock, temp hygiene
      // Before any rank can save: a rank's first save follows collectives
      // that need rank 0, which is still here.
      if (base.checkpoint && base.delete_existing_checkpoints) dir->DeleteOwnFiles();
      ScanManifests();
    } else {
      env->CreateDirs(base.save_dir);
    }
  }

  bool compressed() const { return base.compression != Compression::kNone; }
  std::string Key(uint64_t seq, const std::string& what) const {
    return "ackpt/" + base.file_prefix + "/" + std::to_string(instance) + "/" +
           std::to_string(seq) + "/" + what;
  }
  std::string ManifestPath(int64_t index) const {
    return JoinPath(base.save_dir, ManifestFileName(base.file_prefix, index));
  }

  // ---- the catalog of manifests (rank 0) ------------------------------------
  void ScanManifests() {
    std::lock_guard<std::mutex> lock(mu);
    manifests.clear();
    for (const auto& name : GetChildrenIfExists(env.get(), base.save_dir)) {
      auto index = ParseManifestIndex(name, base.file_prefix);
      if (!index) continue;
      const std::string path = JoinPath(base.save_dir, name);
      try {
        Manifest m = ParseManifest(ReadWholeFile(env.get(), path, kMaxManifestBytes), path);
        max_generation = std::max(max_generation, m.generation);
        manifests[*index] = std::move(m);
      } catch (const Error& e) {
        logger->warn("ignoring unreadable manifest {}: {}", path, e.message());
      }
    }
  }

  std::vector<CheckpointEntry> ManifestEntries() {
    std::vector<CheckpointEntry> out;
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& kv : manifests) {
      CheckpointEntry e;
      e.index = kv.first;
      e.path = ManifestPath(kv.first);
      for (const auto& p : kv.second.parts) e.file_bytes += p.file_bytes;
      e.save_time = kv.second.time;
      e.metrics = kv.second.metrics;
      e.parent = kv.second.parent;
      e.generation = kv.second.generation;
      out.push_back(std::move(e));
    }
    SortNewestFirst(&out);
    return out;
  }

  // Rank 0's writer, after the manifest of `committed` is durable.
  void ApplyRetention(int64_t committed) {
    std::vector<CheckpointEntry> entries = ManifestEntries();
    for (const auto& doomed : EvaluateRetention(&entries, base.retention)) {
      Manifest m;
      {
        std::lock_guard<std::mutex> lock(mu);
        auto it = manifests.find(doomed.index);
        if (it == manifests.end()) continue;
        m = it->second;
        manifests.erase(it);
      }
      // The manifest first: the checkpoint stops existing before its parts go.
      try {
        env->RemoveFile(doomed.path);
        env->SyncDir(base.save_dir);
        for (const auto& p : m.parts) env->RemoveFile(JoinPath(base.save_dir, p.file));
        logger->info("retention: deleted distributed checkpoint {}", doomed.index);
      } catch (const Error& e) {
        logger->error("retention: {}", e.message());
      }
    }
    RemoveOrphanParts([committed](int64_t index) { return index < committed; });
  }

  // Parts without a manifest (a save that never committed). Only for indices
  // no save can still be writing: older than a commit, or any at load().
  void RemoveOrphanParts(const std::function<bool(int64_t)>& may_remove) {
    for (const auto& name : GetChildrenIfExists(env.get(), base.save_dir)) {
      auto part = ParsePartFileName(name, base.file_prefix, base.file_ext);
      if (!part || !may_remove(part->first)) continue;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (manifests.count(part->first)) continue;
      }
      try {
        env->RemoveFile(JoinPath(base.save_dir, name));
        logger->info("removed part {} of a checkpoint that never committed", name);
      } catch (const Error& e) {
        if (e.code() != Error::Code::kNotFound) logger->warn("{}", e.message());
      }
    }
  }

  // ---- the commit (writer threads) ------------------------------------------
  // Every rank: publish the durable part; rank 0: wait for all, write the
  // manifest, announce; others: wait for rank 0's verdict.
  void Publish(uint64_t seq, const engine::CommitInfo& c, bool has_local,
               const std::map<std::string, double>& metrics) {
    const json part{{"file", BaseName(c.path)},
                    {"file_bytes", c.file_bytes},
                    {"header_xxh3", c.header_xxh3},
                    {"has_local", has_local}};
    args.store->set(Key(seq, "part/" + std::to_string(rank)), Bytes(part.dump()));
    const auto timeout =
        std::chrono::milliseconds(static_cast<int64_t>(args.commit_timeout_seconds * 1000));
    if (rank != 0) {
      // Rank 0 gives up commit_timeout after its own part is durable, which
      // may be later than ours: wait long enough to hear its verdict.
      AwaitVerdict(seq, c.index, 2 * timeout + std::chrono::seconds(10));
      return;
    }
    std::vector<std::string> keys;
    for (int r = 0; r < world; ++r) keys.push_back(Key(seq, "part/" + std::to_string(r)));
    try {
      args.store->wait(keys, timeout);
    } catch (const c10::Error&) {
      std::string missing;
      for (int r = 0; r < world; ++r) {
        if (!args.store->check({keys[static_cast<size_t>(r)]}))
          missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      }
      const std::string msg = "distributed checkpoint " + std::to_string(c.index) +
                              " did not commit: rank(s) " + missing +
                              " did not publish their part within " +
                              std::to_string(args.commit_timeout_seconds) + " s";
      args.store->set(Key(seq, "failed"), Bytes(msg));
      throw Error::TimedOut(msg);
    }
    Manifest m;
    m.index = c.index;
    m.world_size = world;
    m.time =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    m.metrics = metrics;
    json parts = json::array();
    for (int r = 0; r < world; ++r) {
      const json p = json::parse(Bytes(args.store->get(keys[static_cast<size_t>(r)])));
      parts.push_back(p);
      Manifest::Part mp;
      mp.file = p.at("file").get<std::string>();
      mp.file_bytes = p.at("file_bytes").get<uint64_t>();
      mp.header_xxh3 = p.at("header_xxh3").get<std::string>();
      mp.has_local = p.at("has_local").get<bool>();
      m.parts.push_back(mp);
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      m.generation = ++max_generation;
      m.parent = run_head;
    }
    json j{{"format", kManifestFormat},
           {"version", kManifestVersion},
           {"index", m.index},
           {"world_size", world},
           {"time", m.time},
           {"generation", m.generation},
           {"replicated", args.replicated},
           {"parts", parts}};
    if (m.parent >= 0) j["parent"] = m.parent;
    json jm = json::object();
    for (const auto& kv : metrics) {
      if (std::isfinite(kv.second)) {
        jm[kv.first] = kv.second;
      } else {
        jm[kv.first] = nullptr;
      }
    }
    j["metrics"] = jm;
    const std::string text = j.dump(1) + "\n";
    AtomicWrite(env.get(), ManifestPath(c.index), base.fsync,
                [&](WritableFile* f) { f->Append(text.data(), text.size()); });
    {
      std::lock_guard<std::mutex> lock(mu);
      manifests[c.index] = m;
      run_head = c.index;
    }
    args.store->set(Key(seq, "committed"), Bytes("ok"));
    // Keys no rank reads any more: the parts now, the verdict of two saves
    // ago (every rank has finished waiting for it before publishing this one).
    for (const auto& k : keys) args.store->deleteKey(k);
    if (seq >= 2) {
      args.store->deleteKey(Key(seq - 2, "committed"));
    }
  }

  void AwaitVerdict(uint64_t seq, int64_t index, std::chrono::milliseconds timeout) {
    const std::string ok = Key(seq, "committed"), failed = Key(seq, "failed");
    const auto end = Clock::now() + timeout;
    auto pause = std::chrono::milliseconds(1);
    for (;;) {
      if (args.store->check({ok})) return;
      if (args.store->check({failed})) throw Error::TimedOut(Bytes(args.store->get(failed)));
      if (Clock::now() > end) {
        throw Error::TimedOut("distributed checkpoint " + std::to_string(index) +
                              ": no verdict from rank 0 within " +
                              std::to_string(timeout.count() / 1000) + " s (is rank 0 alive?)");
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::milliseconds(50));
    }
  }

  // ---- load (foreground, collective) -------------------------------------------
  int64_t Broadcast(int64_t v) {
    std::vector<at::Tensor> t{at::full({1}, v, at::kLong)};
    args.process_group->broadcast(t)->wait();
    return t[0].item<int64_t>();
  }
  int64_t AllreduceSum(int64_t v) {
    std::vector<at::Tensor> t{at::full({1}, v, at::kLong)};
    args.process_group->allreduce(t)->wait();
    return t[0].item<int64_t>();
  }

  // Rank 0: the manifest and every part's header check out.
  bool Plausible(const Manifest& m, const std::string& path) {
    for (const auto& p : m.parts) {
      const std::string part = JoinPath(base.save_dir, p.file);
      try {
        ReadOptions ro;
        ro.threads = 1;
        auto reader = CheckpointReader::Open(part, ro, user_env);
        if (reader->info().file_bytes != p.file_bytes) {
          throw Error::Corruption("'" + part + "' has " +
                                  std::to_string(reader->info().file_bytes) +
                                  " bytes, the manifest says " + std::to_string(p.file_bytes));
        }
        const auto h = reader->info().metadata.find("ackpt.header_xxh3");
        if (h == reader->info().metadata.end() || h->second != p.header_xxh3)
          throw Error::Corruption("'" + part + "' is not the part " + path + " committed");
      } catch (const Error& e) {
        logger->warn("skipping distributed checkpoint {}: {}", m.index, e.message());
        return false;
      }
    }
    return true;
  }

  Checkpoint LoadIndex(int64_t index) {
    const std::string path = ManifestPath(index);
    const Manifest m = ParseManifest(ReadWholeFile(user_env, path, kMaxManifestBytes), path);
    bool any_local = false;
    for (const auto& p : m.parts) any_local = any_local || p.has_local;
    if (m.world_size != world && any_local) {
      throw Error::InvalidArgument("distributed checkpoint " + std::to_string(index) +
                                   " was saved by " + std::to_string(m.world_size) +
                                   " ranks and has rank-local state; it cannot be loaded by " +
                                   std::to_string(world) +
                                   " ranks (only replicated state moves across world sizes)");
    }
    ReadOptions ro;
    ro.verify_checksums = base.verify_on_load;
    // Own part: rank-local state and the replicated tensors this rank wrote.
    StateDict root;
    for (const char* g : kGroups) root.set(g, StateDict());
    std::map<int64_t, at::Tensor> replicated;  // by position in the replicated tree
    std::vector<std::string> names;
    std::string tree;
    auto take_replicated = [&](const std::map<std::string, at::Tensor>& tensors) {
      const std::string prefix = std::string(kPartReplicated) + "/";
      for (const auto& kv : tensors) {
        if (kv.first.rfind(prefix, 0) == 0)
          replicated[std::stoll(kv.first.substr(prefix.size()))] = kv.second;
      }
    };
    auto take_scalars = [&](const StateDict& whole) {
      if (const Value* n = whole.find(kPartReplicatedNames))
        for (const auto& v : n->list()) names.push_back(v.str());
      if (const Value* t = whole.find(kPartReplicatedTree)) tree = t->str();
    };
    for (int r = 0; r < m.world_size; ++r) {
      const std::string part = JoinPath(base.save_dir, m.parts[static_cast<size_t>(r)].file);
      auto reader = CheckpointReader::Open(part, ro, user_env);
      const bool own = r == rank && m.world_size == world;
      if (own || r == 0) {
        // Read whole: the own part holds this rank's local state; part 0
        // holds the replicated tree and names.
        StateDict whole = reader->ReadStateDict();
        if (own) {
          if (const Value* local = whole.find(kPartLocal)) {
            for (const auto& kv : local->dict()) root.set(kv.first, kv.second);
          }
        }
        std::map<std::string, at::Tensor> flat;
        if (const Value* rep = whole.find(kPartReplicated)) {
          for (const auto& kv : rep->dict())
            flat[std::string(kPartReplicated) + "/" + kv.first] = kv.second.tensor();
        }
        take_replicated(flat);
        if (r == 0) take_scalars(whole);
        continue;
      }
      // Another rank's part: only its replicated tensors, only their frames.
      std::vector<std::string> wanted;
      for (const auto& t : reader->info().tensors) {
        if (t.name.rfind(std::string(kPartReplicated) + "/", 0) == 0) wanted.push_back(t.name);
      }
      take_replicated(reader->ReadTensors(wanted));
    }
    if (!tree.empty()) {
      std::map<std::string, at::Tensor> by_name;
      for (size_t i = 0; i < names.size(); ++i) {
        auto it = replicated.find(static_cast<int64_t>(i));
        if (it == replicated.end())
          throw Error::Corruption("replicated tensor '" + names[i] + "' of checkpoint " +
                                  std::to_string(index) + " is in no part");
        by_name[names[i]] = it->second;
      }
      StateDict rep = format::Unflatten(tree, by_name, path);
      for (auto& kv : rep) PutSubtree(&root, SplitPath(kv.first), std::move(kv.second));
    }
    Checkpoint c = CheckpointFromLayout(std::move(root), path);
    c.metrics = m.metrics;
    return c;
  }

  DistributedCheckpointerArguments args;
  const DefaultCheckpointerArguments& base;
  int rank = 0;
  int world = 1;
  int64_t instance = 0;
  Env* user_env = nullptr;
  std::shared_ptr<spdlog::logger> logger;
  std::shared_ptr<Env> env;            // the engine's detachable Env
  std::shared_ptr<CheckpointDir> dir;  // rank 0: the owner of save_dir
  std::unique_ptr<AsyncWriter> writer;
  engine::Engine* engine = nullptr;  // writer's
  std::mutex mu;
  std::map<int64_t, Manifest> manifests;  // rank 0's catalog
  uint64_t max_generation = 0;
  int64_t run_head = -1;
  uint64_t seq = 0;  // saves accepted by this instance: the same on every rank
  std::string last_loaded_manifest;
};

DistributedCheckpointer::DistributedCheckpointer(DistributedCheckpointerArguments args)
    : impl_(Guard(Error::Code::kInvalidArgument, "creating the distributed checkpointer",
                  [&] { return std::make_unique<Impl>(std::move(args)); })) {}

DistributedCheckpointer::~DistributedCheckpointer() {
  // The writer (and its drain) goes first: its threads use everything else.
  impl_->writer.reset();
}

int DistributedCheckpointer::rank() const { return impl_->rank; }
int DistributedCheckpointer::world_size() const { return impl_->world; }

void DistributedCheckpointer::save(const Checkpoint& checkpoint, int64_t index, bool force) {
  Impl& im = *impl_;
  if (!im.base.checkpoint) return;
  if (!force && index % im.base.period != 0) return;
  if (index < 0)
    throw Error::InvalidArgument("checkpoint index " + std::to_string(index) + " is negative");
  Guard(Error::Code::kInvalidArgument, "distributed save of index " + std::to_string(index), [&] {
    StateDict root = CheckpointLayout(checkpoint);
    StateDict replicated;
    for (const auto& p : im.args.replicated) {
      if (auto v = TakeSubtree(&root, SplitPath(p))) replicated.set(p, std::move(*v));
    }
    std::vector<format::FlatTensor> flat;
    std::string tree;
    format::Flatten(replicated, &flat, &tree);
    const std::vector<int> owner = AssignOwners(flat, im.world);
    StateDict part;
    const bool has_local = HasContent(root);
    part.set(kPartLocal, std::move(root));
    StateDict mine;
    for (size_t i = 0; i < flat.size(); ++i) {
      if (owner[i] == im.rank) mine.set(std::to_string(i), flat[i].tensor);
    }
    part.set(kPartReplicated, std::move(mine));
    if (im.rank == 0 && !replicated.empty()) {
      List names;
      for (const auto& f : flat) names.push_back(f.name);
      part.set(kPartReplicatedNames, std::move(names));
      part.set(kPartReplicatedTree, tree);
    }
    const std::string path = JoinPath(
        im.base.save_dir,
        PartFileName(im.base.file_prefix, index, im.rank, im.compressed(), im.base.file_ext));
    engine::SaveHooks hooks;
    hooks.metadata = {{kMetaKind, "part"},
                      {kMetaIndex, std::to_string(index)},
                      {"ackpt.rank", std::to_string(im.rank)},
                      {"ackpt.world_size", std::to_string(im.world)}};
    const uint64_t seq = im.seq++;
    Impl* impl = &im;  // the engine drains before Impl goes (destructor)
    const std::map<std::string, double> metrics = checkpoint.metrics;
    hooks.publish = [impl, seq, has_local, metrics](const engine::CommitInfo& c) {
      Guard(Error::Code::kIOError, "committing distributed checkpoint " + std::to_string(c.index),
            [&] { impl->Publish(seq, c, has_local, metrics); });
    };
    if (im.rank == 0) {
      hooks.after_commit = [impl](const engine::CommitInfo& c) { impl->ApplyRetention(c.index); };
    }
    im.engine->Save(part, index, path, force, std::move(hooks));
  });
}

void DistributedCheckpointer::save_model(const StateDict& model_state, int64_t index) {
  Impl& im = *impl_;
  if (!im.base.checkpoint || im.rank != 0 || !im.dir) return;
  if (index < 0)
    throw Error::InvalidArgument("model index " + std::to_string(index) + " is negative");
  Guard(Error::Code::kInvalidArgument, "save_model of index " + std::to_string(index), [&] {
    std::shared_ptr<CheckpointDir> dir = im.dir;
    engine::SaveHooks hooks;
    hooks.metadata = dir->Metadata(FileKind::kModel, index, {}, im.base.retention);
    const int64_t keep = im.base.retention.model_keep_last;
    hooks.after_commit = [dir, keep](const engine::CommitInfo& c) {
      dir->RecordCommit(FileKind::kModel, c.index, c.path, c.file_bytes, c.logical_bytes,
                        c.compressed, c.metadata);
      dir->ApplyModelRetention(keep);
    };
    im.engine->Save(model_state, index, dir->PathFor(FileKind::kModel, index, im.compressed()),
                    /*force=*/true, std::move(hooks));
  });
}

Checkpoint DistributedCheckpointer::load() {
  Impl& im = *impl_;
  im.engine->Drain(im.base.drain_timeout_seconds);
  return Guard(
      Error::Code::kCorruption, "distributed load on rank " + std::to_string(im.rank), [&] {
        std::vector<CheckpointEntry> candidates;
        if (im.rank == 0) {
          im.ScanManifests();
          candidates = im.ManifestEntries();
          // Nothing is being written now: parts that never committed can go.
          im.RemoveOrphanParts([](int64_t) { return true; });
        }
        std::set<int64_t> failed;
        size_t next = 0;
        for (;;) {
          int64_t proposal = -1;
          if (im.rank == 0) {
            for (; next < candidates.size(); ++next) {
              const auto& e = candidates[next];
              Manifest m;
              try {
                m = ParseManifest(ReadWholeFile(im.user_env, e.path, kMaxManifestBytes), e.path);
              } catch (const Error& err) {
                im.logger->warn("skipping {}: {}", e.path, err.message());
                continue;
              }
              if (im.Plausible(m, e.path)) break;
            }
            if (next < candidates.size()) proposal = candidates[next++].index;
          }
          const int64_t index = im.Broadcast(proposal);
          if (index < 0) {
            im.logger->info("no distributed checkpoint in {}; starting fresh", im.base.save_dir);
            return Checkpoint();
          }
          Checkpoint c;
          std::string why;
          bool world_mismatch = false;
          try {
            c = im.LoadIndex(index);
          } catch (const Error& e) {
            why = e.message();
            world_mismatch = e.code() == Error::Code::kInvalidArgument;
          }
          // Every rank learns whether every rank could read its share.
          const int64_t bad = im.AllreduceSum(why.empty() ? 0 : 1);
          const int64_t mismatched = im.AllreduceSum(world_mismatch ? 1 : 0);
          if (mismatched > 0) {
            throw Error::InvalidArgument(why.empty()
                                             ? "distributed checkpoint " + std::to_string(index) +
                                                   " was saved with another world size"
                                             : why);
          }
          if (bad == 0) {
            im.last_loaded_manifest = im.ManifestPath(index);
            if (im.rank == 0) {
              std::lock_guard<std::mutex> lock(im.mu);
              im.run_head = index;
            }
            im.logger->info("rank {} resumed distributed checkpoint {}", im.rank, index);
            return c;
          }
          if (!why.empty())
            im.logger->warn("distributed checkpoint {} on rank {}: {}", index, im.rank, why);
          failed.insert(index);
        }
      });
}

void DistributedCheckpointer::wait() { impl_->engine->Wait(); }

std::string DistributedCheckpointer::last_loaded_manifest() const {
  return impl_->last_loaded_manifest;
}

std::vector<ManifestEntry> DistributedCheckpointer::list_manifests() const {
  Impl& im = *impl_;
  std::vector<ManifestEntry> out;
  for (const auto& name : GetChildrenIfExists(im.user_env, im.base.save_dir)) {
    auto index = ParseManifestIndex(name, im.base.file_prefix);
    if (!index) continue;
    const std::string path = JoinPath(im.base.save_dir, name);
    try {
      const Manifest m = ParseManifest(ReadWholeFile(im.user_env, path, kMaxManifestBytes), path);
      ManifestEntry e;
      e.index = m.index;
      e.path = path;
      e.world_size = m.world_size;
      for (const auto& p : m.parts) {
        e.parts.push_back(p.file);
        e.bytes += p.file_bytes;
      }
      out.push_back(std::move(e));
    } catch (const Error& e) {
      im.logger->warn("ignoring unreadable manifest {}: {}", path, e.message());
    }
  }
  std::sort(out.begin(), out.end(),
            [](const ManifestEntry& a, const ManifestEntry& b) { return a.index > b.index; });
  return out;
}

CheckpointerCounters DistributedCheckpointer::counters() const {
  CheckpointerCounters c;
  static_cast<EngineCounters&>(c) = impl_->engine->counters();
  if (impl_->dir) c.temp_files_removed = impl_->dir->temp_files_removed();
  return c;
}

}  // namespace ackpt
