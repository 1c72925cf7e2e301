// Loading into tensors the caller holds (CheckpointReader::ReadInto,
// ReadStateDictInto): bit-exact for every dtype and storage layout, clear
// errors for wrong shapes and dtypes, bounce buffers for destinations that
// cannot take the bytes directly, partial loads that read only the frames
// they need (counted through an Env), and the Trainer resuming through it.
#include <ATen/ATen.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <atomic>
#include <cstring>
#include <fstream>

#include "ackpt/checkpointer.h"
#include "ackpt/error.h"
#include "ackpt/format.h"
#include "ackpt/torch_state.h"
#include "ackpt/trainer.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::AllDtypes;
using testing::CatchError;
using testing::Contains;
using testing::TensorBytes;

using testing::PatternTensor;
using testing::ReadFileBytes;
using testing::TempDir;
using testing::WriteFileBytes;

struct Layout {
  const char* name;
  Compression compression;
  size_t chunk_size;
};

const std::vector<Layout>& Layouts() {
  static const std::vector<Layout> kAll = {
      {"plain", Compression::kNone, size_t{4} << 20},
      {"zstd", Compression::kZstd, size_t{4} << 20},
      // Tensors span several frames and frames hold several tensors.
      {"zstd_small_frames", Compression::kZstd, 64 * 1024},
      // Format version 3: byte-grouped data frames decode through the same path.
      {"byte_grouped_small_frames", Compression::kZstdByteGrouped, 64 * 1024},
  };
  return kAll;
}

WriteOptions Options(const Layout& l) {
  WriteOptions o;
  o.compression = l.compression;
  o.chunk_size = l.chunk_size;
  o.fsync = false;
  return o;
}

// Every dtype, in sizes from empty to several frames, one of them 0-dim.
StateDict DtypeState() {
  StateDict model;
  int seed = 0;
  for (at::ScalarType t : AllDtypes()) {
    const std::string n = c10::toString(t);
    model.set(n + ".big", PatternTensor({300, 257}, t, seed++));
    model.set(n + ".small", PatternTensor({3}, t, seed++));
    model.set(n + ".scalar", PatternTensor({}, t, seed++));
    model.set(n + ".empty", PatternTensor({0, 4}, t, seed++));
  }
  StateDict root;
  root.set("model", model);
  root.set("step", int64_t{7});
  return root;
}

// Destinations of the same dtypes and shapes as `state`'s tensors, filled with garbage.
StateDict FreshLike(const StateDict& state) {
  StateDict out;
  for (const auto& kv : state) {
    if (kv.second.is_dict()) {
      out.set(kv.first, FreshLike(kv.second.dict()));
    } else if (kv.second.is_tensor()) {
      const at::Tensor& t = kv.second.tensor();
      at::Tensor d = at::empty(t.sizes(), t.options());
      if (d.nbytes() > 0) std::memset(d.data_ptr(), 0xA5, d.nbytes());
      out.set(kv.first, d);
    } else {
      out.set(kv.first, kv.second);
    }
  }
  return out;
}

class LoadIntoTest : public ::testing::TestWithParam<Layout> {};

