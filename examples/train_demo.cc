// ackpt_demo: trains a small character-level transformer on real text and
// checkpoints it asynchronously through ackpt::Trainer.
//
//   ackpt_demo [--steps N] [--checkpoint-every K] [--save-dir DIR]
//              [--compression none|zstd] [--level L] [--model-size small|medium]
//              [--resume] [--sync] [--corpus FILE] [--no-preemption] ...  (--help for all)
//
// The corpus defaults to the license texts every Debian machine has under
// /usr/share/common-licenses. Every K steps the Trainer hands a checkpoint
// (model, AdamW state, StepLR, RNG, step counters) to the checkpointer; save()
// returns after a memcpy-speed snapshot and a writer thread compresses,
// writes, fsyncs and renames the file. --sync makes every save blocking
// (force = true) to show what checkpointing costs without ackpt. Killed
// (Ctrl-C, or kill -9) and run again with --resume, it continues from the
// newest complete checkpoint; the data order is part of the checkpoint (RNG),
// so the resumed run trains exactly as an uninterrupted one.
//
// Preemption (on unless --no-preemption): SIGTERM or SIGUSR1, as a cluster
// sends before it kills a job, finishes the current step, saves a checkpoint
// of that step with force = true within --grace-period seconds and exits
// with status 75 (ackpt::kPreemptedExitCode); --resume continues from it.
//
// --nproc N trains data-parallel on N ranks (Gloo on 127.0.0.1) through a
// DistributedCheckpointer. --nproc N --shard checkpoints the embedding tables
// and their AdamW moments as row shards, ZeRO-style (each rank writes only
// its rows, Checkpoint::shards), and --resume on another --nproc reshards
// them: each rank reads its new row box and all-gathers the others
// (RowShards below). Rank-local state follows kFromRankModulo.
//
// Two tiers (--local-dir DIR, docs/TIERS.md): every checkpoint is written to
// DIR (fast node-local storage; with --nproc, DIR/rank<r>, one "node" per
// rank, and each rank's part is also replicated to rank r+1's directory)
// and every --persist-every-th is copied byte for byte to --save-dir in the
// background. --resume takes the newest checkpoint complete in either tier
// and says which; a rank whose directory is gone gets its part back from its
// peer's replica.
//
// The model: byte embeddings plus a byte-pair embedding table (and, for
// medium, a hashed byte-triple table) feeding pre-norm transformer blocks
// with causal self-attention. The tables hold most of the parameters: cheap
// to train on two CPU cores, and checkpointed like every other tensor.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <vector>

#include "ackpt/ackpt.h"
#include "ackpt/distributed.h"
#include "ackpt/distributed_backend.h"
#include "ackpt/preemption.h"
#include "ackpt/trainer.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string Bytes(double b) {
  if (b >= 1e9) return fmt::format("{:.2f} GB", b / 1e9);
  if (b >= 1e6) return fmt::format("{:.1f} MB", b / 1e6);
  return fmt::format("{:.1f} kB", b / 1e3);
}

// "one", "2nd", "3rd", "4th", ..., "11th", "21st": "every {} checkpoint".
std::string Ordinal(int64_t k) {
  if (k == 1) return "one";
  const int64_t tens = k % 100, ones = k % 10;
  const char* suffix = (tens >= 11 && tens <= 13) ? "th"
                       : ones == 1                ? "st"
                       : ones == 2                ? "nd"
                       : ones == 3                ? "rd"
                                                  : "th";
  return fmt::format("{}{}", k, suffix);
}

std::mutex g_print_mu;  // main thread and writer threads print

template <typename... A>
void Print(fmt::format_string<A...> format, A&&... args) {
  std::lock_guard<std::mutex> lock(g_print_mu);
  fmt::print(format, std::forward<A>(args)...);
  std::fflush(stdout);
}

// ---- options ----

struct ModelSize {
  int64_t d_model, layers, heads, context, batch;
  int64_t trigram_buckets;  // 0: no hashed-trigram table
  double lr;
};

struct Options {
  int64_t steps = 240;
  int64_t checkpoint_every = 20;
  std::string save_dir = "demo_checkpoints";
  std::string compression = "zstd";
  int level = 1;
  std::string model_size = "small";
  bool resume = false;
  bool sync = false;
  std::string corpus;
  int threads = 0;         // 0: LibTorch's default
  int writer_threads = 1;  // background writers
  int64_t log_every = 0;   // 0: at checkpoints only
  int64_t keep_last = 3;   // retention; 0 keeps every checkpoint
  int64_t seed = 0;
  bool preemption = true;    // SIGTERM/SIGUSR1: save at once and exit 75
  double grace_period = 60;  // seconds to make that save durable
  int nproc = 1;             // > 1: launch that many ranks (Gloo on 127.0.0.1)
  int64_t decay_step = 0;    // StepLR's step size; 0: 2/3 of --steps
  bool shard = false;        // with --nproc: row-shard the embedding tables' checkpoint
  int rank = -1;             // set by the launcher for each rank it starts
  int world = 1;
  std::string store;  // the FileStore of the ranks' rendezvous
  // Two tiers (docs/TIERS.md): "" keeps one tier, --save-dir.
  std::string local_dir;         // with --nproc: {local_dir}/rank{r}, one "node" per rank
  int64_t persist_every = 1;     // every K-th checkpoint is also promoted to --save-dir
  int64_t local_keep = 2;        // local tier retention (keep_last; 0 keeps all)
  double promote_mib_per_s = 0;  // promotion copy rate cap; 0: none
  int die_rank = 0;              // tests: this rank SIGKILLs itself after --die-at-step
  int64_t die_at_step = -1;
  // Fine-tuning (docs/INCREMENTAL.md): the embedding tables are frozen (not
  // trained, not in the optimizer); --incremental references what did not
  // change instead of writing it again.
  bool freeze_embeddings = false;
  bool incremental = false;
  int64_t full_every = 0;
};

ModelSize SizeOf(const std::string& name) {
  if (name == "tiny") return {32, 1, 2, 32, 8, 0, 3e-3};
  if (name == "small") return {64, 2, 4, 64, 16, 0, 3e-3};
  if (name == "medium") return {256, 4, 8, 64, 8, int64_t{1} << 14, 1e-3};
  throw ackpt::Error::InvalidArgument("--model-size must be tiny, small or medium, got '" + name +
                                      "'");
}

// ---- data ----

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ackpt::Error::NotFound("cannot read corpus file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The license texts of a Debian system, or --corpus.
std::string LoadCorpus(const Options& o, std::string* description) {
  if (!o.corpus.empty()) {
    *description = o.corpus;
    return ReadFile(o.corpus);
  }
  namespace fs = std::filesystem;
  const std::string dir = "/usr/share/common-licenses";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw ackpt::Error::NotFound(dir + " is missing (not a Debian system?); pass --corpus FILE");
  }
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file() && !e.is_symlink()) files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  std::string text;
  for (const auto& f : files) text += ReadFile(f);
  *description = dir + " (" + std::to_string(files.size()) + " files)";
  return text;
}

// ---- model: a small GPT over bytes ----

struct BlockImpl : torch::nn::Module {
  BlockImpl(int64_t d, int64_t heads) : heads(heads) {
    ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    qkv = register_module("qkv", torch::nn::Linear(d, 3 * d));
    proj = register_module("proj", torch::nn::Linear(d, d));
    ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    fc1 = register_module("fc1", torch::nn::Linear(d, 4 * d));
    fc2 = register_module("fc2", torch::nn::Linear(4 * d, d));
  }
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& causal) {
    const int64_t B = x.size(0), T = x.size(1), C = x.size(2), hd = C / heads;
    auto q_k_v = qkv(ln1(x)).view({B, T, 3, heads, hd}).permute({2, 0, 3, 1, 4});
    torch::Tensor att = torch::matmul(q_k_v[0], q_k_v[1].transpose(-2, -1)) / std::sqrt(double(hd));
    att = torch::softmax(att.masked_fill(causal, -INFINITY), -1);
    torch::Tensor y = torch::matmul(att, q_k_v[2]).transpose(1, 2).reshape({B, T, C});
    x = x + proj(y);
    return x + fc2(torch::gelu(fc1(ln2(x))));
  }
  int64_t heads;
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  torch::nn::Linear qkv{nullptr}, proj{nullptr}, fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Block);

