// Incremental checkpoints (docs/INCREMENTAL.md): tensors unchanged since the
// lineage last wrote them are referenced, not copied or written; loads
// follow the references; retention keeps what kept checkpoints reference.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "ackpt/checkpointer.h"
#include "ackpt/error.h"
#include "ackpt/format.h"
#include "ackpt/retention.h"
#include "ackpt/trainer.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::ListDir;
using testing::PatternTensor;
using testing::ReadFileBytes;
using testing::TempDir;
using testing::TensorBytes;
using testing::WriteFileBytes;

// A LoRA-shaped state: a frozen backbone (most of the bytes), a trained
// adapter and its optimizer state.
struct Model {
  at::Tensor w0 = PatternTensor({256, 256}, at::kFloat, 1);
  at::Tensor w1 = PatternTensor({256, 128}, at::kFloat, 2);
  at::Tensor emb = PatternTensor({512, 64}, at::kHalf, 3);
  at::Tensor a = PatternTensor({16, 8}, at::kFloat, 4);
  at::Tensor b = PatternTensor({8, 16}, at::kFloat, 5);
  at::Tensor m_a = at::zeros({16, 8});
  at::Tensor m_b = at::zeros({8, 16});
  int step = 0;

  Checkpoint Get() const {
    Checkpoint c;
    c.module_interface_state =
        StateDict{{"backbone", StateDict{{"w0", w0}, {"w1", w1}, {"emb", emb}}},
                  {"adapter", StateDict{{"a", a}, {"b", b}}}};
    c.trainer_state = StateDict{{"optimizer", StateDict{{"m_a", m_a}, {"m_b", m_b}}},
                                {"step", static_cast<int64_t>(step)}};
    return c;
  }
  // One training step: only the adapter and its optimizer state change, in place.
  void Step() {
    at::NoGradGuard g;
    a.add_(0.5);
    b.mul_(1.5);
    m_a.add_(1);
    m_b.sub_(1);
    ++step;
  }
  uint64_t changed_bytes() const { return a.nbytes() + b.nbytes() + m_a.nbytes() + m_b.nbytes(); }
};

const std::set<std::string> kChanged = {
    "module_interface_state/adapter/a", "module_interface_state/adapter/b",
    "trainer_state/optimizer/m_a", "trainer_state/optimizer/m_b"};
const std::set<std::string> kFrozen = {"module_interface_state/backbone/w0",
                                       "module_interface_state/backbone/w1",
                                       "module_interface_state/backbone/emb"};

DefaultCheckpointerArguments Args(const std::string& dir, Compression compression) {
  DefaultCheckpointerArguments a;
  a.save_dir = dir;
  a.model_state_save_dir = dir;
  a.compression = compression;
  a.incremental.enabled = true;
  return a;
}

std::set<std::string> HeldNames(const std::string& path) {
  std::set<std::string> out;
  auto reader = CheckpointReader::Open(path);
  for (const auto& t : reader->info().tensors) out.insert(t.name);
  return out;
}

std::map<std::string, std::string> ReferencedFrom(const std::string& path) {
  std::map<std::string, std::string> out;
  auto reader = CheckpointReader::Open(path);
  for (const auto& r : reader->info().references) out[r.name] = r.file;
  return out;
}

// Every tensor of a state by flattened name: its dtype, shape and a hash of
// its bytes (short enough to print when two states differ).
std::map<std::string, std::string> Bytes(const StateDict& s) {
  std::map<std::string, std::string> out;
  for (const auto& kv : FlattenTensors(s)) {
    out[kv.first] = std::string(c10::toString(kv.second.scalar_type())) + " " +
                    c10::str(kv.second.sizes()) + " " +
                    std::to_string(std::hash<std::string>()(TensorBytes(kv.second)));
  }
  return out;
}

// A backbone tensor of a checkpoint read as a whole StateDict.
at::Tensor BackboneTensor(const StateDict& s, const std::string& name) {
  return s.at("module_interface_state").dict().at("backbone").dict().at(name).tensor();
}

StateDict AsState(const Checkpoint& c) {
  return StateDict{{"module_interface_state", c.module_interface_state},
                   {"trainer_state", c.trainer_state}};
}