TEST_P(LoadIntoTest, EveryDtypeBitExactIntoExistingTensors) {
  TempDir dir;
  const std::string path = dir.file("c.safetensors");
  const StateDict saved = DtypeState();
  WriteStateDict(saved, path, Options(GetParam()));
  const auto want = FlattenTensors(saved);

  for (int threads : {1, 3}) {
    ReadOptions ro;
    ro.threads = threads;
    // By name.
    StateDict dest_state = FreshLike(saved);
    auto dest = FlattenTensors(dest_state);
    std::map<std::string, void*> ptrs;
    for (auto& kv : dest) ptrs[kv.first] = kv.second.numel() ? kv.second.data_ptr() : nullptr;
    CheckpointReader::Open(path, ro)->ReadInto(dest);
    for (const auto& kv : want) {
      SCOPED_TRACE(kv.first);
      const at::Tensor& d = dest.at(kv.first);
      EXPECT_EQ(d.scalar_type(), kv.second.scalar_type());
      EXPECT_EQ(TensorBytes(d), TensorBytes(kv.second));
      if (d.numel()) EXPECT_EQ(d.data_ptr(), ptrs[kv.first]) << "not filled in place";
    }
    // StateDict-shaped.
    StateDict dest2 = FreshLike(saved);
    CheckpointReader::Open(path, ro)->ReadInto(dest2);
    for (const auto& kv : FlattenTensors(dest2)) {
      SCOPED_TRACE(kv.first);
      EXPECT_EQ(TensorBytes(kv.second), TensorBytes(want.at(kv.first)));
    }
    // The whole state, a few tensors into destinations, the rest fresh.
    std::map<std::string, at::Tensor> some = {
        {"model/Float.big", at::empty({300, 257}, at::kFloat)},
        {"model/Bool.small", at::empty({3}, at::kBool)}};
    StateDict whole = CheckpointReader::Open(path, ro)->ReadStateDictInto(some);
    EXPECT_EQ(whole.at("step").to_int(), 7);
    const at::Tensor& big = whole.at("model").dict().at("Float.big").tensor();
    EXPECT_EQ(big.data_ptr(), some.at("model/Float.big").data_ptr());
    for (const auto& kv : want) {
      SCOPED_TRACE(kv.first);
      const std::string key = kv.first.substr(std::string("model/").size());
      EXPECT_EQ(TensorBytes(whole.at("model").dict().at(key).tensor()), TensorBytes(kv.second));
    }
  }
}

TEST_P(LoadIntoTest, NonContiguousAndViewDestinationsGoThroughABounceBuffer) {
  TempDir dir;
  const std::string path = dir.file("c.safetensors");
  StateDict saved;
  saved.set("w", PatternTensor({40, 30}, at::kFloat, 1));
  saved.set("h", PatternTensor({16, 8}, at::kHalf, 2));
  WriteStateDict(saved, path, Options(GetParam()));

  // A transposed view of a [30, 40] tensor and a column slice.
  at::Tensor backing = at::zeros({30, 40}, at::kFloat);
  at::Tensor w = backing.t();
  ASSERT_FALSE(w.is_contiguous());
  at::Tensor wide = at::zeros({16, 20}, at::kHalf);
  at::Tensor h = wide.narrow(1, 2, 8);
  std::map<std::string, at::Tensor> dest = {{"w", w}, {"h", h}};
  std::vector<std::pair<std::string, at::Tensor>> more;
  if (torch::cuda::is_available()) {
    more.emplace_back("w", at::zeros({40, 30}, at::TensorOptions(at::kCUDA).dtype(at::kFloat)));
  }
  CheckpointReader::Open(path)->ReadInto(dest);
  EXPECT_TRUE(at::equal(w, saved.at("w").tensor()));
  EXPECT_TRUE(at::equal(h, saved.at("h").tensor()));
  EXPECT_TRUE(at::equal(wide.narrow(1, 0, 2), at::zeros({16, 2}, at::kHalf))) << "wrote outside";
  for (auto& m : more) {
    CheckpointReader::Open(path)->ReadInto(std::map<std::string, at::Tensor>{{m.first, m.second}});
    EXPECT_TRUE(at::equal(m.second.cpu(), saved.at("w").tensor()));
  }
  // A leaf that requires grad (a parameter) is filled without autograd complaining.
  at::Tensor p = at::zeros({40, 30}, at::kFloat).set_requires_grad(true);
  const auto version = p._version();
  CheckpointReader::Open(path)->ReadInto(std::map<std::string, at::Tensor>{{"w", p}});
  EXPECT_TRUE(at::equal(p.detach(), saved.at("w").tensor()));
  EXPECT_GT(p._version(), version) << "the write must bump the version counter";
}

