// One rank of tests/reshard_test.cc: saves sharded state on one world size,
// loads it on another (Gloo over a FileStore on 127.0.0.1).
//
//   reshard_worker --rank R --world W --store FILE --dir DIR --mode save|load|bad
//                  [--saved-world N] [--compression none|zstd] [--steps S]
//                  [--rule error|modulo|empty] [--expect-index I] [--plain-target]
//
// Every global tensor is a function of (name, step), so any rank can check
// any box of it. The state: row shards ("emb", uneven), column shards
// ("proj"), 2-D blocks ("trainer_state/optimizer/blk", F64), a large row-
// sharded tensor for the byte accounting ("big"), a replicated tensor
// ("dense/w") that the loader takes as row shards, and rank-local state.
// save: checkpoints steps 1..S. load: checks every loaded box byte for byte
// and the bytes read (exit 1 naming the failure). bad: bad layouts get
// kInvalidArgument. Exit 0 on success.
#include <torch/torch.h>

#include <cstdio>
#include <map>
#include <string>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <vector>

#include "ackpt/distributed.h"
#include "ackpt/error.h"

namespace {

std::map<std::string, std::string> ParseArgs(int argc, char** argv) {
  std::map<std::string, std::string> a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0) continue;
    k = k.substr(2);
    if (k == "plain-target") {
      a[k] = "1";
    } else if (i + 1 < argc) {
      a[k] = argv[++i];
    }
  }
  return a;
}

int64_t Int(const std::map<std::string, std::string>& a, const std::string& k, int64_t def) {
  auto it = a.find(k);
  return it == a.end() ? def : std::stoll(it->second);
}

// Counts the bytes read through the Env (pread of every file).
class CountingEnv : public ackpt::EnvWrapper {
 public:
  CountingEnv() : EnvWrapper(ackpt::Env::Default()) {}
  std::atomic<uint64_t> bytes{0};
  class File : public ackpt::RandomAccessFile {
   public:
    File(std::unique_ptr<ackpt::RandomAccessFile> f, std::atomic<uint64_t>* n)
        : f_(std::move(f)), n_(n) {}
    void Read(uint64_t offset, size_t n, void* dst) const override {
      *n_ += n;
      f_->Read(offset, n, dst);
    }
    uint64_t Size() const override { return f_->Size(); }
    const std::string& path() const override { return f_->path(); }

   private:
    std::unique_ptr<ackpt::RandomAccessFile> f_;
    std::atomic<uint64_t>* n_;
  };
  std::unique_ptr<ackpt::RandomAccessFile> NewRandomAccessFile(const std::string& p) override {
    return std::make_unique<File>(EnvWrapper::NewRandomAccessFile(p), &bytes);
  }
};

struct Global {
  std::string name;  // flattened, from the Checkpoint's root
  std::vector<int64_t> shape;
  at::ScalarType type;
  enum Split { kRows, kCols, kBlocks } split;
};

const std::vector<Global>& Globals() {
  static const std::vector<Global> g{
      {"module_interface_state/emb", {103, 24}, at::kFloat, Global::kRows},
      {"module_interface_state/proj", {16, 50}, at::kFloat, Global::kCols},
      {"trainer_state/optimizer/blk", {37, 29}, at::kDouble, Global::kBlocks},
      // 24 MiB, 24 slabs of 1 MiB: the byte accounting's subject.
      {"module_interface_state/big", {6144, 1024}, at::kFloat, Global::kRows},
  };
  return g;
}
constexpr const char* kDense = "module_interface_state/dense/w";  // replicated on save
const std::vector<int64_t> kDenseShape{40, 10};

// The global tensor `name` at `step`: distinct values everywhere.
at::Tensor GlobalValue(const std::string& name, const std::vector<int64_t>& shape,
                       at::ScalarType type, int64_t step) {
  const double salt = static_cast<double>(std::hash<std::string>{}(name) % 1000);
  return torch::arange(0, at::prod(torch::tensor(shape)).item<int64_t>(), torch::kDouble)
      .mul(1e-3)
      .add(salt + 1000.0 * static_cast<double>(step))
      .reshape(shape)
      .to(type);
}