class IncrementalTest : public ::testing::TestWithParam<Compression> {};

TEST_P(IncrementalTest, LaterSavesHoldOnlyWhatChangedAndLoadEqualToAFullSave) {
  TempDir inc, full;
  Model m;
  std::vector<SaveStats> stats;
  std::mutex mu;
  DefaultCheckpointerArguments a = Args(inc.path(), GetParam());
  a.on_save = [&](const SaveStats& s) {
    std::lock_guard<std::mutex> l(mu);
    stats.push_back(s);
  };
  DefaultCheckpointerArguments fa = a;
  fa.save_dir = fa.model_state_save_dir = full.path();
  fa.incremental.enabled = false;
  fa.on_save = nullptr;
  {
    DefaultCheckpointer ck(a), fck(fa);
    for (int i = 0; i < 4; ++i) {
      ck.save(m.Get(), i);
      fck.save(m.Get(), i);
      ck.wait();
      m.Step();
    }
    ck.wait();
    fck.wait();
    const CheckpointerCounters c = ck.counters();
    EXPECT_EQ(c.tensors_referenced, 3u * 3u);
    EXPECT_EQ(c.bytes_referenced, 3 * (m.w0.nbytes() + m.w1.nbytes() + m.emb.nbytes()));
  }
  ASSERT_EQ(stats.size(), 4u);
  for (int i = 1; i < 4; ++i) {
    const std::string path = stats[i].path;
    EXPECT_EQ(HeldNames(path), kChanged) << path;
    // Staged (copied) bytes are the changed tensors' only.
    EXPECT_EQ(stats[i].bytes, m.changed_bytes());
    const auto refs = ReferencedFrom(path);
    ASSERT_EQ(refs.size(), kFrozen.size());
    for (const auto& kv : refs) {
      EXPECT_TRUE(kFrozen.count(kv.first)) << kv.first;
      // Always the holder itself, never a chain through 1 or 2.
      EXPECT_EQ(kv.second, BaseName(stats[0].path));
    }
    // Loads byte-equal to the full save of the same state.
    const StateDict got = ReadStateDict(path);
    const StateDict want = ReadStateDict(JoinPath(full.path(), BaseName(path)));
    EXPECT_EQ(Bytes(got), Bytes(want)) << path;
    EXPECT_EQ(got.at("trainer_state").dict().at("step").to_int(), i);
    CheckpointReader::Open(path)->Verify();
  }
  EXPECT_EQ(HeldNames(stats[0].path).size(), kChanged.size() + kFrozen.size());

  // load() of the newest resumes it, also into existing tensors.
  Model fresh;
  fresh.w0.zero_();
  LoadTargets t;
  t.into = fresh.Get();
  DefaultCheckpointerArguments ra = Args(inc.path(), GetParam());
  DefaultCheckpointer reader(ra);
  Checkpoint c = reader.load(t);
  EXPECT_EQ(reader.last_loaded_path(), stats[3].path);
  EXPECT_EQ(TensorBytes(fresh.w0), TensorBytes(m.w0));
  EXPECT_EQ(Bytes(AsState(c)),
            Bytes(ReadStateDict(JoinPath(full.path(), BaseName(stats[3].path)))));
  EXPECT_TRUE(c.module_interface_state.at("backbone").dict().at("w0").tensor().is_same(fresh.w0));
  // A partial read of a referenced tensor touches only its holder's bytes.
  auto r = CheckpointReader::Open(stats[3].path);
  auto one = r->ReadTensors({"module_interface_state/backbone/w1"});
  EXPECT_EQ(TensorBytes(one.at("module_interface_state/backbone/w1")), TensorBytes(m.w1));
}

INSTANTIATE_TEST_SUITE_P(Codecs, IncrementalTest,
                         ::testing::Values(Compression::kNone, Compression::kZstd),
                         [](const ::testing::TestParamInfo<Compression>& i) {
                           return i.param == Compression::kNone ? std::string("plain")
                                                                : std::string("zstd");
                         });