TEST_P(LoadIntoTest, WrongShapeOrDtypeNamesTheTensorAndBothAndWritesNothing) {
  TempDir dir;
  const std::string path = dir.file("c.safetensors");
  StateDict saved;
  saved.set("layer", StateDict{{"w", PatternTensor({2, 3}, at::kFloat)}});
  saved.set("v", PatternTensor({5}, at::kFloat, 3));
  WriteStateDict(saved, path, Options(GetParam()));
  auto reader = CheckpointReader::Open(path);

  at::Tensor ok = at::zeros({5}, at::kFloat);
  Error shape = CatchError([&] {
    reader->ReadInto(
        std::map<std::string, at::Tensor>{{"v", ok}, {"layer/w", at::zeros({3, 3}, at::kFloat)}});
  });
  EXPECT_EQ(shape.code(), Error::Code::kInvalidArgument);
  EXPECT_TRUE(Contains(shape.what(), "'layer/w'")) << shape.what();
  EXPECT_TRUE(Contains(shape.what(), "checkpoint F32 [2, 3] vs destination F32 [3, 3]"))
      << shape.what();
  EXPECT_TRUE(at::equal(ok, at::zeros({5}))) << "checked before anything is read";

  Error dtype = CatchError([&] {
    reader->ReadInto(std::map<std::string, at::Tensor>{{"layer/w", at::zeros({2, 3}, at::kHalf)}});
  });
  EXPECT_EQ(dtype.code(), Error::Code::kInvalidArgument);
  EXPECT_TRUE(Contains(dtype.what(), "checkpoint F32 [2, 3] vs destination F16 [2, 3]"))
      << dtype.what();

  Error missing = CatchError([&] {
    reader->ReadInto(std::map<std::string, at::Tensor>{{"nope", at::zeros({1})}});
  });
  EXPECT_EQ(missing.code(), Error::Code::kNotFound);
  EXPECT_TRUE(Contains(missing.what(), "'nope'")) << missing.what();

  Error undefined = CatchError([&] {
    reader->ReadInto(std::map<std::string, at::Tensor>{{"v", at::Tensor()}});
  });
  EXPECT_EQ(undefined.code(), Error::Code::kInvalidArgument);

  // Lenient ReadStateDictInto: the mismatched destination is left alone.
  at::Tensor wrong = at::zeros({3, 3}, at::kFloat);
  StateDict s =
      reader->ReadStateDictInto(std::map<std::string, at::Tensor>{{"layer/w", wrong}}, false);
  EXPECT_TRUE(at::equal(wrong, at::zeros({3, 3})));
  EXPECT_TRUE(
      at::equal(s.at("layer").dict().at("w").tensor(), saved.at("layer").dict().at("w").tensor()));
  // Strict: it throws.
  EXPECT_EQ(CatchError([&] {
              reader->ReadStateDictInto(std::map<std::string, at::Tensor>{{"layer/w", wrong}});
            }).code(),
            Error::Code::kInvalidArgument);
}

TEST_P(LoadIntoTest, CorruptTensorBytesAreCaughtAsTheyLand) {
  TempDir dir;
  const std::string path = dir.file("c.safetensors");
  StateDict saved;
  saved.set("a", PatternTensor({256, 256}, at::kFloat, 1));
  saved.set("b", PatternTensor({256, 256}, at::kFloat, 2));
  WriteOptions o = Options(GetParam());
  WriteStateDict(saved, path, o);
  if (GetParam().compression != Compression::kNone) {
    // Frames carry their own checksums; corrupting the plain stream is the
    // case where only the per-tensor checksum stands between bad bytes and the model.
    GTEST_SKIP() << "covered by corruption_test for compressed files";
  }
  auto info = CheckpointReader::Open(path)->info();
  std::string bytes = ReadFileBytes(path);
  const TensorInfo& b = info.tensors[1];
  bytes[info.header_bytes + b.begin + 1000] ^= 0x40;
  WriteFileBytes(path, bytes);
  Error e = CatchError([&] {
    CheckpointReader::Open(path)->ReadInto(std::map<std::string, at::Tensor>{
        {"a", at::empty({256, 256})}, {"b", at::empty({256, 256})}});
  });
  EXPECT_EQ(e.code(), Error::Code::kCorruption);
  EXPECT_TRUE(Contains(e.what(), "checksum mismatch in tensor '" + b.name + "'")) << e.what();
  // Without verification the bytes load as they are.
  ReadOptions ro;
  ro.verify_checksums = false;
  at::Tensor d = at::empty({256, 256});
  CheckpointReader::Open(path, ro)->ReadInto(std::map<std::string, at::Tensor>{{b.name, d}});
  EXPECT_FALSE(at::equal(d, saved.at(b.name).tensor()));
}

