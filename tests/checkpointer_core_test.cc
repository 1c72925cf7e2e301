// What both checkpointers share (src/checkpointer/checkpointer_core.h): the
// same validation and errors, the snapshot fence, resuming in place through
// LoadTargets (allocations counted), and the defects found by a program
// built from the README: one directory spelled twice, the warning naming a
// skipped file, LBFGS through the Trainer. DistributedCheckpointer runs here
// on a one-rank Gloo group in this process.
#include <c10/core/CPUAllocator.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <sstream>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "ackpt/ackpt.h"
#include "ackpt/distributed.h"
#include "ackpt/trainer.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::CatchError;

using testing::TempDir;

// A one-rank Gloo group over a FileStore in `dir`.
struct OneRank {
  explicit OneRank(const std::string& dir) {
    store = c10::make_intrusive<c10d::FileStore>(dir + "/store", 1);
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(20));
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, 0, 1, opts);
  }
  DistributedCheckpointerArguments Args(const DefaultCheckpointerArguments& a) const {
    DistributedCheckpointerArguments d;
    d.checkpointer = a;
    d.process_group = pg;
    d.store = store;
    return d;
  }
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> pg;
};

DefaultCheckpointerArguments Quiet(const std::string& dir) {
  DefaultCheckpointerArguments a;
  a.save_dir = dir;
  a.model_state_save_dir = "";
  a.fsync = false;
  a.log_level = "OFF";
  return a;
}

TEST(CheckpointerCoreTest, ValidationErrorsAreIdenticalForBothCheckpointers) {
  TempDir dir;
  OneRank group(dir.path());
  const std::vector<std::pair<const char*, std::function<void(DefaultCheckpointerArguments*)>>>
      bad = {
          {"period", [](auto* a) { a->period = 0; }},
          {"file_prefix", [](auto* a) { a->file_prefix = "a/b"; }},
          {"file_ext", [](auto* a) { a->file_ext = ".x"; }},
          {"writer_threads", [](auto* a) { a->writer_threads = -1; }},
          {"snapshot_threads", [](auto* a) { a->snapshot_threads = -2; }},
          {"drain_timeout_seconds", [](auto* a) { a->drain_timeout_seconds = -1; }},
          {"keep_best", [](auto* a) { a->retention.keep_best = 2; }},
          {"retention", [](auto* a) { a->retention.keep_last = -1; }},
          {"log_level", [](auto* a) { a->log_level = "LOUD"; }},
          {"chunk", [](auto* a) { a->chunk_size = 1; }},
          {"level", [](auto* a) { a->zstd_level = 1000; }},
      };
  for (const auto& [field, mutate] : bad) {
    SCOPED_TRACE(field);
    DefaultCheckpointerArguments a = Quiet(dir.file("ck"));
    mutate(&a);
    const Error single = CatchError([&] { DefaultCheckpointer c(a); });
    const Error distributed = CatchError([&] { DistributedCheckpointer c(group.Args(a)); });
    EXPECT_EQ(single.code(), Error::Code::kInvalidArgument);
    EXPECT_EQ(distributed.code(), single.code());
    EXPECT_EQ(std::string(distributed.what()), single.what());
    EXPECT_NE(std::string(single.what()).find(field), std::string::npos) << single.what();
  }
}

// ---- a module with one large parameter ------------------------------------------------

struct WideImpl : torch::nn::Module {
  explicit WideImpl(int64_t rows) {
    table = register_parameter("table", torch::randn({rows, 1024}) * 0.01);
    head = register_module("head", torch::nn::Linear(1024, 1));
  }
  torch::Tensor forward(torch::Tensor idx) { return head(table.index_select(0, idx)).squeeze(1); }
  torch::Tensor table;
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Wide);

enum class Opt { kSgd, kAdam, kLbfgs };

class WideModule : public ModuleInterface {
 public:
  WideModule(Wide w, Opt opt, int64_t batches = 2)
      : ModuleInterface(w), w_(w), opt_(opt), batches_(batches) {}
  int64_t num_train_batches(int64_t) override { return batches_; }
  // Deterministic in (epoch, batch): an LBFGS closure evaluates the same batch again.
  torch::Tensor train_step(int64_t, int64_t epoch, int64_t batch) override {
    const int64_t rows = w_->table.size(0);
    torch::Tensor idx = (torch::arange(8) * 37 + epoch * 11 + batch * 5) % rows;
    torch::Tensor y = torch::sin(idx.to(torch::kFloat));
    return torch::mse_loss(w_->forward(idx), y);
  }
  OptimizersSchedulers get_optimizers_schedulers(int64_t, int64_t) override {
    OptimizersSchedulers os;
    switch (opt_) {
      case Opt::kSgd:
        os.optimizers.push_back(
            std::make_shared<torch::optim::SGD>(w_->parameters(), torch::optim::SGDOptions(0.1)));
        break;
      case Opt::kAdam:
        os.optimizers.push_back(std::make_shared<torch::optim::Adam>(
            w_->parameters(), torch::optim::AdamOptions(1e-3)));
        break;
      case Opt::kLbfgs:
        os.optimizers.push_back(std::make_shared<torch::optim::LBFGS>(
            w_->parameters(), torch::optim::LBFGSOptions(0.5).max_iter(4)));
        break;
    }
    return os;
  }
  Wide w_;
  Opt opt_;
  int64_t batches_;
};