TEST(Incremental, ATensorChangedInPlaceIsWrittenAgainAndFullEveryWritesEverything) {
  TempDir dir;
  Model m;
  DefaultCheckpointerArguments a = Args(dir.path(), Compression::kNone);
  a.incremental.full_every = 3;
  std::vector<std::string> paths;
  a.on_save = [&](const SaveStats& s) { paths.push_back(s.path); };
  {
    DefaultCheckpointer ck(a);
    for (int i = 0; i < 7; ++i) {
      if (i == 2) {
        at::NoGradGuard g;
        m.w1.mul_(-1);  // a frozen tensor changed after all
      }
      ck.save(m.Get(), i, /*force=*/true);
      m.Step();
    }
  }
  ASSERT_EQ(paths.size(), 7u);
  const size_t all = kChanged.size() + kFrozen.size();
  EXPECT_EQ(HeldNames(paths[0]).size(), all);
  EXPECT_EQ(HeldNames(paths[1]), kChanged);
  std::set<std::string> two = kChanged;
  two.insert("module_interface_state/backbone/w1");
  EXPECT_EQ(HeldNames(paths[2]), two);
  EXPECT_EQ(HeldNames(paths[3]).size(), all);  // full_every
  EXPECT_EQ(HeldNames(paths[4]), kChanged);
  EXPECT_EQ(HeldNames(paths[6]).size(), all);
  // 2's w1 references 2 from then on, the others 0 (until the full save 3).
  auto refs2 = ReferencedFrom(paths[2]);
  EXPECT_EQ(refs2.count("module_interface_state/backbone/w1"), 0u);
  auto refs4 = ReferencedFrom(paths[4]);
  for (const auto& kv : refs4) EXPECT_EQ(kv.second, BaseName(paths[3]));
  EXPECT_EQ(TensorBytes(BackboneTensor(ReadStateDict(paths[5]), "w1")), TensorBytes(m.w1));
}

TEST(Incremental, ATensorReplacedOrResavedUnderTheSameIndexIsWritten) {
  TempDir dir;
  Model m;
  std::vector<std::string> paths;
  DefaultCheckpointerArguments a = Args(dir.path(), Compression::kNone);
  a.on_save = [&](const SaveStats& s) { paths.push_back(s.path); };
  DefaultCheckpointer ck(a);
  ck.save(m.Get(), 0, true);
  m.w0 = m.w0.clone();  // same bytes, new storage
  ck.save(m.Get(), 1, true);
  EXPECT_TRUE(HeldNames(paths[1]).count("module_interface_state/backbone/w0"));
  ck.save(m.Get(), 1, true);  // w0's holder is the file this save replaces: written again
  EXPECT_EQ(HeldNames(paths[2]), std::set<std::string>{"module_interface_state/backbone/w0"});
  for (const auto& kv : ReferencedFrom(paths[2])) EXPECT_EQ(kv.second, BaseName(paths[0]));
  EXPECT_EQ(Bytes(ReadStateDict(paths[2])), Bytes(AsState(m.Get())));
  // After a load the next save is full (the loaded tensors are new).
  ck.load();
  ck.save(m.Get(), 2, true);
  EXPECT_TRUE(ReferencedFrom(paths[3]).empty());
  ck.save(m.Get(), 3, true);
  EXPECT_EQ(ReferencedFrom(paths[4]).size(), kChanged.size() + kFrozen.size());
}

TEST(Incremental, RetentionKeepsBasesAndDeletesThemWhenNothingReferencesThem) {
  TempDir dir;
  Model m;
  DefaultCheckpointerArguments a = Args(dir.path(), Compression::kZstd);
  a.retention.keep_last = 1;
  a.incremental.full_every = 4;
  DefaultCheckpointer ck(a);
  for (int i = 0; i < 3; ++i) {
    ck.save(m.Get(), i, true);
    m.Step();
  }
  // keep_last = 1 with an old base: 2 and its base 0 stay, 1 goes.
  std::vector<CheckpointEntry> entries = ck.list_checkpoints();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].index, 2);
  EXPECT_EQ(entries[1].index, 0);
  EXPECT_EQ(entries[1].kept_by, std::vector<std::string>{"base"});
  EXPECT_EQ(entries[0].references, std::vector<std::string>{BaseName(entries[1].path)});
  for (int i = 3; i < 6; ++i) {
    ck.save(m.Get(), i, true);
    m.Step();
  }
  // 4 is full (full_every): nothing references 0 any more, and it went.
  entries = ck.list_checkpoints();
  std::vector<int64_t> kept;
  for (const auto& e : entries) kept.push_back(e.index);
  EXPECT_EQ(kept, (std::vector<int64_t>{5, 4}));
  // Everything kept still loads.
  for (const auto& e : entries) ReadStateDict(e.path);
}