INSTANTIATE_TEST_SUITE_P(Layouts, LoadIntoTest, ::testing::ValuesIn(Layouts()),
                         [](const ::testing::TestParamInfo<Layout>& i) { return i.param.name; });

// A plain load hands each thread runs of one tensor's blocks; a tensor larger
// than a run is split across threads and its later runs are hashed out of
// order. Bytes still land bit-exact, and a flip in any run of it is caught.
TEST(LoadIntoSplitTest, ATensorSplitAcrossThreadsLoadsExactlyAndCatchesAFlipInAnyRun) {
  TempDir dir;
  const std::string path = dir.file("s.safetensors");
  StateDict saved;
  saved.set("big", PatternTensor({5, 1 << 20}, at::kFloat, 3));  // 20 MiB: several runs
  saved.set("small", PatternTensor({1000}, at::kFloat, 4));
  saved.set("mid", PatternTensor({3, 1 << 20}, at::kFloat, 5));  // 12 MiB
  WriteOptions o;
  o.compression = Compression::kNone;
  o.fsync = false;
  WriteStateDict(saved, path, o);
  const std::string clean = ReadFileBytes(path);
  auto dests = [] {
    return std::map<std::string, at::Tensor>{{"big", at::empty({5, 1 << 20})},
                                             {"small", at::empty({1000})},
                                             {"mid", at::empty({3, 1 << 20})}};
  };
  for (int threads : {1, 3, 8}) {
    ReadOptions ro;
    ro.threads = threads;
    auto d = dests();
    CheckpointReader::Open(path, ro)->ReadInto(d);
    for (const auto& kv : d) {
      EXPECT_TRUE(at::equal(kv.second, saved.at(kv.first).tensor())) << kv.first << " " << threads;
    }
  }
  auto info = CheckpointReader::Open(path)->info();
  const TensorInfo* big = nullptr;
  for (const auto& t : info.tensors) {
    if (t.name == "big") big = &t;
  }
  ASSERT_NE(big, nullptr);
  // First block, a middle run, the last byte.
  for (uint64_t at : {uint64_t{7}, big->nbytes() / 2 + 3, big->nbytes() - 1}) {
    std::string bytes = clean;
    bytes[info.header_bytes + big->begin + at] ^= 0x01;
    WriteFileBytes(path, bytes);
    for (int threads : {1, 3}) {
      ReadOptions ro;
      ro.threads = threads;
      auto d = dests();
      Error e = CatchError([&] { CheckpointReader::Open(path, ro)->ReadInto(d); });
      EXPECT_EQ(e.code(), Error::Code::kCorruption) << at << " " << threads;
      EXPECT_TRUE(Contains(e.what(), "checksum mismatch in tensor 'big'")) << e.what();
    }
  }
}

// ---- partial loads read only what they need --------------------------------------

// Counts the bytes read through every file it opens.
class CountingEnv : public EnvWrapper {
 public:
  CountingEnv() : EnvWrapper(Env::Default()) {}
  std::unique_ptr<RandomAccessFile> NewRandomAccessFile(const std::string& path) override {
    return std::make_unique<File>(target()->NewRandomAccessFile(path), &bytes_);
  }
  uint64_t bytes() const { return bytes_.load(); }
  void Reset() { bytes_ = 0; }

 private:
  class File : public RandomAccessFile {
   public:
    File(std::unique_ptr<RandomAccessFile> f, std::atomic<uint64_t>* bytes)
        : f_(std::move(f)), bytes_(bytes) {}
    void Read(uint64_t offset, size_t n, void* dst) const override {
      *bytes_ += n;
      f_->Read(offset, n, dst);
    }
    uint64_t Size() const override { return f_->Size(); }
    const std::string& path() const override { return f_->path(); }