TrainerArguments TrainerArgs(const DefaultCheckpointerArguments& c, int64_t epochs) {
  TrainerArguments a;
  a.epochs = epochs;
  a.log_level = "OFF";
  a.clip_grads = false;
  a.checkpointer_args = c;
  return a;
}

// ---- the snapshot fence under DistributedCheckpointer ---------------------------------

TEST(CheckpointerCoreTest, DistributedFenceKeepsOverlappedSnapshotsWholeWhileTheOptimizerSteps) {
  TempDir dir;
  OneRank group(dir.path());
  DefaultCheckpointerArguments c = Quiet(dir.file("ck"));
  c.overlap_snapshot = true;
  c.compression = Compression::kNone;
  torch::manual_seed(0);
  auto m = std::make_shared<WideModule>(Wide(8192), Opt::kAdam);  // 32 MiB table
  auto ck = std::make_shared<DistributedCheckpointer>(group.Args(c));
  Trainer t(m, TrainerArgs(c, 6), nullptr, ck);
  // Without the fence the optimizer's first in-place step of the next epoch
  // races the copy of the save before it: torn, and raised by the next save().
  t.train();
  const CheckpointerCounters n = ck->counters();
  EXPECT_EQ(n.saves_torn, 0u);
  EXPECT_EQ(n.saves_failed, 0u);
  EXPECT_GE(n.saves_completed, 6u);
}

// ---- resuming in place, counted --------------------------------------------------------

// Counts CPU allocations of at least `min_bytes` while installed.
class CountingAllocator final : public c10::Allocator {
 public:
  CountingAllocator(c10::Allocator* base, size_t min_bytes) : base_(base), min_(min_bytes) {}
  c10::DataPtr allocate(size_t n) const override {
    if (n >= min_) ++count_;
    return base_->allocate(n);
  }
  c10::DeleterFnPtr raw_deleter() const override { return base_->raw_deleter(); }
  int count() const { return count_.load(); }

 private:
  c10::Allocator* base_;
  size_t min_;
  mutable std::atomic<int> count_{0};
};

class ScopedCountingAllocator {
 public:
  explicit ScopedCountingAllocator(size_t min_bytes)
      : base_(c10::GetCPUAllocator()), counting_(base_, min_bytes) {
    c10::SetCPUAllocator(&counting_, /*priority=*/100);
  }
  ~ScopedCountingAllocator() { c10::SetCPUAllocator(base_, /*priority=*/100); }
  int count() const { return counting_.count(); }

 private:
  c10::Allocator* base_;
  CountingAllocator counting_;
};

void ExpectResumeInPlace(const std::function<std::shared_ptr<AbstractCheckpointer>()>& make,
                         const DefaultCheckpointerArguments& c) {
  constexpr int64_t kRows = 2048;  // 8 MiB: nothing else of the state is this large
  torch::manual_seed(0);
  {
    auto m = std::make_shared<WideModule>(Wide(kRows), Opt::kSgd);
    Trainer t(m, TrainerArgs(c, 2), nullptr, make());
    t.train();
  }
  torch::manual_seed(7);
  auto m = std::make_shared<WideModule>(Wide(kRows), Opt::kSgd);
  void* table = m->w_->table.data_ptr();
  int big_allocations = -1;
  std::unique_ptr<Trainer> t;
  {
    ScopedCountingAllocator counting(kRows * 1024 * sizeof(float));
    t = std::make_unique<Trainer>(m, TrainerArgs(c, 3), nullptr, make());
    big_allocations = counting.count();
  }
  EXPECT_EQ(big_allocations, 0) << "the module's table was allocated again on resume";
  EXPECT_EQ(m->w_->table.data_ptr(), table);
  const StateDict& loaded = t->checkpointed_states().module_interface_state;
  ASSERT_TRUE(loaded.contains("table"));
  EXPECT_EQ(loaded.at("table").tensor().data_ptr(), table);
  EXPECT_EQ(t->last_epoch(), 1);
  t->train();
  EXPECT_EQ(t->last_epoch(), 2);
}

TEST(CheckpointerCoreTest, TrainerResumesInPlaceUnderDefaultCheckpointer) {
  TempDir dir;
  for (Compression comp : {Compression::kNone, Compression::kZstd}) {
    SCOPED_TRACE(static_cast<int>(comp));
    DefaultCheckpointerArguments c = Quiet(dir.file("ck" + std::to_string(static_cast<int>(comp))));
    c.compression = comp;
    ExpectResumeInPlace([c] { return std::make_shared<DefaultCheckpointer>(c); }, c);
  }
}

