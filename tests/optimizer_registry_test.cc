// The optimizer and scheduler registries: user-defined types registered
// through the public templates, the field codecs, and the errors that tell
// users what to do.
#include "ackpt/optimizer_registry.h"

#include <torch/torch.h>

#include "ackpt/error.h"
#include "ackpt/format.h"
#include "ackpt/torch_state.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::Contains;

using testing::TempDir;

// A small optimizer with fields of many kinds: sign descent on a momentum,
// scaled by a per-parameter factor that decays while the step count is below
// `warmup`, and a short history of past updates.
using Betas = std::tuple<double, double>;

struct TestOptions : torch::optim::OptimizerCloneableOptions<TestOptions> {
  explicit TestOptions(double lr = 0.01) : lr_(lr) {}
  TORCH_ARG(double, lr);
  TORCH_ARG(Betas, betas) = std::make_tuple(0.9, 0.99);
  TORCH_ARG(c10::optional<double>, clip) = c10::nullopt;
  TORCH_ARG(int32_t, warmup) = 2;
  TORCH_ARG(std::string, mode) = "sign";

 public:
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

struct TestState : torch::optim::OptimizerCloneableParamState<TestState> {
  TORCH_ARG(int32_t, step) = 0;
  TORCH_ARG(float, scale) = 1.0f;
  TORCH_ARG(torch::Tensor, momentum);
  TORCH_ARG(torch::Tensor, last_update) = {};        // undefined before the second step
  TORCH_ARG(std::deque<torch::Tensor>, history);     // the last two updates
  TORCH_ARG(std::vector<int64_t>, sign_flips) = {};  // per step, how many signs changed
};

class TestOptimizer : public torch::optim::Optimizer {
 public:
  TestOptimizer(std::vector<torch::Tensor> params, TestOptions options)
      : Optimizer({torch::optim::OptimizerParamGroup(std::move(params))},
                  std::make_unique<TestOptions>(options)) {}

  torch::Tensor step(LossClosure closure = nullptr) override {
    torch::NoGradGuard no_grad;
    torch::Tensor loss;
    if (closure) {
      torch::AutoGradMode enable_grad(true);
      loss = closure();
    }
    for (auto& group : param_groups_) {
      const auto& o = static_cast<const TestOptions&>(group.options());
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        auto key = c10::guts::to_string(p.unsafeGetTensorImpl());
        auto& slot = state_[key];
        if (!slot) {
          auto s = std::make_unique<TestState>();
          s->momentum(torch::zeros_like(p));
          slot = std::move(s);
        }
        auto& s = static_cast<TestState&>(*slot);
        s.step(s.step() + 1);
        if (s.step() <= o.warmup()) s.scale(s.scale() * 0.5f);
        s.momentum().mul_(std::get<0>(o.betas())).add_(p.grad(), 1 - std::get<0>(o.betas()));
        torch::Tensor update = s.momentum().sign() * (o.lr() * s.scale());
        if (o.clip()) update.clamp_(-*o.clip(), *o.clip());
        if (s.last_update().defined()) {
          s.sign_flips().push_back((update.sign() != s.last_update().sign()).sum().item<int64_t>());
        }
        p.sub_(update);
        s.last_update(update);
        s.history().push_back(update.clone());
        if (s.history().size() > 2) s.history().pop_front();
      }
    }
    return loss;
  }
};

// Deliberately never registered.
class UnregisteredOptimizer : public TestOptimizer {
 public:
  using TestOptimizer::TestOptimizer;
};

void RegisterTestOptimizer() {
  RegisterOptimizer<TestOptimizer, TestOptions, TestState>(
      "TestOptimizer",
      {ACKPT_ARG(lr), ACKPT_ARG(betas), ACKPT_ARG(clip), ACKPT_ARG(warmup), ACKPT_ARG(mode)},
      {ACKPT_ARG(step),
       // A plain (non-generic) accessor works too.
       Field("scale", [](TestState& s) -> float& { return s.scale(); }), ACKPT_ARG(momentum),
       ACKPT_ARG(last_update).optional(), ACKPT_ARG(history), ACKPT_ARG(sign_flips)});
}

