// `ackpt convert`: files written by Python's torch.save (generated here with
// /usr/bin/python3 and torch) become ackpt checkpoints with exactly the same
// values; what cannot be converted is an error naming its key path.
#include <ATen/ATen.h>

#include <cmath>

#include "ackpt/format.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::Contains;

using testing::PatternTensor;
using testing::ReadFileBytes;
using testing::RunCommand;
using testing::TempDir;
using testing::WriteFileBytes;

std::string Quote(const std::string& s) { return "'" + s + "'"; }

// Writes the object `case_name` selects with torch.save(obj, path, **kwargs).
// pattern() mirrors testing::PatternTensor.
const char* kWriter = R"PY(
import collections, sys, torch

def pattern(shape, dtype, seed=0):
    n = 1
    for d in shape:
        n *= d
    t = torch.arange(n, dtype=torch.int64).mul(7).add(seed).remainder(251).sub(100)
    if dtype == torch.bool:
        return t.remainder(2).eq(1).reshape(shape)
    if dtype.is_floating_point:
        return t.to(torch.float64).div(8).to(dtype).reshape(shape)
    if dtype == torch.uint8:
        return t.add(100).to(dtype).reshape(shape)
    return t.to(dtype).reshape(shape)

def full():
    # What nn.Module.state_dict() returns: an OrderedDict with _metadata.
    model = collections.OrderedDict()
    model["encoder.weight"] = pattern([4, 3], torch.float32, 1)
    model["head.weight"] = pattern([2, 4], torch.bfloat16, 2)
    model["enc/w%"] = pattern([3], torch.float16, 3)
    model._metadata = collections.OrderedDict([("", {"version": 1})])
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    return {
        "model": model,
        "optimizer": {  # as torch.optim.AdamW.state_dict(): int keys, tuples, None
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": pattern([4, 3], torch.float32, 4)}},
            "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-08,
                              "foreach": None, "params": [0]}],
        },
        "single": {"only": 1},                       # one-item dict: pickle SETITEM
        "one": [pattern([2], torch.int64, 5)],       # one-item list: pickle APPEND
        "dtypes": {"i8": pattern([5], torch.int8, 6), "u8": pattern([5], torch.uint8, 7),
                   "i16": pattern([2, 3], torch.int16, 8), "i32": pattern([4], torch.int32, 9),
                   "bool": pattern([3], torch.bool, 10), "f64": pattern([2, 2], torch.float64, 11),
                   "empty": pattern([0, 3], torch.float32, 12), "scalar": pattern([], torch.int64, 13)},
        "view": base.t()[1:],                        # a strided view into a shared storage
        "row": base[2],
        "param": torch.nn.Parameter(pattern([2], torch.float32, 14)),
        "epoch": 3, "neg": -5, "big": 2**40, "lr": 0.5, "nan": float("nan"), "ninf": float("-inf"),
        "flag": True, "name": "adamw", "tuple": (1, 2.5, "x"),
        "nested": [[1, 2], {"k": pattern([2], torch.float32, 15)}],
    }

cases = {
    "full": full,
    "complex": lambda: {"a": {"b": [1, torch.zeros(2, dtype=torch.complex64)]}},
    "none_in_list": lambda: {"a": [1, None]},
    "set": lambda: {"opt": {"names": {"x", "y"}}},
    "float_key": lambda: {"opt": {1.5: torch.ones(1)}},
    "list_root": lambda: [torch.ones(1)],
    "odict": lambda: {"stats": collections.Counter(a=1)},
}
kwargs = {}
case = sys.argv[1]
if case == "legacy":
    case, kwargs = "full", {"_use_new_zipfile_serialization": False}
torch.save(cases[case](), sys.argv[2], **kwargs)
)PY";

class ConvertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (RunCommand(std::string(ACKPT_TEST_PYTHON) + " -c 'import torch'") != 0) {
      GTEST_SKIP() << ACKPT_TEST_PYTHON << " has no torch (Debian: python3-torch)";
    }
    WriteFileBytes(dir_.file("writer.py"), kWriter);
  }

  // torch.save()s case `name` into dir_/name.pt; returns the path.
  std::string Write(const std::string& name) {
    const std::string pt = dir_.file(name + ".pt");
    std::string out;
    EXPECT_EQ(RunCommand(std::string(ACKPT_TEST_PYTHON) + " " + Quote(dir_.file("writer.py")) +
                             " " + name + " " + Quote(pt),
                         &out),
              0)
        << out;
    return pt;
  }

  int Convert(const std::string& args, std::string* out) {
    return RunCommand(std::string(ACKPT_CLI) + " convert " + args, out);
  }

  // The StateDict `full` converts to.
  static StateDict Expected() {
    StateDict model;
    model.set("encoder.weight", PatternTensor({4, 3}, at::kFloat, 1));
    model.set("head.weight", PatternTensor({2, 4}, at::kBFloat16, 2));
    model.set("enc/w%", PatternTensor({3}, at::kHalf, 3));
    StateDict optimizer;
    optimizer.set("state",
                  StateDict{{"0", StateDict{{"step", at::scalar_tensor(3.0, at::kFloat)},
                                            {"exp_avg", PatternTensor({4, 3}, at::kFloat, 4)}}}});
    optimizer.set(
        "param_groups",
        List{StateDict{
            {"lr", 0.001}, {"betas", List{0.9, 0.999}}, {"eps", 1e-08}, {"params", List{0}}}});
    StateDict dtypes{{"i8", PatternTensor({5}, at::kChar, 6)},
                     {"u8", PatternTensor({5}, at::kByte, 7)},
                     {"i16", PatternTensor({2, 3}, at::kShort, 8)},
                     {"i32", PatternTensor({4}, at::kInt, 9)},
                     {"bool", PatternTensor({3}, at::kBool, 10)},
                     {"f64", PatternTensor({2, 2}, at::kDouble, 11)},
                     {"empty", PatternTensor({0, 3}, at::kFloat, 12)},
                     {"scalar", PatternTensor({}, at::kLong, 13)}};
    const at::Tensor base = at::arange(12, at::kFloat).reshape({3, 4});
    StateDict s;
    s.set("model", model);
    s.set("optimizer", optimizer);
    s.set("single", StateDict{{"only", 1}});
    s.set("one", List{PatternTensor({2}, at::kLong, 5)});
    s.set("dtypes", dtypes);
    s.set("view", base.t().slice(0, 1));
    s.set("row", base[2]);
    s.set("param", PatternTensor({2}, at::kFloat, 14));
    s.set("epoch", 3);
    s.set("neg", -5);
    s.set("big", int64_t{1} << 40);
    s.set("lr", 0.5);
    s.set("nan", std::nan(""));
    s.set("ninf", -INFINITY);
    s.set("flag", true);
    s.set("name", "adamw");
    s.set("tuple", List{1, 2.5, "x"});
    s.set("nested", List{List{1, 2}, StateDict{{"k", PatternTensor({2}, at::kFloat, 15)}}});
    return s;
  }

  TempDir dir_;
};

TEST_F(ConvertTest, TorchSaveStateDictConvertsExactly) {
  const std::string pt = Write("full");
  for (const std::string out_name : {"full.safetensors.zst", "full.safetensors"}) {
    SCOPED_TRACE(out_name);
    const std::string out_path = dir_.file(out_name);
    std::string out;
    ASSERT_EQ(Convert(Quote(pt) + " -o " + Quote(out_path), &out), 0) << out;
    EXPECT_TRUE(Contains(out, "wrote " + out_path)) << out;
    // The one None (optimizer param_groups' foreach) is dropped and named.
    EXPECT_TRUE(
        Contains(out, "dropped 1 None value (--none skip): optimizer/param_groups/0/foreach"))
        << out;
    auto reader = CheckpointReader::Open(out_path);
    EXPECT_EQ(reader->info().compressed, out_name.size() > 16);  // .zst -> compressed
    EXPECT_EQ(reader->info().metadata.at("converted_from"), "full.pt");
    reader->Verify();
    std::string why;
    EXPECT_TRUE(ExactlyEqual(reader->ReadStateDict(), Expected(), &why)) << why;
  }
}

TEST_F(ConvertTest, NoneCanBeRefused) {
  const std::string pt = Write("full");
  std::string out;
  EXPECT_EQ(Convert(Quote(pt) + " -o " + Quote(dir_.file("x.safetensors")) + " --none error", &out),
            1);
  EXPECT_TRUE(Contains(out, "None at 'optimizer/param_groups/0/foreach'")) << out;
  EXPECT_FALSE(Env::Default()->FileExists(dir_.file("x.safetensors")));
}

TEST_F(ConvertTest, UnsupportedValuesNameTheirKeyPath) {
  struct Case {
    const char* name;
    std::vector<std::string> expected;  // parts of the error message
  };
  const Case cases[] = {
      {"complex", {"ComplexFloat", "'a/b/1'"}},
      {"none_in_list", {"None at 'a/1'"}},
      {"set", {"a set", "'opt/names'"}},
      {"float_key", {"dict key of type float", "'opt'"}},
      {"list_root", {"holds list, not a dict"}},
      {"odict", {"collections.Counter", "'stats'"}},
      {"legacy", {"_use_new_zipfile_serialization=False", "zip"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string pt = Write(c.name);
    const std::string out_path = dir_.file(std::string(c.name) + ".safetensors");
    std::string out;
    EXPECT_EQ(Convert(Quote(pt) + " -o " + Quote(out_path), &out), 1) << out;
    for (const auto& part : c.expected) EXPECT_TRUE(Contains(out, part)) << part << "\n" << out;
    EXPECT_FALSE(Env::Default()->FileExists(out_path));
  }
}

TEST_F(ConvertTest, MissingAndDamagedInputsAreClearErrors) {
  std::string out;
  const std::string missing = dir_.file("missing.pt");
  EXPECT_EQ(Convert(Quote(missing) + " -o " + Quote(dir_.file("m.safetensors")), &out), 1);
  EXPECT_TRUE(Contains(out, missing)) << out;
  // A truncated archive.
  const std::string pt = Write("full");
  const std::string bytes = ReadFileBytes(pt);
  const std::string cut = dir_.file("cut.pt");
  WriteFileBytes(cut, bytes.substr(0, bytes.size() / 2));
  EXPECT_EQ(Convert(Quote(cut) + " -o " + Quote(dir_.file("c.safetensors")), &out), 1);
  EXPECT_TRUE(Contains(out, cut) && Contains(out, "cannot read")) << out;
  EXPECT_FALSE(Env::Default()->FileExists(dir_.file("c.safetensors")));
}

}  // namespace
}  // namespace ackpt