struct CharTransformerImpl : torch::nn::Module {
  explicit CharTransformerImpl(const ModelSize& s) : trigram_buckets(s.trigram_buckets) {
    tok = register_module("tok", torch::nn::Embedding(256, s.d_model));
    bigram = register_module("bigram", torch::nn::Embedding(256 * 256, s.d_model));
    if (trigram_buckets > 0) {
      trigram = register_module("trigram", torch::nn::Embedding(trigram_buckets, s.d_model));
    }
    pos = register_parameter("pos", torch::randn({s.context, s.d_model}) * 0.02);
    for (int64_t i = 0; i < s.layers; ++i) {
      blocks.push_back(register_module("block" + std::to_string(i), Block(s.d_model, s.heads)));
    }
    ln = register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({s.d_model})));
    head = register_module("head", torch::nn::Linear(s.d_model, 256));
    causal = torch::ones({s.context, s.context}, torch::kBool).triu(1);  // not state
  }
  // tokens [B, T] (bytes as int64) -> logits [B, T, 256]
  torch::Tensor forward(const torch::Tensor& tokens) {
    const int64_t B = tokens.size(0), T = tokens.size(1);
    // Each position also sees the byte pair (and hashed triple) ending there.
    auto shift = [&](const torch::Tensor& t) {
      return torch::cat({torch::zeros({B, 1}, t.options()), t.narrow(1, 0, T - 1)}, 1);
    };
    const torch::Tensor prev = shift(tokens);
    torch::Tensor x = tok(tokens) + bigram(prev * 256 + tokens) + pos.narrow(0, 0, T);
    if (trigram_buckets > 0) {
      const torch::Tensor key = shift(prev) * 65536 + prev * 256 + tokens;
      x = x + trigram(key.mul(static_cast<int64_t>(2654435761LL)).remainder(trigram_buckets));
    }
    const torch::Tensor mask = causal.narrow(0, 0, T).narrow(1, 0, T);
    for (auto& b : blocks) x = b->forward(x, mask);
    return head(ln(x));
  }
  int64_t trigram_buckets;
  torch::nn::Embedding tok{nullptr}, bigram{nullptr}, trigram{nullptr};
  torch::Tensor pos, causal;
  std::vector<Block> blocks;
  torch::nn::LayerNorm ln{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(CharTransformer);

// ---- the recipe: one Trainer "epoch" is one window of K steps ----

class CharLM : public ackpt::ModuleInterface {
 public:
  CharLM(CharTransformer model, const ModelSize& size, const Options& o, const std::string& text)
      : ModuleInterface(model), model_(model), size_(size), opt_(o) {
    torch::Tensor bytes = torch::from_blob(const_cast<char*>(text.data()),
                                           {static_cast<int64_t>(text.size())}, torch::kUInt8)
                              .to(torch::kLong);
    const int64_t n = bytes.size(0);
    const int64_t split = n * 9 / 10;
    train_ = bytes.narrow(0, 0, split);
    val_ = bytes.narrow(0, split, n - split);
    if (val_.size(0) <= size_.context + 1 || train_.size(0) <= size_.context + 1) {
      throw ackpt::Error::InvalidArgument("the corpus is too short for a context of " +
                                          std::to_string(size_.context) + " bytes");
    }
  }

  // Window e covers steps [e * K, min((e + 1) * K, steps)).
  int64_t epochs() const {
    return (opt_.steps + opt_.checkpoint_every - 1) / opt_.checkpoint_every;
  }
  void on_begin_train_epoch(int64_t global_step, int64_t) override { window_start_ = global_step; }
  int64_t num_train_batches(int64_t epoch) override {
    const int64_t end = std::min((epoch + 1) * opt_.checkpoint_every, opt_.steps);
    // With --nproc, DistributedBackend runs 1 / world of the batches on each
    // rank: ask for world times the steps, so every rank runs the window.
    return std::max<int64_t>(0, end - window_start_) * opt_.world;
  }
  torch::Tensor train_step(int64_t, int64_t, int64_t) override {
    // Random windows drawn from LibTorch's generator (checkpointed with the Trainer).
    torch::Tensor starts = torch::randint(0, train_.size(0) - size_.context - 1, {size_.batch});
    return Loss(train_, starts);
  }
  int64_t num_val_batches(int64_t) override { return 2; }
  torch::Tensor val_step(int64_t, int64_t, int64_t batch) override {
    // Fixed windows: validation never touches the generator.
    const int64_t span = val_.size(0) - size_.context - 1;
    torch::Tensor starts = (torch::arange(size_.batch) * 7919 + batch * 104729) % span;
    return Loss(val_, starts);
  }
  ackpt::OptimizersSchedulers get_optimizers_schedulers(int64_t, int64_t) override {
    // Fine-tuning: only the parameters that still require a gradient train.
    std::vector<torch::Tensor> trained;
    for (const auto& p : model_->parameters()) {
      if (p.requires_grad()) trained.push_back(p);
    }
    auto opt = std::make_shared<torch::optim::AdamW>(
        trained, torch::optim::AdamWOptions(size_.lr).weight_decay(0.01));
    const unsigned decay_every = static_cast<unsigned>(
        opt_.decay_step > 0 ? opt_.decay_step : std::max<int64_t>(1, opt_.steps * 2 / 3));
    return {{opt}, {ackpt::MakeScheduler<torch::optim::StepLR>(*opt, decay_every, 0.3)}};
  }

  // Progress: a loss line every --log-every steps; at the end of a window the
  // line waits for the validation loss and the checkpoint's stall.
  void on_end_train_step(int64_t step, double loss) override {
    if (step_hook_) step_hook_(step);
    loss_sum_ += loss;
    ++loss_n_;
    const bool window_end = step % opt_.checkpoint_every == 0 || step == opt_.steps;
    if (!window_end && (opt_.log_every == 0 || step % opt_.log_every != 0)) return;
    const double ms = 1e3 * Seconds(Clock::now() - since_) / static_cast<double>(loss_n_);
    last_loss_ = loss_sum_ / static_cast<double>(loss_n_);
    std::string line =
        fmt::format("step {:5}/{}  loss {:.3f}  {:4.0f} ms/step", step, opt_.steps, last_loss_, ms);
    loss_sum_ = 0;
    loss_n_ = 0;
    since_ = Clock::now();
    if (window_end) {
      pending_ = std::move(line);
    } else {
      Print("{}\n", line);
    }
  }
  void on_end_val_epoch(int64_t, int64_t, double loss) override {
    last_val_ = loss;
    pending_ += fmt::format("  val {:.3f}", loss);
  }
  // Runs after every optimizer step, between steps (the preemption check).
  void set_step_hook(std::function<void(int64_t)> hook) { step_hook_ = std::move(hook); }
  // The pending progress line (and clears it).
  std::string take_pending() { return std::exchange(pending_, std::string()); }
  void reset_clock() { since_ = Clock::now(); }
  double last_loss() const { return last_loss_; }
  double last_val() const { return last_val_; }

 private:
  torch::Tensor Loss(const torch::Tensor& data, const torch::Tensor& starts) {
    const int64_t T = size_.context;
    torch::Tensor offsets = torch::arange(T + 1);
    torch::Tensor windows = data.index({starts.unsqueeze(1) + offsets.unsqueeze(0)});  // [B, T+1]
    torch::Tensor x = windows.narrow(1, 0, T), y = windows.narrow(1, 1, T);
    torch::Tensor logits = model_->forward(x);
    return torch::nn::functional::cross_entropy(logits.reshape({-1, 256}), y.reshape({-1}));
  }

  CharTransformer model_;
  ModelSize size_;
  Options opt_;
  torch::Tensor train_, val_;
  int64_t window_start_ = 0;
  double loss_sum_ = 0;
  int64_t loss_n_ = 0;
  double last_loss_ = NAN, last_val_ = NAN;
  std::string pending_;
  Clock::time_point since_ = Clock::now();
  std::function<void(int64_t)> step_hook_;
};

// ---- --shard: the embedding tables and their AdamW moments, row-sharded ----
//
// ZeRO-style checkpointing of the tables that hold most of the parameters:
// every rank still computes with the full tables and steps the full AdamW
// state (the gradients are all-reduced, so they are identical on every
// rank), but rank r of W owns rows Rows(N, r, W) of each table and of its
// exp_avg / exp_avg_sq, and checkpoints only those rows, declared through
// Checkpoint::shards. On resume each rank asks for its row box on the world
// size it runs with now (any other) and all-gathers the rows of the others.

// [begin, end) of part i of n of `extent` rows (the first extent % n parts one longer).
std::pair<int64_t, int64_t> Rows(int64_t extent, int i, int n) {
  const int64_t base = extent / n, extra = extent % n;
  const int64_t begin = i * base + std::min<int64_t>(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

class RowShards {
 public:
  // `tables`: the module's parameter names of the embedding tables.
  RowShards(std::vector<std::string> tables, c10::intrusive_ptr<c10d::ProcessGroup> pg)
      : tables_(std::move(tables)),
        pg_(std::move(pg)),
        rank_(pg_->getRank()),
        world_(pg_->getSize()) {
    for (const auto& t : tables_) {
      paths_.push_back({"module_interface_state", t});
      for (const char* m : {"exp_avg", "exp_avg_sq"})
        paths_.push_back({"trainer_state", "optimizers", "0", "state", t, m});
    }
  }
  const std::vector<std::string>& tables() const { return tables_; }
  // The flattened names of the sharded tensors (Checkpoint::shards' keys).
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& p : paths_) out.push_back(ackpt::FlatTensorName(p));
    return out;
  }

  // What save() gets: `c` with each sharded tensor cut to this rank's rows
  // (a view, no copy: the checkpointer snapshots it) and its box declared.
  ackpt::Checkpoint Cut(const ackpt::Checkpoint& c) const {
    ackpt::Checkpoint out = c;
    for (const auto& p : paths_) {
      ackpt::Value* v = At(&out, p);
      if (v == nullptr || !v->is_tensor()) continue;  // no state yet
      const at::Tensor whole = v->tensor();
      const auto [b, e] = Rows(whole.size(0), rank_, world_);
      *v = ackpt::Value(whole.narrow(0, b, e - b));
      out.shards[ackpt::FlatTensorName(p)] = Box(whole, b);
    }
    return out;
  }

  // load(targets) through `load`: the sharded targets replaced by their row
  // views and declared as boxes, so the checkpointer reads only this rank's
  // rows (from whichever saved boxes overlap them) straight into the full
  // tensors; then the rows of the other ranks are all-gathered into them and
  // the returned checkpoint holds the full tensors, as the Trainer expects.
  template <typename LoadFn>
  ackpt::Checkpoint Load(const ackpt::LoadTargets& targets, LoadFn load) const {
    ackpt::LoadTargets boxed = targets;
    struct Whole {
      std::vector<std::string> path;
      at::Tensor tensor;
    };
    std::vector<Whole> wholes;
    for (const auto& p : paths_) {
      ackpt::Value* v = At(&boxed.into, p);
      if (v == nullptr || !v->is_tensor()) continue;
      const at::Tensor whole = v->tensor();
      const auto [b, e] = Rows(whole.size(0), rank_, world_);
      *v = ackpt::Value(whole.narrow(0, b, e - b));
      boxed.into.shards[ackpt::FlatTensorName(p)] = Box(whole, b);
      wholes.push_back({p, whole});
    }
    ackpt::Checkpoint c = load(boxed);
    if (c.empty()) return c;  // nothing to resume (every rank agrees)
    torch::NoGradGuard no_grad;
    for (const auto& w : wholes) {
      ackpt::Value* v = At(&c, w.path);
      if (v == nullptr || !v->is_tensor()) continue;  // the checkpoint lacks it (on every rank)
      const at::Tensor box = v->tensor();
      const auto [b, e] = Rows(w.tensor.size(0), rank_, world_);
      at::Tensor mine = w.tensor.narrow(0, b, e - b);
      // Read into a fresh tensor (another dtype): copy it into place.
      if (box.data_ptr() != mine.data_ptr()) mine.copy_(box);
      AllGatherRows(w.tensor);
      *v = ackpt::Value(w.tensor);
    }
    c.shards.clear();  // whole tensors now
    loaded_digest_ = Digest(c);
    return c;
  }

  // FNV-1a over the bytes of the whole sharded tensors of `c`, in order: the
  // demo prints it after a load and at the end of training, so that a
  // resume on another world size can be checked against the run that saved.
  std::string Digest(ackpt::Checkpoint c) const {
    uint64_t h = 1469598103934665603ull;
    for (const auto& p : paths_) {
      const ackpt::Value* v = At(&c, p);
      if (v == nullptr || !v->is_tensor()) continue;
      const at::Tensor t = v->tensor().contiguous();
      const auto* b = static_cast<const unsigned char*>(t.data_ptr());
      for (size_t i = 0, n = t.numel() * t.element_size(); i < n; ++i)
        h = (h ^ b[i]) * 1099511628211ull;
    }
    return fmt::format("{:016x}", h);
  }
  // Digest() of what the last Load() returned; "" if none.
  const std::string& loaded_digest() const { return loaded_digest_; }

 private:
  ackpt::ShardBox Box(const at::Tensor& whole, int64_t row) const {
    std::vector<int64_t> offsets(static_cast<size_t>(whole.dim()), 0);
    offsets[0] = row;
    return ackpt::ShardBox{offsets, whole.sizes().vec()};
  }

  // The value at `path` (group, then dict keys or list indices); null if absent.
  static ackpt::Value* At(ackpt::Checkpoint* c, const std::vector<std::string>& path) {
    ackpt::StateDict* group = path[0] == "module_interface_state" ? &c->module_interface_state
                              : path[0] == "trainer_state"        ? &c->trainer_state
                                                                  : &c->trainer_backend_state;
    ackpt::Value* v = group->find(path[1]);
    for (size_t i = 2; v != nullptr && i < path.size(); ++i) {
      if (v->is_dict()) {
        v = v->dict().find(path[i]);
      } else if (v->is_list()) {
        const size_t k = std::stoul(path[i]);
        v = k < v->list().size() ? &v->list()[k] : nullptr;
      } else {
        v = nullptr;
      }
    }
    return v;
  }

  // Every rank holds its rows of `whole`; afterwards every rank holds all of
  // them. Gloo's allgather wants equal sizes: the boxes go padded to the
  // longest (the first), and each rank's rows are copied out of its slot.
  void AllGatherRows(const at::Tensor& whole) const {
    const int64_t n = whole.size(0);
    const auto [b0, e0] = Rows(n, 0, world_);
    std::vector<int64_t> padded = whole.sizes().vec();
    padded[0] = e0 - b0;
    const auto [b, e] = Rows(n, rank_, world_);
    std::vector<at::Tensor> in{torch::zeros(padded, whole.options())};
    in[0].narrow(0, 0, e - b).copy_(whole.narrow(0, b, e - b));
    std::vector<std::vector<at::Tensor>> out(1);
    for (int r = 0; r < world_; ++r) out[0].push_back(torch::empty(padded, whole.options()));
    pg_->allgather(out, in)->wait();
    for (int r = 0; r < world_; ++r) {
      if (r == rank_) continue;
      const auto [br, er] = Rows(n, r, world_);
      whole.narrow(0, br, er - br).copy_(out[0][static_cast<size_t>(r)].narrow(0, 0, er - br));
    }
  }

  std::vector<std::string> tables_;
  std::vector<std::vector<std::string>> paths_;
  mutable std::string loaded_digest_;
  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
  int rank_, world_;
};

// DistributedBackend refuses a checkpoint of another world size (its step
// counters count one rank's batches). With --shard the demo resumes on any
// --nproc: it takes the counters of rank r mod saved_world_size
// (local_state_on_resize = kFromRankModulo), whose optimizer steps are the
// job's. The data each rank draws after a resize: see Run().
class ResizableBackend : public ackpt::DistributedBackend {
 public:
  using DistributedBackend::DistributedBackend;
  void update_state(const ackpt::StateDict& state) override {
    const ackpt::Value* w = state.find("world_size");
    if (w == nullptr || w->to_int() == world_size()) return DistributedBackend::update_state(state);
    saved_world_ = static_cast<int>(w->to_int());
    ackpt::StateDict s = state;
    s.set("world_size", static_cast<int64_t>(world_size()));
    DistributedBackend::update_state(s);
  }
  int saved_world() const { return saved_world_; }  // 0: same world size

 private:
  int saved_world_ = 0;
};

// ---- a checkpointer wrapper: names files by step, measures the stall, --sync ----

struct SaveRecord {
  int64_t step;
  bool forced;
  bool wrote;  // false: a forced save that only waited for the same state's periodic save
  double stall;
};

class DemoCheckpointer : public ackpt::AbstractCheckpointer {
 public:
  // One process: a DefaultCheckpointer; --nproc: a DistributedCheckpointer.
  // `shards` (--shard, with dist): what is saved and loaded as row shards.
  DemoCheckpointer(std::unique_ptr<ackpt::DefaultCheckpointer> single,
                   std::unique_ptr<ackpt::DistributedCheckpointer> dist, bool sync, CharLM* module,
                   std::string prefix, std::unique_ptr<RowShards> shards = nullptr)
      : single_(std::move(single)),
        dist_(std::move(dist)),
        sync_(sync),
        module_(module),
        prefix_(std::move(prefix)),
        shards_(std::move(shards)) {}
  ackpt::DistributedCheckpointer* dist() const { return dist_.get(); }
  const RowShards* shards() const { return shards_.get(); }
  ackpt::AbstractCheckpointer& inner() {
    return single_ ? static_cast<ackpt::AbstractCheckpointer&>(*single_) : *dist_;
  }
  // The file that makes checkpoint `step` exist.
  std::string saved_name(int64_t step) const {
    return single_ ? ackpt::BaseName(single_->last_saved_path())
                   : ackpt::ManifestFileName(prefix_, step);
  }
  std::string loaded_path() const {
    return single_ ? single_->last_loaded_path() : dist_->last_loaded_manifest();
  }
  void save(const ackpt::Checkpoint& c, int64_t, bool force) override {
    // File index = optimizer steps done (the Trainer's index is its epoch,
    // here a window of --checkpoint-every steps).
    const int64_t step = c.trainer_backend_state.at("global_step_completed").to_int();
    const auto t0 = Clock::now();
    if (force && !records_.empty() && records_.back().step == step && !records_.back().forced) {
      // The Trainer's final save(force = true) right after the periodic save
      // of the same state: making that one durable is enough.
      inner().wait();
      const double stall = Seconds(Clock::now() - t0);
      records_.push_back({step, true, false, stall});
      Print("final save (force = true): waited {:.1f} ms until {} was durable\n", stall * 1e3,
            saved_name(step));
      return;
    }
    inner().save(shards_ ? shards_->Cut(c) : c, step, force || sync_);
    const double stall = Seconds(Clock::now() - t0);
    records_.push_back({step, force, true, stall});
    const std::string name = saved_name(step);
    if (!force) {
      Print("{}  | {} {}, stall {:.1f} ms\n", module_->take_pending(), sync_ ? "wrote" : "queued",
            name, stall * 1e3);
    } else {
      Print("final save (force = true) of {}: {:.1f} ms\n", name, stall * 1e3);
    }
  }
  void save_model(const ackpt::StateDict& s, int64_t) override {
    const auto t0 = Clock::now();
    inner().save_model(s, last_step());  // synchronous, as in pymarlin
    model_stall_ += Seconds(Clock::now() - t0);
  }
  double model_stall() const { return model_stall_; }
  ackpt::Checkpoint load() override { return inner().load(); }
  // Two tiers: the tier the last load came from, the counters, the last
  // promotion error and what the local tier's retention kept.
  ackpt::Tier loaded_tier() const {
    return single_ ? single_->last_loaded_tier() : dist_->last_load_info().tier;
  }
  ackpt::CheckpointerCounters counters() const {
    return single_ ? single_->counters() : dist_->counters();
  }
  std::string promotion_error() const {
    return single_ ? single_->promotion_error() : dist_->promotion_error();
  }
  std::string local_kept() const {
    std::string out;
    for (const auto& e :
         single_ ? single_->list_local_checkpoints() : dist_->list_local_checkpoints()) {
      out += fmt::format("{}  ", ackpt::BaseName(e.path));
    }
    return out;
  }
  // The Trainer's in-place load. Without --shard: load() (copies, as before).
  ackpt::Checkpoint load(const ackpt::LoadTargets& targets) override {
    if (!shards_) return load();
    return shards_->Load(targets, [&](const ackpt::LoadTargets& t) { return dist_->load(t); });
  }
  void wait() override { inner().wait(); }
  // What retention kept, one line.
  std::string kept() {
    std::string out;
    if (single_) {
      for (const auto& e : single_->list_checkpoints()) {
        auto v = e.metrics.find("val_loss");
        out += fmt::format("{} ({}{})  ", ackpt::BaseName(e.path), fmt::join(e.kept_by, "+"),
                           v != e.metrics.end() ? fmt::format(", val_loss {:.3f}", v->second) : "");
      }
    } else {
      for (const auto& e : dist_->list_checkpoints()) {
        out += fmt::format("{} ({} parts, {})  ", ackpt::BaseName(e.path), e.parts.size(),
                           Bytes(static_cast<double>(e.file_bytes)));
      }
    }
    return out;
  }
  const std::vector<SaveRecord>& records() const { return records_; }
  int64_t last_step() const { return records_.empty() ? 0 : records_.back().step; }

 private:
  std::unique_ptr<ackpt::DefaultCheckpointer> single_;
  std::unique_ptr<ackpt::DistributedCheckpointer> dist_;
  bool sync_;
  CharLM* module_;
  std::string prefix_;
  std::unique_ptr<RowShards> shards_;
  std::vector<SaveRecord> records_;
  double model_stall_ = 0;
};

std::atomic<ackpt::Trainer*> g_trainer{nullptr};

void OnSigint(int) {
  ackpt::Trainer* t = g_trainer.load();
  if (t != nullptr) t->request_stop();
}

int Run(const Options& o) {
  const ModelSize size = SizeOf(o.model_size);
  if (o.threads > 0) torch::set_num_threads(o.threads);
  torch::manual_seed(static_cast<uint64_t>(o.seed));

  std::string corpus_name;
  const std::string text = LoadCorpus(o, &corpus_name);
  auto model = CharTransformer(size);
  auto module = std::make_shared<CharLM>(model, size, o, text);
  // Every rank builds the same model from --seed; each draws its own data.
  if (o.world > 1) torch::manual_seed(static_cast<uint64_t>(o.seed) + 1000 * o.rank);
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  int64_t frozen_params = 0;
  if (o.freeze_embeddings) {
    for (auto* e : {&model->tok, &model->bigram, &model->trigram}) {
      if (e->is_empty()) continue;
      for (auto& p : (*e)->parameters()) {
        p.set_requires_grad(false);
        frozen_params += p.numel();
      }
    }
  }

  std::mutex stats_mu;
  std::vector<ackpt::SaveStats> stats;
  ackpt::DefaultCheckpointerArguments ca;
  ca.save_dir = o.save_dir;
  ca.model_state_save_dir = o.save_dir;
  ca.compression = o.compression == "none" ? ackpt::Compression::kNone : ackpt::Compression::kZstd;
  ca.zstd_level = o.level;
  ca.writer_threads = o.writer_threads;
  ca.log_level = "WARN";
  ca.resume_from_save_dir = o.resume;
  ca.delete_existing_checkpoints = !o.resume;
  // Keep the newest N plus the best by validation loss (stored in each file's
  // metadata by the Trainer, so it survives --resume).
  ca.retention.keep_last = o.keep_last;
  if (o.keep_last > 0) {
    ca.retention.keep_best = 1;
    ca.retention.best_metric = "val_loss";
  }
  ca.retention.model_keep_last = o.keep_last > 0 ? 1 : 0;
  if (!o.local_dir.empty()) {
    // Two tiers: every checkpoint to the local directory (with --nproc one
    // per rank, each rank standing for a node), every --persist-every-th
    // also copied to --save-dir in the background. The demo's checkpoint
    // index is the step, a multiple of --checkpoint-every: the K-th
    // checkpoint is the one whose step is a multiple of K * checkpoint_every.
    ca.local_tier.dir = o.world > 1 ? ackpt::JoinPath(o.local_dir, "rank{rank}") : o.local_dir;
    ca.local_tier.persist_period = o.persist_every * o.checkpoint_every;
    ca.local_tier.retention.keep_last = o.local_keep;
    // The demo's checkpoints are small and frequent: let a few promotions
    // queue behind a busy disk rather than skip them (default: 1).
    ca.local_tier.max_pending_promotions = 4;
    ca.local_tier.promote_bytes_per_second =
        static_cast<uint64_t>(o.promote_mib_per_s * 1024.0 * 1024.0);
  }
  ca.incremental.enabled = o.incremental;
  ca.incremental.full_every = o.full_every;
  ca.on_save = [&](const ackpt::SaveStats& s) {
    {
      std::lock_guard<std::mutex> lock(stats_mu);
      stats.push_back(s);
    }
    if (!s.ok) {
      Print("{:53}| FAILED {}: {}\n", "", ackpt::BaseName(s.path), s.error);
    } else if (!o.sync) {
      Print("{:53}| durable {}: {} -> {}, {:.0f} ms{}\n", "", ackpt::BaseName(s.path),
            Bytes(static_cast<double>(s.bytes)), Bytes(static_cast<double>(s.file_bytes)),
            s.write_seconds * 1e3, s.forced ? "" : " in the background");
    }
  };
  const std::string format =
      o.compression == "zstd" ? fmt::format("zstd level {}", o.level) : std::string("uncompressed");
  fmt::print("ackpt demo: character-level transformer ({}, {:.2f}M parameters) on {}, {}\n",
             o.model_size, static_cast<double>(params) / 1e6, corpus_name,
             Bytes(static_cast<double>(text.size())));
  fmt::print("{} steps, checkpoint every {} into {} ({}, {} saves){}\n", o.steps,
             o.checkpoint_every, o.save_dir, format, o.sync ? "blocking --sync" : "asynchronous",
             o.resume ? "" : "; ackpt files already there are removed (use --resume to continue)");
  if (!o.local_dir.empty()) {
    fmt::print(
        "two tiers: every checkpoint into {} (keeps {}), every {} also promoted to {} "
        "(steps that are multiples of {}){}{}\n",
        ca.local_tier.dir, o.local_keep > 0 ? fmt::format("the newest {}", o.local_keep) : "all",
        Ordinal(o.persist_every), o.save_dir, ca.local_tier.persist_period,
        o.promote_mib_per_s > 0 ? fmt::format(" at most {:g} MiB/s", o.promote_mib_per_s) : "",
        o.world > 1 ? "; rank r's part also replicated to rank r+1's local tier" : "");
  }
  if (o.freeze_embeddings || o.incremental) {
    fmt::print(
        "fine-tuning: {}{}\n",
        o.freeze_embeddings
            ? fmt::format("embeddings frozen ({:.2f}M of {:.2f}M parameters, {:.0f} %)",
                          static_cast<double>(frozen_params) / 1e6,
                          static_cast<double>(params) / 1e6,
                          100.0 * static_cast<double>(frozen_params) / static_cast<double>(params))
            : std::string("every parameter trains"),
        o.incremental
            ? fmt::format("; incremental checkpoints (unchanged tensors referenced{})",
                          o.full_every > 0 ? fmt::format(", every {} full", Ordinal(o.full_every))
                                           : std::string())
            : std::string("; full checkpoints"));
  }
  std::fflush(stdout);

  // Installed before the Trainer loads anything, so a SIGTERM at any point
  // from here on is a preemption (it takes effect after the next step).
  std::unique_ptr<ackpt::PreemptionGuard> guard;
  if (o.preemption) {
    ackpt::PreemptionOptions po;
    po.grace_period_seconds = o.grace_period;
    guard = std::make_unique<ackpt::PreemptionGuard>(po);
  }

  std::unique_ptr<ackpt::DefaultCheckpointer> single;
  std::unique_ptr<ackpt::DistributedCheckpointer> dist;
  std::shared_ptr<ackpt::TrainerBackend> backend;
  std::unique_ptr<RowShards> shards;
  if (o.world > 1) {
    // The ranks meet in a FileStore on local disk and talk Gloo on 127.0.0.1.
    auto store = c10::make_intrusive<c10d::FileStore>(o.store, o.world);
    auto gloo = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(120));
    gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, o.rank, o.world, gloo);
    ackpt::DistributedCheckpointerArguments da;
    da.checkpointer = ca;
    da.process_group = pg;
    da.store = store;
    // Parameters, AdamW state and StepLR are identical on every rank; the
    // RNG (each rank's data order) and step counters are rank-local.
    da.replicated = {"module_interface_state", "trainer_state/optimizers",
                     "trainer_state/schedulers"};
    da.commit_timeout_seconds = 120;
    // Peer replication r -> r + 1 (one rank per "node"), over a Gloo group
    // the checkpointer creates for itself, on the loopback like the ranks.
    if (!o.local_dir.empty()) da.transfer_hostname = "127.0.0.1";
    if (o.shard) {
      // The embedding tables and their AdamW moments are row shards (one
      // box per rank); the other parameters stay replicated (written once),
      // named one by one since the tables live in the same group. The rest
      // of the AdamW state sits in the optimizers list, which a replicated
      // path cannot reach into, so it is rank-local: every rank writes its
      // (identical) copy, small next to the tables. Across world sizes each
      // rank takes the rank-local state (that AdamW state, the step counters,
      // the RNG) of saved rank r mod saved_world_size: kFromRankModulo.
      std::vector<std::string> tables{"tok.weight", "bigram.weight"};
      if (size.trigram_buckets > 0) tables.push_back("trigram.weight");
      da.replicated = {"trainer_state/schedulers"};
      for (const auto& kv : module->get_state()) {
        if (std::find(tables.begin(), tables.end(), kv.first) == tables.end())
          da.replicated.push_back("module_interface_state/" + kv.first);
      }
      da.local_state_on_resize = ackpt::LocalStateOnResize::kFromRankModulo;
      shards = std::make_unique<RowShards>(tables, pg);
      backend = std::make_shared<ResizableBackend>(pg);
    } else {
      backend = std::make_shared<ackpt::DistributedBackend>(pg);
    }
    dist = std::make_unique<ackpt::DistributedCheckpointer>(da);
  } else {
    single = std::make_unique<ackpt::DefaultCheckpointer>(ca);
  }
  auto checkpointer = std::make_shared<DemoCheckpointer>(
      std::move(single), std::move(dist), o.sync, module.get(), ca.file_prefix, std::move(shards));
  ackpt::TrainerArguments ta;
  ta.epochs = module->epochs();
  ta.log_level = "WARN";
  ta.clip_grads = true;
  ta.max_grad_norm = 1.0;
  ackpt::Trainer trainer(module, ta, backend, checkpointer);

  // What was resumed, from the checkpoint itself (the Trainer may restore
  // its state lazily, when train() starts).
  const std::string loaded = checkpointer->loaded_path();
  const ackpt::Checkpoint& resumed = trainer.checkpointed_states();
  int64_t start_step = 0;
  std::string tier_line;  // two tiers: which tier the resume came from (the per-rank summary)
  if (!loaded.empty() && !resumed.empty()) {
    start_step = resumed.trainer_backend_state.at("global_step_completed").to_int();
    const int64_t e = resumed.trainer_state.at("last_epoch").to_int();
    // Window e ends at step (e + 1) * K. A periodic checkpoint is at most
    // that; a preemption checkpoint lies inside window e + 1.
    if (start_step <= e * o.checkpoint_every || start_step > (e + 2) * o.checkpoint_every) {
      throw ackpt::Error::InvalidArgument(fmt::format(
          "the checkpoint {} (step {}, window {}) was written with another --checkpoint-every; "
          "resume with that one",
          loaded, start_step, e));
    }
    const auto index =
        o.world > 1
            ? ackpt::ParseManifestIndex(ackpt::BaseName(loaded), ca.file_prefix)
            : ackpt::ParseCheckpointIndex(ackpt::BaseName(loaded), ca.file_prefix, ca.file_ext);
    fmt::print("resuming from checkpoint index {} (step {}, {})\n", index ? *index : -1, start_step,
               loaded);
    if (!o.local_dir.empty()) {
      tier_line = fmt::format("resumed step {} from the {} tier", start_step,
                              ackpt::TierName(checkpointer->loaded_tier()));
      if (const ackpt::DistributedCheckpointer* d = checkpointer->dist()) {
        const ackpt::DistributedLoadInfo info = d->last_load_info();
        tier_line = fmt::format("rank {}: {}", o.rank, tier_line);
        if (info.tier == ackpt::Tier::kLocal && o.rank == 0) {
          // Rank 0 learned where every part came from (the same list on every rank).
          std::vector<std::string> from;
          for (size_t p = 0; p < info.part_holders.size(); ++p) {
            from.push_back(info.part_holders[p] == static_cast<int>(p)
                               ? fmt::format("{}: own", p)
                               : fmt::format("{}: rank {}'s replica", p, info.part_holders[p]));
          }
          fmt::print("local tier: part of rank {}\n", fmt::join(from, ", part of rank "));
        }
        if (info.restored_from_replica) {
          const int holder = static_cast<size_t>(o.rank) < info.part_holders.size()
                                 ? info.part_holders[static_cast<size_t>(o.rank)]
                                 : -1;
          // The bytes count every file this rank received to load: its own
          // part, and the parts holding replicated tensors it reads.
          tier_line += fmt::format(
              "; part restored from rank {}'s replica ({} received from peers' local tiers)",
              holder, Bytes(static_cast<double>(info.bytes_transferred)));
        }
      }
      fmt::print("{}\n", tier_line);
    }
    if (const ackpt::DistributedCheckpointer* d = checkpointer->dist()) {
      const ackpt::DistributedLoadInfo info = d->last_load_info();
      fmt::print(
          "rank {} of {}: loaded index {} saved by {} ranks; rank-local state from saved rank {}; "
          "sharded tensors: read {} of slabs for {} of row boxes\n",
          o.rank, o.world, info.index, info.saved_world_size, info.local_state_from_rank,
          Bytes(static_cast<double>(info.sharded_bytes_read)),
          Bytes(static_cast<double>(info.sharded_bytes_needed)));
      if (const RowShards* rs = checkpointer->shards())
        fmt::print("rank {}: sharded tables and AdamW moments loaded, digest {}\n", o.rank,
                   rs->loaded_digest());
      if (info.saved_world_size != o.world && info.local_state_from_rank != o.rank) {
        // This rank took another rank's RNG (kFromRankModulo) and would draw
        // that rank's batches: give it a data order of its own.
        trainer.restore();
        torch::manual_seed(static_cast<uint64_t>(o.seed) + 1000 * static_cast<uint64_t>(o.rank) +
                           7919 * static_cast<uint64_t>(start_step) + 1);
        fmt::print("rank {}: data order reseeded (its RNG was saved rank {}'s)\n", o.rank,
                   info.local_state_from_rank);
      }
    }
  } else if (o.resume) {
    if (o.local_dir.empty()) {
      fmt::print("no checkpoint in {}: starting from step 0\n", o.save_dir);
    } else {
      fmt::print("no checkpoint in {} or {}: starting from step 0\n", ca.local_tier.dir,
                 o.save_dir);
    }
  }
  std::fflush(stdout);

  const int my_rank = std::max(o.rank, 0);
  if (guard || o.die_at_step >= 0) {
    module->set_step_hook([&](int64_t step) {
      // Between steps: a preemption request stops training after this step.
      if (guard && guard->requested()) trainer.request_stop();
      if (step == o.die_at_step && my_rank == o.die_rank) {
        // Tests (--die-at-step): a node lost at a known point. Every save
        // so far is made durable first, so the test knows the newest
        // checkpoint; then no destructor, no drain: SIGKILL.
        checkpointer->inner().wait();
        Print("rank {}: --die-at-step {}: saves so far are durable; SIGKILL\n", my_rank, step);
        ::kill(::getpid(), SIGKILL);
      }
    });
  }
  g_trainer.store(&trainer);
  struct sigaction sa {};
  sa.sa_handler = OnSigint;
  sa.sa_flags = SA_RESETHAND | SA_RESTART;  // a second Ctrl-C kills
  sigaction(SIGINT, &sa, nullptr);
  if (!guard) sigaction(SIGTERM, &sa, nullptr);  // without preemption: stop like Ctrl-C

  module->reset_clock();
  const auto t0 = Clock::now();
  trainer.train();
  const double train_seconds = Seconds(Clock::now() - t0);
  g_trainer.store(nullptr);
  signal(SIGINT, SIG_DFL);
  if (!guard) signal(SIGTERM, SIG_DFL);

  // Preempted: save the step reached (force = true: durable when it
  // returns, within the grace period), then exit with kPreemptedExitCode.
  bool preempted = false;
  if (guard && trainer.interrupted() && guard->requested()) {
    const int64_t step = trainer.global_steps_finished();
    preempted = guard->SaveIfRequested(
        *checkpointer,
        [&] {
          ackpt::Checkpoint c;  // what Trainer::save_checkpoint() saves
          c.module_interface_state = module->get_state();
          c.trainer_state = trainer.get_state();
          c.trainer_backend_state = trainer.trainer_backend().get_state();
          c.metrics = trainer.metrics();
          return c;
        },
        step);
    Print("preempted by {} at step {}: {} is durable ({:.1f} ms); exiting with status {}\n",
          guard->signal_number() == SIGTERM   ? "SIGTERM"
          : guard->signal_number() == SIGUSR1 ? "SIGUSR1"
                                              : fmt::format("signal {}", guard->signal_number()),
          step, checkpointer->saved_name(step), guard->save_seconds() * 1e3,
          ackpt::kPreemptedExitCode);
  } else if (trainer.interrupted()) {
    Print("interrupted: waiting for pending saves\n");
  } else if (guard && guard->requested()) {
    Print("preemption requested after the last step: training is complete\n");
  }
  checkpointer->inner().wait();  // every save durable before the summary
  if (const RowShards* rs = checkpointer->shards()) {
    // The whole tables and moments as the last checkpoint holds them (a
    // resume of it prints the same digest after its load).
    ackpt::Checkpoint c;
    c.module_interface_state = module->get_state();
    c.trainer_state = trainer.get_state();
    fmt::print("rank {}: sharded tables and AdamW moments at step {}: digest {}\n", o.rank,
               trainer.global_steps_finished(), rs->Digest(std::move(c)));
  }

  // ---- summary ----
  const int64_t steps_done = trainer.global_steps_finished() - start_step;
  double periodic_sum = 0, periodic_max = 0, final_stall = 0;
  int periodic = 0, forced = 0;
  int64_t newest = -1;
  for (const auto& r : checkpointer->records()) {
    newest = std::max(newest, r.step);
    if (r.forced) {
      final_stall += r.stall;
      ++forced;
    } else {
      periodic_sum += r.stall;
      periodic_max = std::max(periodic_max, r.stall);
      ++periodic;
    }
  }
  uint64_t bytes = 0, file_bytes = 0;
  double write_sum = 0;
  int written = 0, failed = 0, model_files = 0;
  {
    std::lock_guard<std::mutex> lock(stats_mu);
    for (const auto& s : stats) {
      if (!s.ok) {
        ++failed;
        continue;
      }
      bytes += s.bytes;
      file_bytes += s.file_bytes;
      write_sum += s.write_seconds;
      if (ackpt::ParseCheckpointIndex(ackpt::BaseName(s.path), ca.file_prefix, ca.file_ext) ||
          ackpt::ParsePartFileName(ackpt::BaseName(s.path), ca.file_prefix, ca.file_ext)) {
        ++written;
      } else {
        ++model_files;
      }
    }
  }
  const double final_total = final_stall + checkpointer->model_stall();
  const double total_stall = periodic_sum + final_total;
  auto share = [&](double x) { return train_seconds > 0 ? 100.0 * x / train_seconds : 0.0; };
  fmt::print("\n== summary: {} saves, {} ==\n", o.sync ? "blocking (--sync)" : "asynchronous",
             format);
  if (preempted) {
    fmt::print(
        "preempted:           at step {}; checkpoint of that step saved; exit status {}; "
        "continue with --resume\n",
        trainer.global_steps_finished(), ackpt::kPreemptedExitCode);
  } else if (trainer.interrupted()) {
    fmt::print(
        "interrupted:         at step {}; newest checkpoint: step {}; continue with --resume\n",
        trainer.global_steps_finished(), newest >= 0 ? newest : start_step);
  }
  fmt::print(
      "training:            {} steps in {:.1f} s ({:.0f} ms/step); loss {:.3f}, val_loss {:.3f}\n",
      steps_done, train_seconds,
      steps_done ? 1e3 * train_seconds / static_cast<double>(steps_done) : 0.0, module->last_loss(),
      module->last_val());
  fmt::print("checkpoints written: {} + {} model file{}{}\n", written, model_files,
             model_files == 1 ? "" : "s", failed ? fmt::format(", {} FAILED", failed) : "");
  if (periodic > 0) {
    fmt::print("stall per save:      mean {:.1f} ms, max {:.1f} ms (time inside save())\n",
               1e3 * periodic_sum / periodic, 1e3 * periodic_max);
  }
  if (forced > 0) {
    fmt::print(
        "final save:          {:.1f} ms (force = true: returns once durable) + {:.1f} ms model "
        "file\n",
        1e3 * final_stall, 1e3 * checkpointer->model_stall());
  }
  if (written + model_files > 0) {
    fmt::print(
        "background write:    mean {:.1f} ms per file (hash, compress, write, fsync, rename)\n",
        1e3 * write_sum / (written + model_files));
  }
  fmt::print("bytes written:       {} on disk for {} of tensors, compression ratio {:.2f}\n",
             Bytes(static_cast<double>(file_bytes)), Bytes(static_cast<double>(bytes)),
             file_bytes ? static_cast<double>(bytes) / static_cast<double>(file_bytes) : 1.0);
  fmt::print(
      "checkpoint stall:    {:.2f} s of {:.1f} s training = {:.1f} % (periodic saves {:.1f} "
      "%, final save {:.1f} %)\n",
      total_stall, train_seconds, share(total_stall), share(periodic_sum), share(final_total));
  if (o.incremental) {
    const ackpt::CheckpointerCounters n = checkpointer->counters();
    fmt::print("incremental:         {} tensors ({}) referenced instead of copied and written\n",
               n.tensors_referenced, Bytes(static_cast<double>(n.bytes_referenced)));
  }
  fmt::print("kept (retention):    {}", checkpointer->kept());
  // Two tiers: one line of what moved between them.
  std::string tiers;
  if (!o.local_dir.empty()) {
    const ackpt::CheckpointerCounters n = checkpointer->counters();
    tiers = fmt::format("promotions {} completed, {} skipped, {} failed ({} promoted)",
                        n.promotions_completed, n.promotions_skipped, n.promotions_failed,
                        Bytes(static_cast<double>(n.bytes_promoted)));
    if (o.world > 1) {
      tiers += fmt::format("; replications {} completed, {} failed ({} received)",
                           n.replications_completed, n.replications_failed,
                           Bytes(static_cast<double>(n.bytes_replicated)));
    }
    fmt::print("\nkept (local tier):   {}", checkpointer->local_kept());
    fmt::print("\ntiers:               {}", tiers);
    const std::string error = checkpointer->promotion_error();
    if (!error.empty()) fmt::print("\nlast promotion error: {}", error);
  }
  if (o.local_dir.empty()) {
    fmt::print("\nfiles:               ackpt ls {}\n", o.save_dir);
  } else {
    // Both tiers, and with --nproc which directory holds each part.
    fmt::print("\nfiles:               ackpt ls {} --local-dir '{}'\n", o.save_dir,
               ca.local_tier.dir);
  }
  if (o.world > 1) {
    // For the launcher's per-rank table (with two tiers, a second line).
    std::string line = fmt::format(
        "rank {}: {} saves, stall mean {:.1f} ms, max {:.1f} ms; {} written ({} of tensors)\n",
        o.rank, periodic, periodic ? 1e3 * periodic_sum / periodic : 0.0, 1e3 * periodic_max,
        Bytes(static_cast<double>(file_bytes)), Bytes(static_cast<double>(bytes)));
    if (!o.local_dir.empty()) {
      line +=
          fmt::format("rank {}: {}{}\n", o.rank, tiers,
                      tier_line.empty() ? "" : "; " + tier_line.substr(tier_line.find(':') + 2));
    }
    std::ofstream(fmt::format("{}/.demo-summary-rank{}", o.save_dir, o.rank)) << line;
  }
  if (preempted) return ackpt::kPreemptedExitCode;
  return trainer.interrupted() ? 130 : 0;
}

