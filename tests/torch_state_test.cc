// Capture and restore of module, optimizer, scheduler and RNG state.
#include "ackpt/torch_state.h"

#include <torch/torch.h>

#include "ackpt/error.h"
#include "ackpt/format.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::Contains;

using testing::TempDir;

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(6, 8));
    bn = register_module("bn", torch::nn::BatchNorm1d(8));
    fc2 = register_module("fc2", torch::nn::Linear(8, 3));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::relu(bn(fc1(x)))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};
TORCH_MODULE(Net);

Net MakeNet(int seed) {
  torch::manual_seed(seed);
  return Net();
}

// Steps through a closure, which LBFGS needs (it evaluates the loss several
// times per step) and the others call once.
void TrainSteps(Net& net, torch::optim::Optimizer& opt, int steps, int seed,
                torch::optim::LRScheduler* sched = nullptr) {
  torch::manual_seed(1000 + seed);
  for (int i = 0; i < steps; ++i) {
    torch::Tensor x = torch::randn({5, 6});
    torch::Tensor y = torch::randn({5, 3});
    opt.step([&] {
      opt.zero_grad();
      torch::Tensor loss = torch::mse_loss(net->forward(x), y);
      loss.backward();
      return loss;
    });
    if (sched) sched->step();
  }
}

bool Same(const StateDict& a, const StateDict& b, std::string* why) {
  return ExactlyEqual(a, b, why);
}

std::string ErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kInvalidArgument) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no ackpt::Error thrown";
  return "";
}

TEST(ModuleStateTest, ParametersAndBuffersByName) {
  Net net = MakeNet(1);
  StateDict s = ModuleState(*net);
  std::vector<std::string> keys;
  for (const auto& kv : s) keys.push_back(kv.first);
  EXPECT_EQ(keys, (std::vector<std::string>{"fc1.weight", "fc1.bias", "bn.weight", "bn.bias",
                                            "fc2.weight", "fc2.bias", "bn.running_mean",
                                            "bn.running_var", "bn.num_batches_tracked"}));
  // Shares storage with the module (save() snapshots it).
  EXPECT_EQ(s.at("fc1.weight").tensor().data_ptr(), net->fc1->weight.data_ptr());
  EXPECT_FALSE(s.at("fc1.weight").tensor().requires_grad());
}

TEST(ModuleStateTest, LoadCopiesInPlace) {
  Net a = MakeNet(1), b = MakeNet(2);
  a->forward(torch::randn({4, 6}));  // move the BatchNorm running stats
  void* weight_ptr = b->fc1->weight.data_ptr();
  ModuleLoadReport r = LoadModuleState(*b, ModuleState(*a));
  EXPECT_TRUE(r.clean());
  EXPECT_EQ(r.loaded.size(), 9u);
  std::string why;
  EXPECT_TRUE(Same(ModuleState(*a), ModuleState(*b), &why)) << why;
  EXPECT_EQ(b->fc1->weight.data_ptr(), weight_ptr);  // same tensor: optimizers stay valid
  EXPECT_TRUE(b->fc1->weight.requires_grad());
}

TEST(ModuleStateTest, StrictNamesEveryProblemAndChangesNothing) {
  Net a = MakeNet(1), b = MakeNet(2);
  StateDict s = ModuleState(*a);
  s.erase("fc2.bias");
  s.set("extra.weight", torch::zeros({2}));
  s.set("fc1.weight", torch::zeros({3, 3}));
  const torch::Tensor before = b->fc1->bias.clone();
  const std::string msg = ErrorOf([&] { LoadModuleState(*b, s); });
  EXPECT_TRUE(Contains(msg, "missing: fc2.bias")) << msg;
  EXPECT_TRUE(Contains(msg, "unexpected: extra.weight")) << msg;
  EXPECT_TRUE(Contains(msg, "fc1.weight: checkpoint [3, 3] vs module [8, 6]")) << msg;
  EXPECT_TRUE(torch::equal(before, b->fc1->bias));  // nothing was loaded
}