TEST(Incremental, DependentsAreDeletedBeforeTheirBases) {
  std::vector<CheckpointEntry> entries(3);
  for (int i = 0; i < 3; ++i) {
    entries[i].index = i;
    entries[i].generation = static_cast<uint64_t>(i + 1);
    entries[i].path = "/d/model_" + std::to_string(i) + ".safetensors";
    entries[i].parent = i - 1;
  }
  entries[1].references = {"model_0.safetensors"};
  entries[2].references = {"model_0.safetensors", "model_1.safetensors"};
  entries.push_back(entries[2]);
  entries[3].index = 3;
  entries[3].generation = 4;
  entries[3].parent = 2;
  entries[3].path = "/d/model_3.safetensors";
  entries[3].references = {};
  RetentionPolicy p;
  p.keep_last = 1;
  std::vector<CheckpointEntry> doomed = EvaluateRetention(&entries, p);
  ASSERT_EQ(doomed.size(), 3u);
  // 2 references 1 and 0, 1 references 0: 2, then 1, then 0.
  EXPECT_EQ(doomed[0].index, 2);
  EXPECT_EQ(doomed[1].index, 1);
  EXPECT_EQ(doomed[2].index, 0);
  // A kept dependent keeps its bases, and a kept base its own.
  entries.erase(std::find_if(entries.begin(), entries.end(),
                             [](const CheckpointEntry& e) { return e.index == 3; }));
  p.keep_last = 1;
  EXPECT_TRUE(EvaluateRetention(&entries, p).empty());
}

TEST(Incremental, RollbackNeverLeavesAReferenceToADeletedFile) {
  TempDir dir;
  Model m;
  DefaultCheckpointerArguments a = Args(dir.path(), Compression::kNone);
  a.retention.keep_last = 2;
  {
    DefaultCheckpointer ck(a);
    for (int i = 0; i < 5; ++i) {
      ck.save(m.Get(), i, true);
      m.Step();
    }
  }
  // Roll back to 3 (an incremental checkpoint referencing 0) and go on.
  DefaultCheckpointerArguments b = a;
  b.load_filename = "model_3.safetensors";
  DefaultCheckpointer ck(b);
  Checkpoint c = ck.load();
  for (int i = 4; i < 9; ++i) {
    ck.save(c, i, true);
    m.Step();
  }
  for (const auto& e : ck.list_checkpoints()) {
    ReadStateDict(e.path);  // every kept checkpoint's bases exist
    for (const auto& f : e.references) EXPECT_TRUE(Env::Default()->FileExists(dir.file(f))) << f;
  }
}

TEST(Incremental, ADeletedOrDamagedBaseMakesItsDependentsInvalidAndResumeFallsBack) {
  for (const bool damage : {false, true}) {
    SCOPED_TRACE(damage ? "damaged base" : "deleted base");
    TempDir dir;
    Model m;
    DefaultCheckpointerArguments a = Args(dir.path(), Compression::kNone);
    a.incremental.full_every = 2;
    {
      DefaultCheckpointer ck(a);
      for (int i = 0; i < 4; ++i) {
        ck.save(m.Get(), i, true);
        m.Step();
      }
    }
    // 3 references 2 (full); 1 references 0.
    const std::string base = dir.file("model_2.safetensors");
    if (damage) {
      std::string bytes = ReadFileBytes(base);
      bytes[bytes.size() - 100] ^= 0x5a;  // inside the frozen backbone's bytes
      WriteFileBytes(base, bytes);
    } else {
      ASSERT_EQ(std::remove(base.c_str()), 0);
    }
    EXPECT_THROW(ReadStateDict(dir.file("model_3.safetensors")), Error);
    DefaultCheckpointer ck(Args(dir.path(), Compression::kNone));
    Checkpoint c = ck.load();
    EXPECT_EQ(ck.last_loaded_path(), dir.file("model_1.safetensors"));
    EXPECT_EQ(c.trainer_state.at("step").to_int(), 1);
  }
}