// --nproc N: starts N ranks of this program on 127.0.0.1 (rank 0 prints to
// the terminal, rank r > 0 to {save-dir}/.demo-rank{r}.log), forwards
// SIGINT/SIGTERM to them, and when one rank dies (kill -9) ends the others,
// as a job launcher does. Then prints each rank's summary line.
std::atomic<int> g_forward_signal{0};
void OnLauncherSignal(int sig) { g_forward_signal.store(sig); }

int Launch(const Options& o, int argc, char** argv) {
  std::filesystem::create_directories(o.save_dir);
  const std::string store = fmt::format("{}/.demo-store-{}", o.save_dir, ::getpid());
  std::filesystem::remove(store);
  for (int r = 0; r < o.nproc; ++r)
    std::filesystem::remove(fmt::format("{}/.demo-summary-rank{}", o.save_dir, r));
  fmt::print(
      "ackpt demo: launching {} ranks (Gloo on 127.0.0.1, FileStore {}); ranks 1..{} log to "
      "{}/.demo-rank<r>.log\n",
      o.nproc, store, o.nproc - 1, o.save_dir);
  std::fflush(stdout);
  std::vector<pid_t> pids(static_cast<size_t>(o.nproc), -1);
  for (int r = 0; r < o.nproc; ++r) {
    std::vector<std::string> args(argv, argv + argc);
    for (const auto& a : {std::string("--rank"), std::to_string(r), std::string("--world"),
                          std::to_string(o.nproc), std::string("--store"), store}) {
      args.push_back(a);
    }
    std::vector<char*> cargs;
    for (auto& a : args) cargs.push_back(a.data());
    cargs.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    const std::string log = fmt::format("{}/.demo-rank{}.log", o.save_dir, r);
    if (r > 0) {
      posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      posix_spawn_file_actions_adddup2(&fa, 1, 2);
    }
    const int rc = posix_spawn(&pids[static_cast<size_t>(r)], "/proc/self/exe", &fa, nullptr,
                               cargs.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
      throw std::runtime_error(fmt::format("cannot start rank {}: {}", r, std::strerror(rc)));
  }
  signal(SIGINT, OnLauncherSignal);
  signal(SIGTERM, OnLauncherSignal);
  int running = o.nproc, status = 0;
  bool killed_all = false;
  while (running > 0) {
    if (int sig = g_forward_signal.exchange(0)) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, sig);
    }
    for (int r = 0; r < o.nproc; ++r) {
      pid_t& pid = pids[static_cast<size_t>(r)];
      int st = 0;
      if (pid <= 0 || ::waitpid(pid, &st, WNOHANG) != pid) continue;
      pid = -1;
      --running;
      const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      if (code != 0 && status == 0) status = code;
      if (code != 0 && code != ackpt::kPreemptedExitCode && !killed_all) {
        // A rank is gone: the others would wait for it forever.
        fmt::print(stderr, "ackpt demo: rank {} ended with status {}; stopping the other ranks\n",
                   r, code);
        killed_all = true;
        for (pid_t p : pids)
          if (p > 0) ::kill(p, SIGKILL);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::filesystem::remove(store);
  fmt::print("\n== per rank ==\n");
  for (int r = 0; r < o.nproc; ++r) {
    std::ifstream in(fmt::format("{}/.demo-summary-rank{}", o.save_dir, r));
    std::string line;
    fmt::print("{}\n", std::getline(in, line) ? line : fmt::format("rank {}: no summary", r));
    while (std::getline(in, line)) fmt::print("{}\n", line);  // two tiers: a second line
  }
  if (status != 0 && !killed_all) return status;
  return killed_all ? 1 : status;
}

// Usage errors exit with 2, like the ackpt CLI.
constexpr int kExitUsage = 2;

// "--steps: needs an integer >= 1, got '-3'" (CLI11's own range check
// prints the range as doubles).
CLI::Validator IntAtLeast(int64_t min) {
  return CLI::Validator(
      [min](std::string& v) -> std::string {
        size_t used = 0;
        long long n = 0;
        try {
          n = std::stoll(v, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (v.empty() || used != v.size() || n < min) {
          return fmt::format("needs an integer >= {}, got '{}'", min, v);
        }
        return std::string();
      },
      fmt::format("INT>={}", min));
}

CLI::Validator PositiveSeconds() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        size_t used = 0;
        double x = 0;
        try {
          x = std::stod(v, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (v.empty() || used != v.size() || !(x > 0) || !std::isfinite(x)) {
          return fmt::format("needs a number of seconds > 0, got '{}'", v);
        }
        return std::string();
      },
      "SECONDS>0");
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  Options o;
  CLI::App app{
      "ackpt_demo: trains a character-level transformer and checkpoints it asynchronously "
      "through ackpt::Trainer",
      "ackpt_demo"};
  app.option_defaults()->always_capture_default();
  app.add_option("--steps", o.steps, "optimizer steps in total")->check(IntAtLeast(1));
  app.add_option("--checkpoint-every", o.checkpoint_every, "checkpoint every K steps")
      ->check(IntAtLeast(1));
  app.add_option("--save-dir", o.save_dir, "where checkpoints go");
  app.add_option("--compression", o.compression, "file format")
      ->check(CLI::IsMember({"none", "zstd"}));
  app.add_option("--level", o.level, "zstd level")->check(CLI::Range(-7, 22));
  app.add_option("--model-size", o.model_size,
                 "small (4.3M parameters, 52 MB checkpoints) or medium (24M parameters, 290 MB "
                 "checkpoints); tiny is for tests")
      ->check(CLI::IsMember({"tiny", "small", "medium"}));
  app.add_flag("--resume", o.resume,
               "continue from the newest complete checkpoint in --save-dir (without it, ackpt's "
               "files in --save-dir are removed first)");
  app.add_flag("--sync", o.sync, "blocking saves (force = true), for comparison");
  app.add_option("--corpus", o.corpus, "train on FILE instead of /usr/share/common-licenses/*");
  app.add_option("--threads", o.threads, "LibTorch intra-op threads (0: LibTorch's default)")
      ->check(IntAtLeast(0));
  app.add_option("--writer-threads", o.writer_threads, "checkpoint writer threads")
      ->check(IntAtLeast(1));
  app.add_option("--log-every", o.log_every,
                 "also print the loss every N steps (0: at checkpoints only)")
      ->check(IntAtLeast(0));
  app.add_option("--keep-last", o.keep_last,
                 "keep the N newest checkpoints plus the best by val_loss; 0 = keep all")
      ->check(IntAtLeast(0));
  app.add_option("--seed", o.seed, "model init and data order")->check(IntAtLeast(0));
  app.add_option("--decay-step", o.decay_step,
                 "multiply the learning rate by 0.3 every N steps (StepLR; 0: 2/3 of --steps). "
                 "Give the same N to runs resumed with another --steps to keep the schedule")
      ->check(IntAtLeast(0));
  bool no_preemption = false;
  app.add_flag("--no-preemption", no_preemption,
               "do not treat SIGTERM/SIGUSR1 as preemption (default: on: finish the step, save "
               "it with force = true within --grace-period, exit with status 75; without it "
               "SIGTERM stops like Ctrl-C: drain pending saves, exit 130)");
  app.add_option("--grace-period", o.grace_period,
                 "seconds after SIGTERM/SIGUSR1 within which the preemption checkpoint must be "
                 "durable (else exit 76 at once)")
      ->check(PositiveSeconds());
  app.add_option("--nproc", o.nproc,
                 "train data-parallel on N ranks on this machine (Gloo on 127.0.0.1, a "
                 "FileStore), checkpointing through ackpt::DistributedCheckpointer")
      ->check(IntAtLeast(1));
  app.add_flag("--shard", o.shard,
               "with --nproc: checkpoint the embedding tables and their AdamW moments as row "
               "shards (each rank writes its rows; --resume on another --nproc reshards)");
  app.add_option("--local-dir", o.local_dir,
                 "two tiers: save every checkpoint into DIR (node-local storage; with --nproc: "
                 "DIR/rank<r>, one \"node\" per rank, each rank's part also replicated to rank "
                 "r+1's) and promote every --persist-every-th to --save-dir in the background");
  app.add_option("--persist-every", o.persist_every,
                 "with --local-dir: every K-th checkpoint (steps that are multiples of K x "
                 "--checkpoint-every) is also copied to --save-dir")
      ->check(IntAtLeast(1));
  app.add_option("--local-keep", o.local_keep,
                 "with --local-dir: the local tier keeps the N newest checkpoints; 0 = keep all")
      ->check(IntAtLeast(0));
  app.add_option("--promote-mib-per-s", o.promote_mib_per_s,
                 "with --local-dir: cap on the promotion copy rate (MiB/s); 0 = no cap")
      ->check(CLI::NonNegativeNumber);
  // Tests: rank --die-rank SIGKILLs itself after step --die-at-step, once its saves are durable.
  app.add_flag("--freeze-embeddings", o.freeze_embeddings,
               "fine-tuning: freeze the embedding tables (most of the parameters)");
  app.add_flag("--incremental", o.incremental,
               "incremental checkpoints: reference tensors unchanged since the last save");
  app.add_option("--full-every", o.full_every,
                 "with --incremental: every N-th save writes every tensor (0: only the first)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--die-at-step", o.die_at_step)->group("");
  app.add_option("--die-rank", o.die_rank)->group("");
  // Set by the --nproc launcher for the ranks it starts.
  app.add_option("--rank", o.rank)->group("");
  app.add_option("--world", o.world)->group("");
  app.add_option("--store", o.store)->group("");
  app.footer(
      "exit status: 0 done, 1 error, 2 usage error, 75 preempted (checkpoint saved; continue "
      "with --resume), 76 preempted but the grace period ran out, 130 stopped by Ctrl-C");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }
  o.preemption = !no_preemption;
  if (o.shard && o.nproc < 2) {
    fmt::print(stderr, "--shard: needs --nproc 2 or more\n");
    return kExitUsage;
  }
  for (const char* flag : {"--persist-every", "--local-keep", "--promote-mib-per-s"}) {
    if (o.local_dir.empty() && app.count(flag) > 0) {
      fmt::print(stderr, "{}: needs --local-dir\n", flag);
      return kExitUsage;
    }
  }
  try {
    if (o.nproc > 1 && o.rank < 0) return Launch(o, argc, argv);
    return Run(o);
  } catch (const std::exception& e) {
    fmt::print(stderr, "ackpt_demo: {}\n", e.what());
    return 1;
  }
}