TEST(CheckpointerCoreTest, TrainerResumesInPlaceUnderDistributedCheckpointer) {
  TempDir dir;
  OneRank group(dir.path());
  for (Compression comp : {Compression::kNone, Compression::kZstd}) {
    SCOPED_TRACE(static_cast<int>(comp));
    DefaultCheckpointerArguments c = Quiet(dir.file("ck" + std::to_string(static_cast<int>(comp))));
    c.compression = comp;
    ExpectResumeInPlace(
        [&group, c] { return std::make_shared<DistributedCheckpointer>(group.Args(c)); }, c);
  }
}

// ---- defects found by a program built from the README ------------------------------------

TEST(CheckpointerCoreTest, TrainerResumesWhenModelDirIsSaveDirSpelledDifferently) {
  TempDir dir;
  for (const std::string& model_dir :
       {dir.file("ck"), dir.file("ck/"), dir.path() + "/./ck", dir.path() + "/x/../ck"}) {
    SCOPED_TRACE(model_dir);
    std::filesystem::remove_all(dir.file("ck"));
    DefaultCheckpointerArguments c = Quiet(dir.file("ck"));
    c.model_state_save_dir = model_dir;
    torch::manual_seed(0);
    {
      Trainer t(std::make_shared<WideModule>(Wide(64), Opt::kSgd), TrainerArgs(c, 2));
      t.train();
    }
    EXPECT_TRUE(Env::Default()->FileExists(dir.file("ck/model_model_1.safetensors.zst")));
    Trainer t(std::make_shared<WideModule>(Wide(64), Opt::kSgd), TrainerArgs(c, 3));
    EXPECT_EQ(t.last_epoch(), 1) << "a new Trainer on the same directory resumes";
    EXPECT_EQ(t.global_steps_finished(), 4);
    t.train();
    EXPECT_EQ(t.last_epoch(), 2);
    EXPECT_EQ(t.global_steps_finished(), 6) << "only epoch 2 was trained";
  }
}

TEST(CheckpointerCoreTest, LoadWarnsNamingEverySkippedFileAndWhy) {
  TempDir dir;
  DefaultCheckpointerArguments a = Quiet(dir.path());
  {
    DefaultCheckpointer c(a);
    for (int i = 0; i < 3; ++i) {
      Checkpoint k;
      k.module_interface_state.set("w", torch::randn({256, 256}));
      c.save(k, i, /*force=*/true);
    }
  }
  const std::string truncated = dir.file("model_2.safetensors.zst");
  std::filesystem::resize_file(truncated, std::filesystem::file_size(truncated) / 2);
  std::ostringstream out;
  a.logger = std::make_shared<spdlog::logger>(
      "warn-test", std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  a.log_level = "INFO";
  DefaultCheckpointer c(a);
  ASSERT_FALSE(c.load().empty());
  EXPECT_EQ(c.last_loaded_path(), dir.file("model_1.safetensors.zst"));
  const std::string log = out.str();
  const size_t at = log.find("skipping unreadable checkpoint " + truncated + ": ");
  ASSERT_NE(at, std::string::npos) << log;
  EXPECT_NE(log.find("[warning]"), std::string::npos) << log;
  // ... and why: the reader's reason follows the name.
  EXPECT_GT(log.find('\n', at) - at,
            ("skipping unreadable checkpoint " + truncated + ": ").size() + 8)
      << log;
}

TEST(CheckpointerCoreTest, LbfgsStepsThroughTheTrainerAndResumesExactly) {
  TempDir dir;
  // Trains to 4 epochs, with a new Trainer (resuming) after each of `stops`.
  auto run = [&](const std::string& sub, const std::vector<int64_t>& stops, double* before,
                 double* after) {
    DefaultCheckpointerArguments c = Quiet(dir.file(sub));
    c.compression = Compression::kNone;
    torch::manual_seed(0);
    std::shared_ptr<WideModule> m;
    for (int64_t e : stops) {
      m = std::make_shared<WideModule>(Wide(64), Opt::kLbfgs, /*batches=*/3);
      if (before != nullptr && e == stops.front()) {
        torch::NoGradGuard no_grad;
        *before = m->train_step(0, 0, 0).item<double>();
      }
      Trainer t(m, TrainerArgs(c, e));
      t.train();
      EXPECT_EQ(t.last_epoch(), e - 1);
    }
    if (after != nullptr) {
      torch::NoGradGuard no_grad;
      *after = m->train_step(0, 0, 0).item<double>();
    }
    return ModuleState(m->module());
  };
  double before = 0, after = 0;
  const StateDict straight = run("straight", {4}, &before, &after);
  EXPECT_LT(after, before) << "LBFGS trained";
  const StateDict resumed = run("resumed", {1, 3, 4}, nullptr, nullptr);
  std::string why;
  EXPECT_TRUE(ExactlyEqual(straight, resumed, &why)) << why;
}

}  // namespace
}  // namespace ackpt