TEST(Incremental, VerifyCatchesAWriteThatBypassedTheVersionCounter) {
  TempDir dir;
  Model m;
  DefaultCheckpointerArguments a = Args(dir.path(), Compression::kNone);
  a.incremental.verify = true;
  std::vector<std::string> paths;
  a.on_save = [&](const SaveStats& s) {
    if (s.ok) paths.push_back(s.path);
  };
  DefaultCheckpointer ck(a);
  ck.save(m.Get(), 0, true);
  m.Step();
  ck.save(m.Get(), 1, true);  // verified: the references hold
  EXPECT_EQ(ReferencedFrom(paths.back()).size(), kFrozen.size());
  // A raw write: LibTorch's version counter does not move.
  static_cast<float*>(m.w0.data_ptr())[7] += 1.0f;
  ck.save(m.Get(), 2);
  try {
    ck.wait();
    FAIL() << "verify did not catch the raw write";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kCorruption);
    EXPECT_NE(std::string(e.what()).find("module_interface_state/backbone/w0"), std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(Env::Default()->FileExists(dir.file("model_2.safetensors")));
  // The next save is full, so it holds the new bytes.
  ck.save(m.Get(), 3, true);
  EXPECT_TRUE(ReferencedFrom(paths.back()).empty());
  EXPECT_EQ(TensorBytes(BackboneTensor(ReadStateDict(paths.back()), "w0")), TensorBytes(m.w0));
}

// What a file says after its save time and header checksum are blanked
// (the only bytes two saves of the same state at the same index differ in).
std::string WithoutTimeAndHeaderChecksum(std::string bytes) {
  for (const std::string key : {"\"ackpt.time\":\"", "\"ackpt.header_xxh3\":\""}) {
    const size_t at = bytes.find(key);
    EXPECT_NE(at, std::string::npos) << key;
    if (at == std::string::npos) continue;
    const size_t begin = at + key.size(), end = bytes.find('"', begin);
    for (size_t i = begin; i < end; ++i) bytes[i] = '0';
  }
  return bytes;
}

TEST(Incremental, ExportMaterializesTheFileAFullSaveWrites) {
  TempDir dir, full, out_dir;
  Model m;
  DefaultCheckpointer ck(Args(dir.path(), Compression::kZstd));
  DefaultCheckpointerArguments fa = Args(full.path(), Compression::kNone);
  fa.incremental.enabled = false;
  DefaultCheckpointer fck(fa);
  for (int i = 0; i < 2; ++i) {
    ck.save(m.Get(), i, true);
    fck.save(m.Get(), i, true);
    m.Step();
  }
  const std::string inc = dir.file("model_1.safetensors.zst");
  ASSERT_FALSE(ReferencedFrom(inc).empty());
  const std::string out = out_dir.file("exported.safetensors");
  CheckpointReader::Open(inc)->ExportSafetensors(out);
  auto exported = CheckpointReader::Open(out);
  EXPECT_TRUE(exported->info().references.empty());
  EXPECT_EQ(exported->info().metadata.count("ackpt.refs"), 0u);
  EXPECT_EQ(exported->info().tensors.size(), kChanged.size() + kFrozen.size());
  exported->Verify();
  // Byte for byte the plain file a full save of the same state at the same
  // index writes, but for the save time (and so the header checksum).
  const std::string want = ReadFileBytes(full.file("model_1.safetensors"));
  const std::string got = ReadFileBytes(out);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(WithoutTimeAndHeaderChecksum(got) == WithoutTimeAndHeaderChecksum(want));
}

TEST(Incremental, ArgumentErrors) {
  TempDir dir, local;
  DefaultCheckpointerArguments a = Args(dir.path(), Compression::kNone);
  a.incremental.full_every = -1;
  EXPECT_THROW(DefaultCheckpointer{a}, Error);
  a = Args(dir.path(), Compression::kNone);
  a.local_tier.dir = local.path();
  try {
    DefaultCheckpointer ck(a);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("incremental"), std::string::npos) << e.what();
  }
  a = Args(dir.path(), Compression::kNone);
  a.backpressure = BackpressurePolicy::kReplacePending;
  EXPECT_THROW(DefaultCheckpointer{a}, Error);
}