TEST(ModuleStateTest, LenientLoadsWhatMatches) {
  Net a = MakeNet(1), b = MakeNet(2);
  StateDict s = ModuleState(*a);
  s.erase("fc2.bias");
  s.set("extra", int64_t{3});
  s.set("fc1.weight", torch::zeros({3, 3}));
  ModuleLoadReport r = LoadModuleState(*b, s, /*strict=*/false);
  EXPECT_EQ(r.missing, std::vector<std::string>{"fc2.bias"});
  EXPECT_EQ(r.unexpected, std::vector<std::string>{"extra"});
  ASSERT_EQ(r.mismatched.size(), 1u);
  EXPECT_TRUE(torch::equal(a->fc1->bias, b->fc1->bias));
  EXPECT_FALSE(torch::equal(a->fc2->bias, b->fc2->bias));
  EXPECT_FALSE(torch::equal(a->fc1->weight, b->fc1->weight));
}

// Builds each supported optimizer the same way over any Net.
std::unique_ptr<torch::optim::Optimizer> MakeOptimizer(const std::string& type, Net& net) {
  auto params = net->parameters();
  if (type == "Adam") {
    // Two param groups with different hyper-parameters.
    std::vector<torch::Tensor> weights, rest;
    for (const auto& p : net->named_parameters()) {
      (p.key().find("weight") != std::string::npos ? weights : rest).push_back(p.value());
    }
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(weights, std::make_unique<torch::optim::AdamOptions>(
                                     torch::optim::AdamOptions(1e-2).weight_decay(1e-3)));
    groups.emplace_back(
        rest, std::make_unique<torch::optim::AdamOptions>(torch::optim::AdamOptions(5e-3)));
    return std::make_unique<torch::optim::Adam>(groups, torch::optim::AdamOptions(1e-2));
  }
  if (type == "AdamW") {
    return std::make_unique<torch::optim::AdamW>(params,
                                                 torch::optim::AdamWOptions(1e-2).amsgrad(true));
  }
  if (type == "SGD") {
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(0.05).momentum(0.9).nesterov(true));
  }
  if (type == "RMSprop") {
    return std::make_unique<torch::optim::RMSprop>(
        params, torch::optim::RMSpropOptions(1e-2).momentum(0.5).centered(true));
  }
  if (type == "Adagrad") {
    return std::make_unique<torch::optim::Adagrad>(
        params, torch::optim::AdagradOptions(0.1).lr_decay(1e-3));
  }
  if (type == "LBFGS") {
    // A short history, so that a few steps fill it and drop its oldest entries.
    return std::make_unique<torch::optim::LBFGS>(
        params, torch::optim::LBFGSOptions(0.1).max_iter(4).history_size(3));
  }
  throw std::runtime_error("unknown optimizer " + type);
}

class OptimizerStateTest : public ::testing::TestWithParam<std::string> {};

TEST_P(OptimizerStateTest, RestoresIntoFreshOptimizerByName) {
  const std::string type = GetParam();
  Net a = MakeNet(1);
  auto opt_a = MakeOptimizer(type, a);
  TrainSteps(a, *opt_a, 3, 0);
  const StateDict captured = CaptureOptimizer(*opt_a, *a);
  EXPECT_EQ(captured.at("type").str(), type);
  EXPECT_EQ(OptimizerTypeName(*opt_a), type);

  // A fresh module and optimizer: different TensorImpl addresses.
  Net b = MakeNet(2);
  LoadModuleState(*b, ModuleState(*a));
  auto opt_b = MakeOptimizer(type, b);
  RestoreOptimizer(*opt_b, *b, captured);
  std::string why;
  EXPECT_TRUE(Same(captured, CaptureOptimizer(*opt_b, *b), &why)) << why;

  // Restored state is a copy, never shared with the StateDict.
  const StateDict& first = captured.at("state").dict().begin()->second.dict();
  for (const auto& kv : first) {
    if (kv.second.is_tensor()) {
      const std::string& name = captured.at("state").dict().begin()->first;
      const StateDict again = CaptureOptimizer(*opt_b, *b);
      EXPECT_NE(again.at("state").dict().at(name).dict().at(kv.first).tensor().data_ptr(),
                kv.second.tensor().data_ptr());
    }
  }

  // Both continue identically, bit for bit.
  TrainSteps(a, *opt_a, 4, 7);
  TrainSteps(b, *opt_b, 4, 7);
  EXPECT_TRUE(Same(ModuleState(*a), ModuleState(*b), &why)) << why;
  EXPECT_TRUE(Same(CaptureOptimizer(*opt_a, *a), CaptureOptimizer(*opt_b, *b), &why)) << why;
}