struct Net : torch::nn::Module {
  Net() {
    fc1 = register_module("fc1", torch::nn::Linear(4, 6));
    fc2 = register_module("fc2", torch::nn::Linear(6, 2));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::tanh(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};

void Train(Net& net, torch::optim::Optimizer& opt, int steps, int seed) {
  torch::manual_seed(seed);
  for (int i = 0; i < steps; ++i) {
    torch::Tensor x = torch::randn({5, 4});
    opt.zero_grad();
    torch::mse_loss(net.forward(x), x.narrow(1, 0, 2)).backward();
    opt.step();
  }
}

std::string ErrorOf(const std::function<void()>& f, Error::Code code) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no ackpt::Error thrown";
  return "";
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override { RegisterTestOptimizer(); }  // again each time: replaces, no error
};

TEST_F(RegistryTest, BuiltInsAreRegisteredThroughTheSameMechanism) {
  const auto names = RegisteredOptimizers();
  for (const char* n : {"Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "LBFGS", "TestOptimizer"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  }
  const auto schedulers = RegisteredSchedulers();
  EXPECT_NE(std::find(schedulers.begin(), schedulers.end(), "StepLR"), schedulers.end());
}

TEST_F(RegistryTest, CustomOptimizerResumesBitExactThroughAFile) {
  TempDir dir;
  torch::manual_seed(1);
  Net a;
  TestOptimizer opt_a(a.parameters(), TestOptions(0.05).clip(0.04).warmup(3));
  Train(a, opt_a, 4, 10);
  const StateDict captured = CaptureOptimizer(opt_a, a);
  EXPECT_EQ(captured.at("type").str(), "TestOptimizer");
  const StateDict& group = captured.at("param_groups").list()[0].dict();
  EXPECT_EQ(group.at("clip").to_double(), 0.04);
  EXPECT_EQ(group.at("betas").list()[1].to_double(), 0.99);
  EXPECT_EQ(group.at("mode").str(), "sign");
  const StateDict& w = captured.at("state").dict().at("fc1.weight").dict();
  EXPECT_EQ(w.at("step").to_int(), 4);
  EXPECT_EQ(w.at("scale").to_double(), 0.125);
  EXPECT_EQ(w.at("history").list().size(), 2u);
  EXPECT_EQ(w.at("sign_flips").list().size(), 3u);

  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    WriteOptions wo;
    wo.compression = c;
    const std::string path = dir.file(c == Compression::kNone ? "o.safetensors" : "o.zst");
    WriteStateDict(StateDict{{"model", ModuleState(a)}, {"optimizer", captured}}, path, wo);
    const StateDict loaded = ReadStateDict(path);

    torch::manual_seed(2);
    Net b;
    LoadModuleState(b, loaded.at("model").dict());
    TestOptimizer opt_b(b.parameters(), TestOptions(1.0));  // hyper-parameters come from the file
    RestoreOptimizer(opt_b, b, loaded.at("optimizer").dict());
    std::string why;
    EXPECT_TRUE(ExactlyEqual(captured, CaptureOptimizer(opt_b, b), &why)) << why;

    // Continue both, bit for bit (a's copy is rewound to the checkpoint first).
    Net a2;
    LoadModuleState(a2, ModuleState(a));
    TestOptimizer opt_a2(a2.parameters(), TestOptions());
    RestoreOptimizer(opt_a2, a2, captured);
    Train(a2, opt_a2, 3, 20);
    Train(b, opt_b, 3, 20);
    EXPECT_TRUE(ExactlyEqual(ModuleState(a2), ModuleState(b), &why)) << why;
    EXPECT_TRUE(ExactlyEqual(CaptureOptimizer(opt_a2, a2), CaptureOptimizer(opt_b, b), &why))
        << why;
  }
}

TEST_F(RegistryTest, UnsetOptionalFieldsAreLeftOutAndRestoredUnset) {
  Net a;
  TestOptimizer opt(a.parameters(), TestOptions());
  Train(a, opt, 1, 0);
  const std::string key = c10::guts::to_string(a.fc1->bias.unsafeGetTensorImpl());
  static_cast<TestState&>(*opt.state().at(key)).last_update(torch::Tensor());
  const StateDict s = CaptureOptimizer(opt, a);
  EXPECT_FALSE(s.at("param_groups").list()[0].dict().contains("clip"));
  EXPECT_FALSE(s.at("state").dict().at("fc1.bias").dict().contains("last_update"));
  EXPECT_TRUE(s.at("state").dict().at("fc1.weight").dict().contains("last_update"));

  Net b;
  TestOptimizer restored(b.parameters(), TestOptions().clip(1.0));
  LoadModuleState(b, ModuleState(a));
  RestoreOptimizer(restored, b, s);
  EXPECT_FALSE(static_cast<const TestOptions&>(restored.param_groups()[0].options()).clip());
  const std::string restored_key = c10::guts::to_string(b.fc1->bias.unsafeGetTensorImpl());
  EXPECT_FALSE(
      static_cast<const TestState&>(*restored.state().at(restored_key)).last_update().defined());
}

TEST_F(RegistryTest, UnregisteredOptimizerFailsAtCaptureAndShowsHowToRegister) {
  Net net;
  UnregisteredOptimizer opt(net.parameters(), TestOptions());
  Train(net, opt, 1, 0);
  const std::string msg = ErrorOf([&] { CaptureOptimizer(opt, net); }, Error::Code::kUnsupported);
  EXPECT_TRUE(Contains(msg,
                       "optimizer type ackpt::(anonymous namespace)::UnregisteredOptimizer "
                       "is not registered"))
      << msg;
  EXPECT_TRUE(Contains(msg,
                       "ackpt::RegisterOptimizer<ackpt::(anonymous "
                       "namespace)::UnregisteredOptimizer, ackpt::(anonymous "
                       "namespace)::TestOptions, ackpt::(anonymous namespace)::TestState>("
                       "\"UnregisteredOptimizer\""))
      << msg;
  EXPECT_TRUE(Contains(msg, "registered optimizers: Adam, AdamW, SGD, RMSprop, Adagrad, LBFGS"))
      << msg;
  ErrorOf([&] { OptimizerTypeName(opt); }, Error::Code::kUnsupported);
  // Restoring into it fails the same way, before looking at the state.
  ErrorOf([&] { RestoreOptimizer(opt, net, StateDict{}); }, Error::Code::kUnsupported);
}

TEST_F(RegistryTest, RestoringIntoAnotherTypeNamesBoth) {
  Net net;
  TestOptimizer opt(net.parameters(), TestOptions());
  Train(net, opt, 1, 0);
  torch::optim::Adam adam(net.parameters());
  EXPECT_TRUE(Contains(ErrorOf([&] { RestoreOptimizer(adam, net, CaptureOptimizer(opt, net)); },
                               Error::Code::kInvalidArgument),
                       "optimizer type mismatch: the checkpoint holds TestOptimizer state but "
                       "the optimizer is Adam"));
}

TEST_F(RegistryTest, MalformedFieldsNameThePath) {
  Net net;
  TestOptimizer opt(net.parameters(), TestOptions());
  Train(net, opt, 2, 0);
  const StateDict good = CaptureOptimizer(opt, net);
  TestOptimizer fresh(net.parameters(), TestOptions());
  auto restore_error = [&](const StateDict& s) {
    return ErrorOf([&] { RestoreOptimizer(fresh, net, s); }, Error::Code::kInvalidArgument);
  };

  StateDict wide = good;
  wide.at("param_groups").list()[0].dict().set("warmup", int64_t{1} << 32);
  EXPECT_TRUE(Contains(restore_error(wide),
                       "param_groups[0].warmup = 4294967296 does not fit its field (int32)"));
  StateDict betas = good;
  betas.at("param_groups").list()[0].dict().set("betas", List{0.9, 0.99, 0.5});
  EXPECT_TRUE(
      Contains(restore_error(betas), "param_groups[0].betas must be a list of 2 values, not 3"));
  StateDict mode = good;
  mode.at("param_groups").list()[0].dict().set("mode", 3);
  EXPECT_TRUE(Contains(restore_error(mode), "param_groups[0].mode is an int, not a string"));
  StateDict missing = good;
  missing.at("state").dict().at("fc2.bias").dict().erase("momentum");
  EXPECT_TRUE(Contains(restore_error(missing), "state['fc2.bias'] has no 'momentum'"));
  StateDict shape = good;
  shape.at("state").dict().at("fc2.bias").dict().set("momentum", torch::zeros({3}));
  EXPECT_TRUE(Contains(restore_error(shape),
                       "state['fc2.bias'].momentum has shape [3] but the parameter has shape [2]"));
  StateDict step = good;
  step.at("state").dict().at("fc2.bias").dict().set("step", -(int64_t{1} << 40));
  EXPECT_TRUE(Contains(restore_error(step), "does not fit its field (int32)"));
  EXPECT_TRUE(fresh.state().empty());  // every failed restore changed nothing

  // An undefined tensor in a list, or a required one, fails the capture,
  // naming the field.
  auto& s = static_cast<TestState&>(*opt.state().begin()->second);
  const torch::Tensor kept = s.history()[0];
  s.history()[0] = torch::Tensor();
  EXPECT_TRUE(Contains(ErrorOf([&] { CaptureOptimizer(opt, net); }, Error::Code::kInvalidArgument),
                       ".history holds an undefined tensor or empty optional, which a list cannot "
                       "store"));
  s.history()[0] = kept;
  s.momentum(torch::Tensor());
  EXPECT_TRUE(Contains(ErrorOf([&] { CaptureOptimizer(opt, net); }, Error::Code::kInvalidArgument),
                       ".momentum is an undefined tensor; if it may be unset, mark the field "
                       ".optional()"));
}

// Another optimizer type under a taken name, or the same type under a second
// name, would make checkpoints ambiguous.
TEST_F(RegistryTest, ConflictingRegistrationsAreRejected) {
  const std::string taken = ErrorOf(
      [] { RegisterOptimizer<UnregisteredOptimizer, TestOptions, TestState>("Adam", {}, {}); },
      Error::Code::kInvalidArgument);
  EXPECT_TRUE(Contains(taken,
                       "optimizer name 'Adam' is already registered for "
                       "torch::optim::Adam"))
      << taken;
  const std::string renamed =
      ErrorOf([] { RegisterOptimizer<TestOptimizer, TestOptions, TestState>("Other", {}, {}); },
              Error::Code::kInvalidArgument);
  EXPECT_TRUE(Contains(renamed, "is already registered as 'TestOptimizer'")) << renamed;
  ErrorOf([] { RegisterScheduler<torch::optim::StepLR>(""); }, Error::Code::kInvalidArgument);
}

// A user scheduler deriving from LibTorch's, with state of its own: the
// number of restarts of a cyclic schedule.
class CyclicLR : public torch::optim::LRScheduler {
 public:
  CyclicLR(torch::optim::Optimizer& opt, unsigned period) : LRScheduler(opt), period_(period) {}
  int64_t& restarts() { return restarts_; }

 private:
  std::vector<double> get_lrs() override {
    if (step_count_ > 0 && step_count_ % period_ == 0) ++restarts_;
    const double base = 0.1 / static_cast<double>(1 + restarts_);
    return std::vector<double>(get_current_lrs().size(),
                               base * (1 + (step_count_ % period_)) / period_);
  }
  unsigned period_;
  int64_t restarts_ = 0;
};

class UnregisteredLR : public CyclicLR {
  using CyclicLR::CyclicLR;
};

TEST(SchedulerRegistryTest, UserSchedulerWithStateResumesExactly) {
  RegisterScheduler<CyclicLR>("CyclicLR", {ACKPT_ARG(restarts)});
  Net net;
  torch::optim::SGD opt_a(net.parameters(), 0.1);
  auto a = MakeScheduler<CyclicLR>(opt_a, 3);
  for (int i = 0; i < 7; ++i) a->step();
  const StateDict s = a->get_state();
  EXPECT_EQ(s.at("type").str(), "CyclicLR");
  EXPECT_EQ(s.at("step_count").to_int(), 7);
  EXPECT_EQ(s.at("restarts").to_int(), 2);

  torch::optim::SGD opt_b(net.parameters(), 0.1);
  auto b = MakeScheduler<CyclicLR>(opt_b, 3);
  RestoreOptimizer(opt_b, net, CaptureOptimizer(opt_a, net));
  b->update_state(s);
  for (int i = 0; i < 5; ++i) {
    a->step();
    b->step();
    EXPECT_EQ(opt_a.param_groups()[0].options().get_lr(),
              opt_b.param_groups()[0].options().get_lr());
  }
  EXPECT_EQ(a->get_state().at("restarts").to_int(), 3);
  std::string why;
  EXPECT_TRUE(ExactlyEqual(a->get_state(), b->get_state(), &why)) << why;

  // Bad states name the problem and leave the scheduler as it was.
  StateDict unknown = s;
  unknown.set("warmup", 3);
  EXPECT_TRUE(Contains(ErrorOf([&] { b->update_state(unknown); }, Error::Code::kInvalidArgument),
                       "scheduler state has an unknown entry 'warmup'"));
  StateDict wrong = s;
  wrong.set("restarts", "two");
  EXPECT_TRUE(Contains(ErrorOf([&] { b->update_state(wrong); }, Error::Code::kInvalidArgument),
                       "scheduler state.restarts is a string, not an int"));
  EXPECT_EQ(b->get_state().at("step_count").to_int(), 12);

  torch::optim::StepLR step_lr(opt_b, 2);
  EXPECT_TRUE(
      Contains(ErrorOf([&] { RestoreScheduler(step_lr, s); }, Error::Code::kInvalidArgument),
               "scheduler type mismatch: the checkpoint holds CyclicLR state but the "
               "scheduler is StepLR"));
}

TEST(SchedulerRegistryTest, UnregisteredSchedulerShowsHowToRegister) {
  Net net;
  torch::optim::SGD opt(net.parameters(), 0.1);
  UnregisteredLR lr(opt, 3);
  const std::string msg = ErrorOf([&] { CaptureScheduler(lr); }, Error::Code::kUnsupported);
  EXPECT_TRUE(Contains(msg,
                       "LR scheduler type ackpt::(anonymous namespace)::UnregisteredLR is "
                       "not registered"))
      << msg;
  EXPECT_TRUE(Contains(msg,
                       "ackpt::RegisterScheduler<ackpt::(anonymous "
                       "namespace)::UnregisteredLR>(\"UnregisteredLR\""))
      << msg;
}

}  // namespace
}  // namespace ackpt