   private:
    std::unique_ptr<RandomAccessFile> f_;
    std::atomic<uint64_t>* bytes_;
  };
  std::atomic<uint64_t> bytes_{0};
};

TEST(PartialLoadTest, ReadsOnlyTheFramesOfTheSelectedTensor) {
  TempDir dir;
  // 32 tensors of 1 MiB of incompressible-ish floats; 256 KiB frames, so each
  // tensor spans 4 frames and the file holds ~130.
  StateDict state;
  torch::manual_seed(1);
  for (int i = 0; i < 32; ++i) state.set("t" + std::to_string(i), torch::randn({512, 512}));
  for (const Layout& l : {Layout{"plain", Compression::kNone, 0},
                          Layout{"zstd", Compression::kZstd, size_t{256} << 10}}) {
    SCOPED_TRACE(l.name);
    const std::string path = dir.file(std::string(l.name) + ".safetensors");
    WriteOptions o;
    o.compression = l.compression;
    if (l.chunk_size) o.chunk_size = l.chunk_size;
    o.fsync = false;
    const WriteResult w = WriteStateDict(state, path, o);
    CountingEnv env;
    auto reader = CheckpointReader::Open(path, {}, &env);
    const uint64_t open_bytes = env.bytes();
    const FileInfo& info = reader->info();
    // The header costs about the header (and seek table), never tensor data.
    EXPECT_LE(open_bytes, info.header_bytes + (l.compression == Compression::kNone ? 64 : 80 << 10))
        << "Open read " << open_bytes;
    env.Reset();
    const std::string name = "t17";
    at::Tensor dst = at::empty({512, 512});
    reader->ReadInto(std::map<std::string, at::Tensor>{{name, dst}});
    EXPECT_TRUE(at::equal(dst, state.at(name).tensor()));
    const uint64_t tensor_bytes = 512 * 512 * 4;
    if (l.compression == Compression::kNone) {
      EXPECT_EQ(env.bytes(), tensor_bytes);
    } else {
      // Its frames: 4 or 5 of ~256 KiB compressed each (a tensor need not
      // start on a frame boundary). At most one frame beyond its bytes at either end.
      const double per_frame = double(w.file_bytes) / info.num_frames;
      EXPECT_LE(env.bytes(), tensor_bytes * double(w.file_bytes) / w.logical_bytes + 2 * per_frame)
          << env.bytes() << " of " << w.file_bytes;
      EXPECT_LT(env.bytes(), w.file_bytes / 20);
    }
    // ReadTensors reads the same way.
    env.Reset();
    auto got = reader->ReadTensors({name});
    EXPECT_TRUE(at::equal(got.at(name), state.at(name).tensor()));
    EXPECT_LT(env.bytes(), w.file_bytes / 20);
  }
}

// ---- reading into tensors through a checkpointer (what the Trainer does) ------------

DefaultCheckpointerArguments PlainArgs(const std::string& dir) {
  DefaultCheckpointerArguments a;
  a.save_dir = dir;
  a.compression = Compression::kNone;
  a.fsync = false;
  a.log_level = "OFF";
  return a;
}

TEST(LoadTargetsTest, LoadFillsNamedTensorsInPlaceLeniently) {
  TempDir dir;
  Checkpoint saved;
  saved.module_interface_state.set("w", PatternTensor({4, 4}, at::kFloat, 1));
  saved.module_interface_state.set("b", PatternTensor({4}, at::kFloat, 2));
  saved.trainer_state.set("opt", PatternTensor({4, 4}, at::kFloat, 3));
  {
    DefaultCheckpointer c(PlainArgs(dir.path()));
    c.save(saved, 0, /*force=*/true);
  }
  at::Tensor w = at::zeros({4, 4});
  at::Tensor b_wrong = at::zeros({5});  // wrong shape: left alone
  LoadTargets targets;
  targets.into.module_interface_state.set("w", w);
  targets.into.module_interface_state.set("b", b_wrong);
  targets.into.trainer_state.set("absent", at::zeros({2}));  // not in the file: ignored
  DefaultCheckpointer c(PlainArgs(dir.path()));
  Checkpoint got = c.load(targets);
  EXPECT_EQ(got.module_interface_state.at("w").tensor().data_ptr(), w.data_ptr());
  EXPECT_TRUE(at::equal(w, saved.module_interface_state.at("w").tensor()));
  EXPECT_TRUE(at::equal(b_wrong, at::zeros({5})));
  EXPECT_TRUE(at::equal(got.module_interface_state.at("b").tensor(),
                        saved.module_interface_state.at("b").tensor()));
  EXPECT_TRUE(
      at::equal(got.trainer_state.at("opt").tensor(), saved.trainer_state.at("opt").tensor()));
  // Without targets, load() allocates again.
  Checkpoint again = c.load();
  EXPECT_NE(again.module_interface_state.at("w").tensor().data_ptr(), w.data_ptr());
}