// Frozen parameters (requires_grad = false) of a module trained by the
// Trainer are referenced; the trained ones and their optimizer state are not.
TEST(Incremental, TrainerWithAFrozenBackboneWritesOnlyTheAdapterAndItsOptimizerState) {
  TempDir dir;
  torch::manual_seed(0);
  auto backbone = torch::nn::Linear(64, 64);
  auto adapter = torch::nn::Linear(64, 4);
  for (auto& p : backbone->parameters()) p.set_requires_grad(false);
  torch::nn::Sequential net(backbone, adapter);
  torch::optim::Adam opt(adapter->parameters(), 1e-2);
  std::vector<std::string> paths;
  DefaultCheckpointerArguments a = Args(dir.path(), Compression::kNone);
  a.on_save = [&](const SaveStats& s) { paths.push_back(s.path); };
  DefaultCheckpointer ck(a);
  for (int i = 0; i < 3; ++i) {
    opt.zero_grad();
    net->forward(torch::randn({8, 64})).pow(2).mean().backward();
    opt.step();
    Checkpoint c;
    c.module_interface_state = ModuleState(*net);
    c.trainer_state = StateDict{{"optimizer", CaptureOptimizer(opt, *net)}};
    ck.save(c, i, true);
  }
  ASSERT_EQ(paths.size(), 3u);
  for (const auto& kv : ReferencedFrom(paths[2])) {
    EXPECT_NE(kv.first.find("module_interface_state/0."), std::string::npos) << kv.first;
  }
  EXPECT_EQ(ReferencedFrom(paths[2]).size(), 2u);  // backbone weight and bias
  for (const auto& name : HeldNames(paths[2])) {
    EXPECT_EQ(name.find("module_interface_state/0."), std::string::npos) << name;
  }
}

// The independent Python reader (tests/interop/read_safetensors.py, written
// from docs/FORMAT.md) follows references and checks their checksums.
TEST(Incremental, ThePythonReaderResolvesReferences) {
  std::string probe;
  if (testing::RunCommand(std::string(ACKPT_TEST_PYTHON) + " -c 'import torch, xxhash'", &probe) !=
      0) {
    GTEST_SKIP() << "python3 cannot import torch and xxhash: " << probe;
  }
  TempDir inc, full;
  Model m;
  DefaultCheckpointerArguments a = Args(inc.path(), Compression::kNone);
  DefaultCheckpointerArguments fa = Args(full.path(), Compression::kNone);
  fa.incremental.enabled = false;
  {
    DefaultCheckpointer ck(a), fck(fa);
    for (int i = 0; i < 3; ++i) {
      ck.save(m.Get(), i, true);
      fck.save(m.Get(), i, true);
      m.Step();
    }
  }
  const std::string script = std::string(ACKPT_TEST_PYTHON) + " '" + ACKPT_SOURCE_DIR +
                             "/tests/interop/read_safetensors.py' check ";
  std::string out;
  EXPECT_EQ(testing::RunCommand(script + inc.file("model_2.safetensors") + " --same-as " +
                                    full.file("model_2.safetensors"),
                                &out),
            0)
      << out;
  EXPECT_NE(out.find("3 references"), std::string::npos) << out;
  // A damaged holder fails the referenced checksum.
  const std::string base = inc.file("model_0.safetensors");
  std::string bytes = ReadFileBytes(base);
  bytes[bytes.size() - 100] ^= 0x01;
  WriteFileBytes(base, bytes);
  EXPECT_NE(testing::RunCommand(script + inc.file("model_2.safetensors"), &out), 0) << out;
}