TEST_P(OptimizerStateTest, SurvivesACheckpointFile) {
  const std::string type = GetParam();
  TempDir dir;
  Net a = MakeNet(1);
  auto opt_a = MakeOptimizer(type, a);
  TrainSteps(a, *opt_a, 2, 0);
  StateDict state{{"model", ModuleState(*a)}, {"optimizer", CaptureOptimizer(*opt_a, *a)}};
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    WriteOptions wo;
    wo.compression = c;
    const std::string path =
        dir.file(c == Compression::kNone ? "s.safetensors" : "s.safetensors.zst");
    WriteStateDict(state, path, wo);
    StateDict loaded = ReadStateDict(path);
    Net b = MakeNet(3);
    LoadModuleState(*b, loaded.at("model").dict());
    auto opt_b = MakeOptimizer(type, b);
    RestoreOptimizer(*opt_b, *b, loaded.at("optimizer").dict());
    std::string why;
    EXPECT_TRUE(Same(state.at("optimizer").dict(), CaptureOptimizer(*opt_b, *b), &why)) << why;
  }
}

// The data pointers of every state tensor of the optimizer, by flattened name.
std::map<std::string, void*> StatePtrs(const torch::optim::Optimizer& o, const Net& net) {
  std::map<std::string, void*> out;
  for (const auto& kv : FlattenTensors(CaptureOptimizer(o, *net).at("state").dict()))
    out[kv.first] = kv.second.data_ptr();
  return out;
}

// A resume reads the optimizer state straight into the tensors the optimizer
// keeps: created first (CreateOptimizerState) or already there, used as the
// read's destinations, kept by RestoreOptimizer; and tensors read fresh are
// taken over (kAdopt), not copied. Either way the run continues bit for bit.
TEST_P(OptimizerStateTest, LoadsInPlaceAndResumesBitExact) {
  const std::string type = GetParam();
  TempDir dir;
  Net a = MakeNet(1);
  auto opt_a = MakeOptimizer(type, a);
  TrainSteps(a, *opt_a, 3, 0);
  const std::string path = dir.file("s.safetensors.zst");
  WriteStateDict(StateDict{{"model", ModuleState(*a)}, {"optimizer", CaptureOptimizer(*opt_a, *a)}},
                 path);

  // (1) A fresh optimizer whose lazily created state is created before the read.
  Net b = MakeNet(2);
  auto opt_b = MakeOptimizer(type, b);
  CreateOptimizerState(*opt_b);
  StateDict targets{{"model", ModuleState(*b)}, {"optimizer", CaptureOptimizer(*opt_b, *b)}};
  const auto created = StatePtrs(*opt_b, b);
  EXPECT_FALSE(created.empty()) << "nothing created or built for " << type;
  StateDict loaded = CheckpointReader::Open(path)->ReadStateDictInto(FlattenTensors(targets),
                                                                     /*strict=*/false);
  RestoreOptimizer(*opt_b, *b, loaded.at("optimizer").dict());  // copy mode keeps its own
  const auto after = StatePtrs(*opt_b, b);
  size_t kept = 0;
  for (const auto& kv : created) {
    auto it = after.find(kv.first);
    if (it != after.end() && it->second == kv.second) ++kept;
  }
  // LBFGS's history and 0-dim H_diag are not created ahead; everything else is.
  if (type == "LBFGS") {
    EXPECT_GE(kept, 2u);
  } else {
    EXPECT_EQ(kept, created.size());
    EXPECT_EQ(after, created);
  }

  // (2) A fresh optimizer taking over the tensors of a plain read: no copy.
  Net c = MakeNet(3);
  auto opt_c = MakeOptimizer(type, c);
  StateDict fresh = ReadStateDict(path);
  LoadModuleState(*c, fresh.at("model").dict());
  std::map<std::string, void*> read;
  for (const auto& kv : FlattenTensors(fresh.at("optimizer").dict().at("state").dict()))
    read[kv.first] = kv.second.data_ptr();
  RestoreOptimizer(*opt_c, *c, fresh.at("optimizer").dict(), RestoreMode::kAdopt);
  EXPECT_EQ(StatePtrs(*opt_c, c), read);

  // All three continue identically, bit for bit.
  TrainSteps(a, *opt_a, 4, 7);
  TrainSteps(b, *opt_b, 4, 7);
  TrainSteps(c, *opt_c, 4, 7);
  std::string why;
  EXPECT_TRUE(Same(ModuleState(*a), ModuleState(*b), &why)) << why;
  EXPECT_TRUE(Same(ModuleState(*a), ModuleState(*c), &why)) << why;
  EXPECT_TRUE(Same(CaptureOptimizer(*opt_a, *a), CaptureOptimizer(*opt_b, *b), &why)) << why;
  EXPECT_TRUE(Same(CaptureOptimizer(*opt_a, *a), CaptureOptimizer(*opt_c, *c), &why)) << why;
}