// [begin, end) of part i of n of an extent (the last parts one shorter).
std::pair<int64_t, int64_t> Range(int64_t extent, int i, int n) {
  const int64_t base = extent / n, extra = extent % n;
  const int64_t begin = i * base + std::min<int64_t>(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

// Rank r's box of g on `world` ranks: offsets and shape.
std::pair<std::vector<int64_t>, std::vector<int64_t>> BoxOf(const Global& g, int r, int world) {
  std::vector<int64_t> off(g.shape.size(), 0), shape = g.shape;
  auto cut = [&](size_t d, int i, int n) {
    auto [b, e] = Range(g.shape[d], i, n);
    off[d] = b;
    shape[d] = e - b;
  };
  if (g.split == Global::kRows) cut(0, r, world);
  if (g.split == Global::kCols) cut(1, r, world);
  if (g.split == Global::kBlocks) {
    int gr = 1;
    for (int k = 1; k * k <= world; ++k)
      if (world % k == 0) gr = k;
    const int gc = world / gr;
    cut(0, r / gc, gr);
    cut(1, r % gc, gc);
  }
  return {off, shape};
}

at::Tensor Cut(const at::Tensor& whole, const std::vector<int64_t>& off,
               const std::vector<int64_t>& shape) {
  at::Tensor t = whole;
  for (size_t d = 0; d < off.size(); ++d) t = t.narrow(static_cast<int64_t>(d), off[d], shape[d]);
  return t.contiguous();
}

void Put(ackpt::Checkpoint* c, const std::string& name, const at::Tensor& t) {
  const size_t slash = name.find('/');
  const std::string group = name.substr(0, slash);
  ackpt::StateDict* d =
      group == "module_interface_state" ? &c->module_interface_state : &c->trainer_state;
  std::string rest = name.substr(slash + 1);
  for (size_t s; (s = rest.find('/')) != std::string::npos; rest = rest.substr(s + 1))
    d = &(*d)[rest.substr(0, s)].dict();
  d->set(rest, t);
}

ackpt::Checkpoint StateAt(int rank, int world, int64_t step) {
  ackpt::Checkpoint c;
  for (const Global& g : Globals()) {
    auto [off, shape] = BoxOf(g, rank, world);
    Put(&c, g.name, Cut(GlobalValue(g.name, g.shape, g.type, step), off, shape));
    c.shards[g.name] = ackpt::ShardBox{off, g.shape};
  }
  Put(&c, kDense, GlobalValue(kDense, kDenseShape, at::kFloat, step));
  c.trainer_state.set("data_position", 1000 + rank);
  c.trainer_state.set("local_t", torch::full({3}, static_cast<double>(rank)));
  c.trainer_state.set("step", step);
  return c;
}

bool Fail(const std::string& why) {
  std::fprintf(stderr, "FAIL: %s\n", why.c_str());
  return false;
}

bool Equal(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         a.contiguous().view(at::kByte).equal(b.contiguous().view(at::kByte));
}

// Slabs of a saved box are ~1 MiB (src/checkpointer/sharding.h): a target
// box reads at most one extra slab per overlapping saved box, plus one.
constexpr uint64_t kSlab = uint64_t{1} << 20;

}  // namespace

int main(int argc, char** argv) {
  const auto a = ParseArgs(argc, argv);
  const int rank = static_cast<int>(Int(a, "rank", 0));
  const int world = static_cast<int>(Int(a, "world", 1));
  const std::string mode = a.at("mode");
  const int64_t steps = Int(a, "steps", 2);
  torch::set_num_threads(1);

  auto store = c10::make_intrusive<c10d::FileStore>(a.at("store"), world);
  auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(30));
  opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);

  CountingEnv env;
  ackpt::DistributedCheckpointerArguments args;
  args.checkpointer.save_dir = a.at("dir");
  args.checkpointer.model_state_save_dir = "";
  args.checkpointer.log_level = "WARN";
  args.checkpointer.writer_threads = 1;
  args.checkpointer.chunk_size = 1 << 20;
  args.checkpointer.env = &env;
  args.checkpointer.compression = a.count("compression") && a.at("compression") == "none"
                                      ? ackpt::Compression::kNone
                                      : ackpt::Compression::kZstd;
  args.process_group = pg;
  args.store = store;
  args.replicated = {"module_interface_state/dense"};
  args.commit_timeout_seconds = 30;
  const std::string rule = a.count("rule") ? a.at("rule") : "modulo";
  args.local_state_on_resize = rule == "error"   ? ackpt::LocalStateOnResize::kError
                               : rule == "empty" ? ackpt::LocalStateOnResize::kEmpty
                                                 : ackpt::LocalStateOnResize::kFromRankModulo;
  bool ok = true;
  try {
    ackpt::DistributedCheckpointer ck(args);
    if (mode == "save") {
      for (int64_t s = 1; s <= steps; ++s) ck.save(StateAt(rank, world, s), s, /*force=*/true);
      ck.wait();
    } else if (mode == "bad") {
      // Overlapping boxes across ranks: every rank's save fails, naming the tensor and ranks.
      ackpt::Checkpoint c;
      c.module_interface_state.set("t", torch::ones({4, 4}));
      c.shards["module_interface_state/t"] =
          ackpt::ShardBox{{rank == 0 ? 0 : 2, 0}, {4 * world, 4}};
      try {
        ck.save(c, 1, /*force=*/true);
        ok = Fail("overlapping boxes were saved");
      } catch (const ackpt::Error& e) {
        const std::string m = e.message();
        if (e.code() != ackpt::Error::Code::kInvalidArgument ||
            m.find("module_interface_state/t") == std::string::npos ||
            m.find("overlap") == std::string::npos || m.find("rank 0") == std::string::npos)
          ok = Fail("overlap error: " + m);
      }
      // Local checks, raised by save() itself.
      auto expect_local = [&](ackpt::Checkpoint bad, const std::string& words) {
        try {
          ck.save(bad, 2, /*force=*/true);
          ok = Fail("saved a checkpoint with " + words);
        } catch (const ackpt::Error& e) {
          if (e.code() != ackpt::Error::Code::kInvalidArgument ||
              e.message().find(words) == std::string::npos)
            ok = Fail("'" + words + "' error: " + e.message());
        }
      };
      ackpt::Checkpoint out_of_bounds;
      out_of_bounds.trainer_state.set("t", torch::ones({4, 4}));
      out_of_bounds.shards["trainer_state/t"] = ackpt::ShardBox{{2, 0}, {5, 4}};
      expect_local(out_of_bounds, "outside the global shape");
      ackpt::Checkpoint missing;
      missing.shards["trainer_state/none"] = ackpt::ShardBox{{0}, {4}};
      expect_local(missing, "names no tensor");
      ackpt::Checkpoint replicated;
      replicated.module_interface_state["dense"].dict().set("w", torch::ones({4}));
      replicated.shards[kDense] = ackpt::ShardBox{{0}, {4 * world}};
      expect_local(replicated, "under a replicated path");
      ackpt::Checkpoint gap;  // every rank's box is rows [0, 1) of 2 * world rows
      gap.trainer_state.set("t", torch::ones({1}));
      gap.shards["trainer_state/t"] = ackpt::ShardBox{{2 * rank}, {2 * world}};
      try {
        ck.save(gap, 3, /*force=*/true);
        ok = Fail("a layout with gaps was saved");
      } catch (const ackpt::Error& e) {
        if (e.message().find("gaps") == std::string::npos) ok = Fail("gap error: " + e.message());
      }
    } else if (mode == "load") {
      const int saved = static_cast<int>(Int(a, "saved-world", world));
      const int64_t expect_index = Int(a, "expect-index", steps);
      ackpt::LoadTargets targets;
      std::map<std::string, at::Tensor> want;  // name -> this rank's box, expected
      uint64_t allowance = 0;                  // extra slab bytes the reads may take
      uint64_t overlaps = 0;                   // saved boxes the targets overlap
      for (const Global& g : Globals()) {
        auto [off, shape] = BoxOf(g, rank, world);
        const bool plain = a.count("plain-target") && g.name == "module_interface_state/emb";
        if (plain) {
          off.assign(g.shape.size(), 0);
          shape = g.shape;
        }
        at::Tensor t = torch::full(shape, -1.0, torch::TensorOptions().dtype(g.type));
        Put(&targets.into, g.name, t);
        if (!plain) targets.into.shards[g.name] = ackpt::ShardBox{off, g.shape};
        want[g.name] = Cut(GlobalValue(g.name, g.shape, g.type, expect_index), off, shape);
        int overlapping = 0;
        for (int s = 0; s < saved; ++s) {
          auto [so, ss] = BoxOf(g, s, saved);
          bool o = true;
          for (size_t d = 0; d < off.size(); ++d)
            o = o && so[d] < off[d] + shape[d] && off[d] < so[d] + ss[d];
          overlapping += o ? 1 : 0;
        }
        allowance += static_cast<uint64_t>(overlapping + 1) * kSlab;
        overlaps += static_cast<uint64_t>(overlapping);
      }
      // The replicated tensor, taken as row shards.
      auto [doff, dshape] =
          BoxOf(Global{kDense, kDenseShape, at::kFloat, Global::kRows}, rank, world);
      at::Tensor dense = torch::zeros(dshape);
      Put(&targets.into, kDense, dense);
      targets.into.shards[kDense] = ackpt::ShardBox{doff, kDenseShape};
      want[kDense] = Cut(GlobalValue(kDense, kDenseShape, at::kFloat, expect_index), doff, dshape);

      ackpt::Checkpoint c;
      try {
        c = ck.load(targets);
      } catch (const ackpt::Error& e) {
        if (rule == "error" && saved != world && e.code() == ackpt::Error::Code::kInvalidArgument &&
            e.message().find(std::to_string(saved)) != std::string::npos) {
          std::printf("refused: %s\n", e.message().c_str());
          return 0;
        }
        throw;
      }
      if (rule == "error" && saved != world) ok = Fail("loaded rank-local state across sizes");
      const ackpt::DistributedLoadInfo info = ck.last_load_info();
      if (info.index != expect_index)
        ok = Fail("loaded index " + std::to_string(info.index) + ", expected " +
                  std::to_string(expect_index));
      if (info.saved_world_size != saved) ok = Fail("saved_world_size");
      const std::map<std::string, at::Tensor> got = ackpt::FlattenTensors(
          ackpt::StateDict{{"module_interface_state", c.module_interface_state},
                           {"trainer_state", c.trainer_state}});
      for (const auto& [name, w] : want) {
        auto it = got.find(name);
        if (it == got.end()) {
          ok = Fail(name + " is not in the loaded checkpoint");
        } else if (!Equal(it->second, w)) {
          ok = Fail(name + " differs from the saved global tensor's box");
        }
      }
      // In place: the targets hold the bytes.
      if (!Equal(dense, want[kDense])) ok = Fail("the dense target was not filled in place");
      // Rank-local state by the rule.
      const ackpt::Value* pos = c.trainer_state.find("data_position");
      const int from = saved == world ? rank : (rule == "empty" ? -1 : rank % saved);
      if (info.local_state_from_rank != from) ok = Fail("local_state_from_rank");
      if (from < 0 ? pos != nullptr : (pos == nullptr || pos->to_int() != 1000 + from))
        ok = Fail("data_position does not follow the rule " + rule);
      // Bytes: what the boxes need, plus at most a slab per overlapping saved box.
      if (info.sharded_bytes_read > info.sharded_bytes_needed + allowance)
        ok = Fail("read " + std::to_string(info.sharded_bytes_read) + " slab bytes for " +
                  std::to_string(info.sharded_bytes_needed) + " needed");
      // And through the Env: slabs, the replicated tensor, headers (< 1 MiB);
      // zstd frames (1 MiB here) do not start where slabs do, so each run of
      // slabs read from a saved box may take a frame more at either end.
      const uint64_t dense_bytes = 40 * 10 * 4;
      const uint64_t frames = args.checkpointer.compression == ackpt::Compression::kNone
                                  ? 0
                                  : 2 * overlaps * args.checkpointer.chunk_size;
      // (A load that fell back read the newer checkpoint's bytes too.)
      const bool fell_back = expect_index != steps;
      if (!fell_back && env.bytes > info.sharded_bytes_read + dense_bytes + frames + (1u << 20))
        ok = Fail("read " + std::to_string(env.bytes.load()) + " bytes from files for " +
                  std::to_string(info.sharded_bytes_read) + " slab bytes");
      std::printf("rank %d: needed %llu read %llu file bytes %llu\n", rank,
                  static_cast<unsigned long long>(info.sharded_bytes_needed),
                  static_cast<unsigned long long>(info.sharded_bytes_read),
                  static_cast<unsigned long long>(env.bytes.load()));
      // Without targets: whole global tensors on another world size, the own box on the same.
      ackpt::Checkpoint whole = ck.load();
      const auto flat = ackpt::FlattenTensors(
          ackpt::StateDict{{"module_interface_state", whole.module_interface_state},
                           {"trainer_state", whole.trainer_state}});
      for (const Global& g : Globals()) {
        auto [off, shape] = saved == world
                                ? BoxOf(g, rank, world)
                                : std::make_pair(std::vector<int64_t>(g.shape.size(), 0), g.shape);
        const at::Tensor w = Cut(GlobalValue(g.name, g.shape, g.type, expect_index), off, shape);
        if (!flat.count(g.name) || !Equal(flat.at(g.name), w))
          ok = Fail(g.name + " loaded without a target is not the expected box");
        if (!whole.shards.count(g.name) || whole.shards.at(g.name).offsets != off)
          ok = Fail(g.name + " has no shards entry with its box");
      }
    }
  } catch (const ackpt::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return ok ? 0 : 1;
}