TEST(LoadTargetsTest, AFailedReadIsRewrittenByTheFallbackOrReported) {
  TempDir dir;
  Checkpoint older, newer;
  older.module_interface_state.set("w", PatternTensor({64, 64}, at::kFloat, 1));
  newer.module_interface_state.set("w", PatternTensor({64, 64}, at::kFloat, 2));
  {
    DefaultCheckpointer c(PlainArgs(dir.path()));
    c.save(older, 0, /*force=*/true);
    c.save(newer, 1, /*force=*/true);
  }
  // A flipped byte at the end of w in the newest file: the read writes w,
  // then the checksum fails.
  const std::string newest = dir.file("model_1.safetensors");
  auto info = CheckpointReader::Open(newest)->info();
  std::string bytes = ReadFileBytes(newest);
  for (const auto& t : info.tensors) {
    if (t.name == "module_interface_state/w") bytes[info.header_bytes + t.end - 1] ^= 1;
  }
  WriteFileBytes(newest, bytes);
  at::Tensor w = at::zeros({64, 64});
  LoadTargets targets;
  targets.into.module_interface_state.set("w", w);
  {
    DefaultCheckpointer c(PlainArgs(dir.path()));
    Checkpoint got = c.load(targets);  // falls back to index 0, which rewrites w
    EXPECT_EQ(c.last_loaded_path(), dir.file("model_0.safetensors"));
    EXPECT_EQ(got.module_interface_state.at("w").tensor().data_ptr(), w.data_ptr());
    EXPECT_TRUE(at::equal(w, older.module_interface_state.at("w").tensor()));
  }
  // Nothing to fall back to: w holds part of the damaged file, and load() says so.
  Env::Default()->RemoveFile(dir.file("model_0.safetensors"));
  DefaultCheckpointer c(PlainArgs(dir.path()));
  Error e = CatchError([&] { c.load(targets); });
  EXPECT_EQ(e.code(), Error::Code::kCorruption);
  EXPECT_TRUE(Contains(e.what(), "module_interface_state/w")) << e.what();
}