// The CLI: inspect shows what is referenced and where, verify follows the
// references, export materializes a standalone file, ls shows bases.
TEST(Incremental, TheCliInspectsVerifiesExportsAndListsReferences) {
  TempDir dir, out;
  Model m;
  DefaultCheckpointerArguments a = Args(dir.path(), Compression::kZstd);
  a.retention.keep_last = 1;
  {
    DefaultCheckpointer ck(a);
    for (int i = 0; i < 3; ++i) {
      ck.save(m.Get(), i, true);
      m.Step();
    }
  }
  const std::string cli = ACKPT_CLI;
  const std::string inc = dir.file("model_2.safetensors.zst");
  std::string text;
  ASSERT_EQ(testing::RunCommand(cli + " inspect " + inc, &text), 0) << text;
  EXPECT_NE(text.find("references:  3"), std::string::npos) << text;
  EXPECT_NE(text.find("in model_0.safetensors.zst"), std::string::npos) << text;
  ASSERT_EQ(testing::RunCommand(cli + " inspect --json " + inc + " 2>/dev/null", &text), 0);
  const auto j = nlohmann::json::parse(text);
  ASSERT_EQ(j.at("references").size(), 3u);
  EXPECT_EQ(j.at("references")[0].at("file"), "model_0.safetensors.zst");
  EXPECT_EQ(j.at("tensors").size(), kChanged.size());

  ASSERT_EQ(testing::RunCommand(cli + " verify " + inc, &text), 0) << text;
  const std::string exported = out.file("model_2.safetensors");
  ASSERT_EQ(testing::RunCommand(cli + " export --quiet " + inc + " -o " + exported, &text), 0)
      << text;
  EXPECT_TRUE(CheckpointReader::Open(exported)->info().references.empty());
  EXPECT_EQ(Bytes(ReadStateDict(exported)), Bytes(ReadStateDict(inc)));

  ASSERT_EQ(testing::RunCommand(cli + " ls " + dir.path(), &text), 0) << text;
  EXPECT_NE(text.find("references: model_0.safetensors.zst"), std::string::npos) << text;
  EXPECT_NE(text.find("base of: 2"), std::string::npos) << text;
  EXPECT_NE(text.find("base"), std::string::npos) << text;
  ASSERT_EQ(testing::RunCommand(cli + " ls --json " + dir.path() + " 2>/dev/null", &text), 0);
  const auto l = nlohmann::json::parse(text);
  ASSERT_EQ(l.at("checkpoints").size(), 2u);  // 2 and its base 0 (keep_last = 1)
  EXPECT_EQ(l.at("checkpoints")[1].at("index"), 0);
  EXPECT_EQ(l.at("checkpoints")[1].at("kept_by"), nlohmann::json::array({"base"}));
  EXPECT_EQ(l.at("checkpoints")[1].at("base_of"), nlohmann::json::array({2}));

  // A damaged base: verify of the dependent fails and names the base.
  std::string bytes = ReadFileBytes(dir.file("model_0.safetensors.zst"));
  bytes[bytes.size() / 2] ^= 0x10;
  WriteFileBytes(dir.file("model_0.safetensors.zst"), bytes);
  EXPECT_NE(testing::RunCommand(cli + " verify " + inc, &text), 0) << text;
  EXPECT_NE(text.find("model_0.safetensors.zst"), std::string::npos) << text;
}

// A holder replaced by another file of the same name is not read as the
// referenced bytes: the referenced checksum differs (kCorruption naming it).
// (Malformed ackpt.refs values are in corruption_test.)
TEST(Incremental, AReplacedHolderIsCorruption) {
  TempDir dir;
  Model m;
  {
    DefaultCheckpointer ck(Args(dir.path(), Compression::kNone));
    ck.save(m.Get(), 0, true);
    m.Step();
    ck.save(m.Get(), 1, true);
  }
  const std::string path = dir.file("model_1.safetensors");
  // A holder replaced by another file of the same name: its checksum differs.
  std::string base = ReadFileBytes(dir.file("model_0.safetensors"));
  {
    StateDict other{{"module_interface_state",
                     StateDict{{"backbone", StateDict{{"w0", at::zeros({256, 256})}}}}}};
    WriteOptions o;
    o.compression = Compression::kNone;
    WriteStateDict(other, dir.file("model_0.safetensors"), o);
  }
  try {
    CheckpointReader::Open(path);
    ADD_FAILURE() << "a replaced holder was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kCorruption) << e.what();
    EXPECT_NE(std::string(e.what()).find("model_0.safetensors"), std::string::npos) << e.what();
  }
  WriteFileBytes(dir.file("model_0.safetensors"), base);
  CheckpointReader::Open(path)->Verify();
}

}  // namespace
}  // namespace ackpt