INSTANTIATE_TEST_SUITE_P(All, OptimizerStateTest,
                         ::testing::Values("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "LBFGS"),
                         [](const auto& info) { return info.param; });

TEST(OptimizerCaptureTest, LayoutNamesGroupsAndState) {
  Net net = MakeNet(1);
  auto opt = MakeOptimizer("Adam", net);
  StateDict before = CaptureOptimizer(*opt, *net);
  EXPECT_TRUE(before.at("state").dict().empty());  // no step yet
  TrainSteps(net, *opt, 1, 0);
  StateDict s = CaptureOptimizer(*opt, *net);
  const List& groups = s.at("param_groups").list();
  ASSERT_EQ(groups.size(), 2u);
  const StateDict& g0 = groups[0].dict();
  ASSERT_EQ(g0.at("params").list().size(), 3u);
  EXPECT_EQ(g0.at("params").list()[0].str(), "fc1.weight");
  EXPECT_EQ(g0.at("lr").to_double(), 1e-2);
  EXPECT_EQ(g0.at("weight_decay").to_double(), 1e-3);
  EXPECT_EQ(g0.at("betas").list()[1].to_double(), 0.999);
  EXPECT_FALSE(g0.at("amsgrad").to_bool());
  EXPECT_EQ(groups[1].dict().at("lr").to_double(), 5e-3);
  const StateDict& w = s.at("state").dict().at("fc1.weight").dict();
  EXPECT_EQ(w.at("step").to_int(), 1);
  EXPECT_EQ(w.at("exp_avg").tensor().sizes(), net->fc1->weight.sizes());
  EXPECT_FALSE(w.contains("max_exp_avg_sq"));
  EXPECT_EQ(s.at("state").dict().size(), 6u);
}

TEST(OptimizerCaptureTest, RestoresHyperParametersChangedBySchedule) {
  Net a = MakeNet(1);
  torch::optim::SGD opt_a(a->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::optim::StepLR sched_a(opt_a, 2, 0.5);
  TrainSteps(a, opt_a, 5, 0, &sched_a);
  Net b = MakeNet(1);
  torch::optim::SGD opt_b(b->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::optim::StepLR sched_b(opt_b, 2, 0.5);
  RestoreOptimizer(opt_b, *b, CaptureOptimizer(opt_a, *a));
  RestoreScheduler(sched_b, CaptureScheduler(sched_a));
  EXPECT_EQ(opt_b.param_groups()[0].options().get_lr(), 0.025);
  EXPECT_EQ(CaptureScheduler(sched_b).at("step_count").to_int(), 5);
  for (int i = 0; i < 4; ++i) {
    sched_a.step();
    sched_b.step();
    EXPECT_EQ(opt_a.param_groups()[0].options().get_lr(),
              opt_b.param_groups()[0].options().get_lr());
  }
  EXPECT_EQ(opt_b.param_groups()[0].options().get_lr(), 0.00625);
}

TEST(OptimizerCaptureTest, ClearErrors) {
  Net a = MakeNet(1);
  auto adam = MakeOptimizer("AdamW", a);
  TrainSteps(a, *adam, 1, 0);
  const StateDict s = CaptureOptimizer(*adam, *a);

  // Type mismatch.
  Net b = MakeNet(2);
  auto sgd = MakeOptimizer("SGD", b);
  std::string msg = ErrorOf([&] { RestoreOptimizer(*sgd, *b, s); });
  EXPECT_TRUE(Contains(
      msg, "optimizer type mismatch: the checkpoint holds AdamW state but the optimizer is SGD"))
      << msg;

  // A parameter the checkpoint does not know.
  StateDict missing = s;
  {
    StateDict& g = missing.at("param_groups").list()[0].dict();
    List& params = g.at("params").list();
    params.erase(params.begin());
  }
  auto fresh = MakeOptimizer("AdamW", b);
  msg = ErrorOf([&] { RestoreOptimizer(*fresh, *b, missing); });
  EXPECT_TRUE(Contains(msg, "parameter 'fc1.weight' of the optimizer's param group 0 is missing"))
      << msg;

  // A parameter name the optimizer does not hold.
  StateDict unknown = s;
  unknown.at("param_groups").list()[0].dict().at("params").list().emplace_back("decoder.weight");
  msg = ErrorOf([&] { RestoreOptimizer(*fresh, *b, unknown); });
  EXPECT_TRUE(Contains(msg, "names parameter 'decoder.weight'")) << msg;
  StateDict unknown_state = s;
  unknown_state.at("state").dict().set("decoder.weight",
                                       unknown_state.at("state").dict().at("fc1.bias"));
  msg = ErrorOf([&] { RestoreOptimizer(*fresh, *b, unknown_state); });
  EXPECT_TRUE(
      Contains(msg, "state names parameter 'decoder.weight', which the optimizer does not hold"))
      << msg;

  // A state tensor with the wrong shape.
  StateDict shape = s;
  shape.at("state").dict().at("fc1.bias").dict().set("exp_avg", torch::zeros({2}));
  msg = ErrorOf([&] { RestoreOptimizer(*fresh, *b, shape); });
  EXPECT_TRUE(Contains(msg, "exp_avg has shape [2] but the parameter has shape [8]")) << msg;

  // A missing hyper-parameter.
  StateDict nolr = s;
  nolr.at("param_groups").list()[0].dict().erase("lr");
  msg = ErrorOf([&] { RestoreOptimizer(*fresh, *b, nolr); });
  EXPECT_TRUE(Contains(msg, "param_groups[0] has no 'lr'")) << msg;

  // A different number of param groups.
  Net c = MakeNet(3);
  auto two_groups = MakeOptimizer("Adam", c);
  StateDict adam_state = CaptureOptimizer(*two_groups, *c);
  auto one_group = MakeOptimizer("AdamW", c);
  adam_state.set("type", "AdamW");
  msg = ErrorOf([&] { RestoreOptimizer(*one_group, *c, adam_state); });
  EXPECT_TRUE(Contains(msg, "has 2 param groups but the optimizer has 1")) << msg;

  // After every failed restore the optimizer is unchanged (still empty state).
  EXPECT_TRUE(fresh->state().empty());

  // An optimizer parameter that is not a named parameter of the module.
  torch::Tensor stray = torch::zeros({2}, torch::requires_grad());
  torch::optim::SGD stray_opt(std::vector<torch::Tensor>{stray}, torch::optim::SGDOptions(0.1));
  msg = ErrorOf([&] { CaptureOptimizer(stray_opt, *c); });
  EXPECT_TRUE(Contains(msg, "is not among the module's named parameters")) << msg;
}

TEST(OptimizerCaptureTest, LbfgsHistoryUnderTheFirstParameter) {
  Net net = MakeNet(1);
  auto opt = MakeOptimizer("LBFGS", net);
  TrainSteps(net, *opt, 3, 0);
  const StateDict s = CaptureOptimizer(*opt, *net);
  EXPECT_EQ(s.at("type").str(), "LBFGS");
  const StateDict& g = s.at("param_groups").list()[0].dict();
  EXPECT_EQ(g.at("history_size").to_int(), 3);
  EXPECT_EQ(g.at("max_eval").to_int(), 5);     // LibTorch's default: max_iter * 5 / 4
  EXPECT_FALSE(g.contains("line_search_fn"));  // unset optional
  // One state for all parameters, kept under the first one.
  ASSERT_EQ(s.at("state").dict().size(), 1u);
  const StateDict& st = s.at("state").dict().at("fc1.weight").dict();
  EXPECT_EQ(st.at("n_iter").to_int(), 12);  // 3 steps of max_iter 4
  const int64_t numel = 6 * 8 + 8 + 8 + 8 + 8 * 3 + 3;
  EXPECT_EQ(st.at("d").tensor().numel(), numel);
  EXPECT_EQ(st.at("prev_flat_grad").tensor().numel(), numel);
  // The history is full: its oldest entries were dropped.
  ASSERT_EQ(st.at("old_dirs").list().size(), 3u);
  EXPECT_EQ(st.at("old_stps").list().size(), 3u);
  EXPECT_EQ(st.at("ro").list().size(), 3u);
  EXPECT_EQ(st.at("old_dirs").list()[0].tensor().numel(), numel);
  EXPECT_FALSE(st.contains("al"));  // scratch space, rewritten before it is read

  // A flat buffer of another length is caught on restore.
  StateDict bad = s;
  bad.at("state").dict().at("fc1.weight").dict().at("old_dirs").list()[1] = Value(int64_t{3});
  Net b = MakeNet(2);
  auto fresh = MakeOptimizer("LBFGS", b);
  EXPECT_TRUE(Contains(ErrorOf([&] { RestoreOptimizer(*fresh, *b, bad); }),
                       "optimizer state.state['fc1.weight'].old_dirs[1] is an int, not a tensor"));
}

TEST(OptimizerCaptureTest, UnknownFieldsAreRejected) {
  Net a = MakeNet(1);
  auto opt = MakeOptimizer("SGD", a);
  TrainSteps(a, *opt, 1, 0);
  StateDict s = CaptureOptimizer(*opt, *a);
  StateDict extra_option = s;
  extra_option.at("param_groups").list()[0].dict().set("betas", List{0.9, 0.99});
  auto fresh = MakeOptimizer("SGD", a);
  EXPECT_TRUE(Contains(ErrorOf([&] { RestoreOptimizer(*fresh, *a, extra_option); }),
                       "param_groups[0] has an unknown entry 'betas'"));
  StateDict extra_state = s;
  extra_state.at("state").dict().at("fc1.bias").dict().set("exp_avg", torch::zeros({8}));
  EXPECT_TRUE(Contains(ErrorOf([&] { RestoreOptimizer(*fresh, *a, extra_state); }),
                       "state['fc1.bias'] has an unknown entry 'exp_avg'"));
}

TEST(SchedulerStateTest, TorchSchedulerAdapterAndTypeCheck) {
  Net net = MakeNet(1);
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(1.0));
  auto s = MakeScheduler<torch::optim::StepLR>(opt, 3, 0.1);
  for (int i = 0; i < 7; ++i) s->step();
  StateDict st = s->get_state();
  EXPECT_EQ(st.at("type").str(), "StepLR");
  EXPECT_EQ(st.at("step_count").to_int(), 7);
  StateDict wrong = st;
  wrong.set("type", "CosineLR");
  std::string msg = ErrorOf([&] { s->update_state(wrong); });
  EXPECT_TRUE(Contains(
      msg,
      "scheduler type mismatch: the checkpoint holds CosineLR state but the scheduler is StepLR"))
      << msg;
  StateDict negative = st;
  negative.set("step_count", int64_t{-1});
  EXPECT_TRUE(Contains(ErrorOf([&] { s->update_state(negative); }), "out of range"));
}

// A user-defined scheduler: linear warm-up, its own state.
class Warmup : public Scheduler {
 public:
  Warmup(torch::optim::Optimizer& opt, int64_t steps) : opt_(opt), steps_(steps) { apply(); }
  void step() override {
    ++n_;
    apply();
  }
  StateDict get_state() const override { return StateDict{{"n", n_}}; }
  void update_state(const StateDict& s) override {
    n_ = s.at("n").to_int();
    apply();
  }

 private:
  void apply() {
    for (auto& g : opt_.param_groups())
      g.options().set_lr(0.1 * std::min<int64_t>(n_ + 1, steps_) / steps_);
  }
  torch::optim::Optimizer& opt_;
  int64_t steps_;
  int64_t n_ = 0;
};

TEST(SchedulerStateTest, UserSchedulerInterface) {
  Net net = MakeNet(1);
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(1.0));
  std::shared_ptr<Scheduler> a = std::make_shared<Warmup>(opt, 10);
  for (int i = 0; i < 4; ++i) a->step();
  torch::optim::SGD opt2(net->parameters(), torch::optim::SGDOptions(1.0));
  std::shared_ptr<Scheduler> b = std::make_shared<Warmup>(opt2, 10);
  b->update_state(a->get_state());
  EXPECT_DOUBLE_EQ(opt2.param_groups()[0].options().get_lr(), 0.05);
}

TEST(RngStateTest, RestoreReplaysTheSameDraws) {
  torch::manual_seed(42);
  torch::randn({10});
  const StateDict s = CaptureRngState();
  EXPECT_EQ(s.at("cpu").tensor().scalar_type(), at::kByte);
  const torch::Tensor first = torch::randn({100});
  const torch::Tensor ints = torch::randint(0, 1000, {50});
  torch::manual_seed(7);
  torch::rand({3});
  RestoreRngState(s);
  EXPECT_TRUE(torch::equal(first, torch::randn({100})));
  EXPECT_TRUE(torch::equal(ints, torch::randint(0, 1000, {50})));
  // Dropout draws from the same generator.
  RestoreRngState(s);
  torch::Tensor d1 = torch::dropout(torch::ones({64}), 0.5, true);
  RestoreRngState(s);
  EXPECT_TRUE(torch::equal(d1, torch::dropout(torch::ones({64}), 0.5, true)));
}

TEST(RngStateTest, SurvivesAFileAndRejectsGarbage) {
  TempDir dir;
  torch::manual_seed(3);
  StateDict s = CaptureRngState();
  WriteOptions wo;
  wo.compression = Compression::kZstd;
  WriteStateDict(StateDict{{"rng", s}}, dir.file("r.safetensors.zst"), wo);
  const torch::Tensor expected = torch::rand({20});
  torch::manual_seed(99);
  RestoreRngState(ReadStateDict(dir.file("r.safetensors.zst")).at("rng").dict());
  EXPECT_TRUE(torch::equal(expected, torch::rand({20})));

  EXPECT_TRUE(Contains(ErrorOf([] {
                         RestoreRngState(StateDict{{"cpu", torch::zeros({4})}});
                       }),
                       "cpu must be a uint8 tensor"));
  EXPECT_TRUE(Contains(ErrorOf([] {
                         RestoreRngState(StateDict{{"cpu", torch::zeros({4}, torch::kUInt8)}});
                       }),
                       "is not a CPU generator state"));
  EXPECT_TRUE(Contains(ErrorOf([] { RestoreRngState(StateDict{}); }), "RNG state has no 'cpu'"));
}

}  // namespace
}  // namespace ackpt