// ---- the Trainer resumes through it ---------------------------------------------------

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(4, 32));
    bn = register_module("bn", torch::nn::BatchNorm1d(32));
    fc2 = register_module("fc2", torch::nn::Linear(32, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(torch::tanh(bn(fc1(x)))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};
TORCH_MODULE(Net);

class Regression : public ModuleInterface {
 public:
  explicit Regression(Net net) : ModuleInterface(net), net_(net) {}
  int64_t num_train_batches(int64_t) override { return 3; }
  torch::Tensor train_step(int64_t, int64_t, int64_t) override {
    torch::Tensor x = torch::randn({8, 4});
    return torch::mse_loss(net_->forward(x), x.sum(1, true));
  }
  OptimizersSchedulers get_optimizers_schedulers(int64_t, int64_t) override {
    OptimizersSchedulers os;
    os.optimizers.push_back(
        std::make_shared<torch::optim::Adam>(net_->parameters(), torch::optim::AdamOptions(1e-2)));
    return os;
  }
  Net net_;
};

TrainerArguments Args(const std::string& dir, int64_t epochs) {
  TrainerArguments a;
  a.epochs = epochs;
  a.log_level = "OFF";
  a.checkpointer_args.save_dir = dir;
  a.checkpointer_args.model_state_save_dir = "";
  a.checkpointer_args.compression = Compression::kNone;
  a.checkpointer_args.fsync = false;
  a.checkpointer_args.log_level = "OFF";
  return a;
}

std::map<std::string, std::string> ParamBytes(const torch::nn::Module& m) {
  std::map<std::string, std::string> out;
  for (const auto& kv : FlattenTensors(ModuleState(m))) out[kv.first] = TensorBytes(kv.second);
  return out;
}

TEST(TrainerLoadIntoTest, ResumeReadsTheModuleInPlace) {
  TempDir dir;
  torch::manual_seed(0);
  std::map<std::string, std::string> trained;
  {
    auto m = std::make_shared<Regression>(Net());
    Trainer t(m, Args(dir.path(), 2));
    t.train();
    trained = ParamBytes(m->module());
  }
  torch::manual_seed(99);  // a differently initialized module
  auto m = std::make_shared<Regression>(Net());
  std::map<std::string, void*> ptrs;
  for (const auto& kv : FlattenTensors(ModuleState(m->module())))
    ptrs[kv.first] = kv.second.data_ptr();
  Trainer t(m, Args(dir.path(), 3));
  EXPECT_EQ(ParamBytes(m->module()), trained);
  // The loaded state holds the module's own tensors: read in place, not copied.
  const StateDict& loaded = t.checkpointed_states().module_interface_state;
  ASSERT_FALSE(loaded.empty());
  for (const auto& kv : FlattenTensors(loaded)) {
    SCOPED_TRACE(kv.first);
    EXPECT_EQ(kv.second.data_ptr(), ptrs.at(kv.first));
  }
  t.restore();
  EXPECT_EQ(t.last_epoch(), 1);
  t.train();  // and training goes on from there
  EXPECT_EQ(t.last_epoch(), 2);
}

TEST(TrainerLoadIntoTest, CorruptNewestFallsBackAndOverwritesWhatItDamaged) {
  TempDir dir;
  torch::manual_seed(0);
  {
    auto m = std::make_shared<Regression>(Net());
    Trainer t(m, Args(dir.path(), 2));
    t.train();
  }
  const std::string newest = dir.file("model_1.safetensors");
  const std::string older = dir.file("model_0.safetensors");
  ASSERT_TRUE(Env::Default()->FileExists(newest));
  std::map<std::string, std::string> want;
  for (const auto& kv : FlattenTensors(ReadStateDict(older).at("module_interface_state").dict()))
    want[kv.first] = TensorBytes(kv.second);
  // Damage the last module tensor of the newest file: read after the others,
  // so they have all been written into the module when the checksum fails.
  auto info = CheckpointReader::Open(newest)->info();
  std::string bytes = ReadFileBytes(newest);
  std::string damaged;
  for (const auto& t : info.tensors) {
    if (t.name.rfind("module_interface_state/", 0) == 0 && t.nbytes() > 0) damaged = t.name;
  }
  for (const auto& t : info.tensors) {
    if (t.name == damaged) bytes[info.header_bytes + t.begin] ^= 0x10;
  }
  WriteFileBytes(newest, bytes);
  {
    auto m = std::make_shared<Regression>(Net());
    Trainer t(m, Args(dir.path(), 3));
    EXPECT_EQ(ParamBytes(m->module()), want) << "the older checkpoint restored every tensor";
  }
  // No older checkpoint to fall back to: the module would start from a mix
  // of initial values and a corrupt file's bytes, so the Trainer refuses.
  Env::Default()->RemoveFile(older);
  auto m = std::make_shared<Regression>(Net());
  Error e = CatchError([&] { Trainer t(m, Args(dir.path(), 3)); });
  EXPECT_EQ(e.code(), Error::Code::kCorruption);
  EXPECT_TRUE(Contains(e.what(), damaged.substr(damaged.find('/') + 1))) << e.what();
}

}  // namespace
}  // namespace ackpt
