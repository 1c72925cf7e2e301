#include "ackpt/state_dict.h"

#include <cmath>
#include <functional>
#include <limits>

#include "ackpt/error.h"
#include "ackpt/format.h"
#include "format/flatten.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::PatternTensor;
using testing::SampleState;

TEST(StateDictTest, KeepsInsertionOrderAndReplacesInPlace) {
  StateDict d;
  d.set("b", 1);
  d.set("a", 2);
  d.set("c", 3);
  d.set("a", 20);
  std::vector<std::string> keys;
  for (const auto& kv : d) keys.push_back(kv.first);
  EXPECT_EQ(keys, (std::vector<std::string>{"b", "a", "c"}));
  EXPECT_EQ(d.at("a").to_int(), 20);
  EXPECT_TRUE(d.erase("b"));
  EXPECT_FALSE(d.erase("b"));
  EXPECT_EQ(d.at("c").to_int(), 3);
  EXPECT_EQ(d.size(), 2u);
}

TEST(StateDictTest, WrongKindAndMissingKeyThrowClearErrors) {
  StateDict d{{"x", 1}};
  try {
    d.at("x").str();
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("int, not a string"), std::string::npos) << e.what();
  }
  try {
    d.at("nope");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kNotFound);
    EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos);
  }
  EXPECT_THROW(Value(at::Tensor()), Error);
}

// Every integral type is stored as int64 (`state.set("n", v.size())` used
// to be ambiguous); what does not fit is a clear error, never a wrap-around.
TEST(StateDictTest, AcceptsEveryIntegralTypeRangeChecked) {
  const std::vector<int> v(7);
  StateDict d;
  d.set("size", v.size());
  d.set("long_long", -5LL);
  d.set("unsigned", 4000000000u);
  d.set("uint64_max_fitting", static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
  d.set("int8", static_cast<int8_t>(-128));
  d.set("uint16", static_cast<uint16_t>(65535));
  d.set("long", std::numeric_limits<long>::min());
  StateDict listed{{"n", v.size()}, {"m", 3ULL}};
  for (const auto& kv : d) EXPECT_TRUE(kv.second.is_int()) << kv.first;
  EXPECT_EQ(d.at("size").to_int(), 7);
  EXPECT_EQ(d.at("long_long").to_int(), -5);
  EXPECT_EQ(d.at("unsigned").to_int(), 4000000000);
  EXPECT_EQ(d.at("uint64_max_fitting").to_int(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(d.at("int8").to_int(), -128);
  EXPECT_EQ(d.at("uint16").to_int(), 65535);
  EXPECT_EQ(d.at("long").to_int(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(listed.at("m").to_int(), 3);
  EXPECT_TRUE(d.at("size").is_int());
  EXPECT_TRUE(Value(true).is_bool());  // bool keeps its own kind

  for (uint64_t too_big : {uint64_t{1} << 63, std::numeric_limits<uint64_t>::max()}) {
    try {
      d.set("big", too_big);
      ADD_FAILURE() << too_big;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Error::Code::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("integer " + std::to_string(too_big) +
                                           " does not fit in a StateDict int"),
                std::string::npos)
          << e.what();
    }
  }
  EXPECT_FALSE(d.contains("big"));

  // They survive the file format like any int.
  std::vector<format::FlatTensor> flat;
  std::string tree;
  format::Flatten(d, &flat, &tree);
  std::string why;
  EXPECT_TRUE(ExactlyEqual(d, format::Unflatten(tree, {}, "test"), &why)) << why;
}

TEST(StateDictTest, TypedGettersNameThePath) {
  StateDict d{{"n", 3}, {"x", 1.5}, {"s", "str"}, {"l", List{1, 2}}, {"t", true}};
  d.set("sub", StateDict{{"k", 1}});
  EXPECT_EQ(d.get_int("n", "state"), 3);
  EXPECT_EQ(d.get_double("n", "state"), 3.0);  // an int is a number
  EXPECT_EQ(d.get_double("x", "state"), 1.5);
  EXPECT_EQ(d.get_string("s", "state"), "str");
  EXPECT_EQ(d.get_list("l", "state").size(), 2u);
  EXPECT_TRUE(d.get_bool("t", "state"));
  EXPECT_EQ(d.get_dict("sub", "state").get_int("k", "state.sub"), 1);
  auto message = [&](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Error::Code::kInvalidArgument) << e.what();
      return std::string(e.what());
    }
    ADD_FAILURE();
    return std::string();
  };
  EXPECT_NE(message([&] {
              d.get_int("x", "trainer_state");
            }).find("trainer_state.x is a double, not an int"),
            std::string::npos);
  EXPECT_NE(message([&] {
              d.get_dict("l", "trainer_state");
            }).find("trainer_state.l is a list, not a dict"),
            std::string::npos);
  EXPECT_NE(
      message([&] { d.get_tensor("nope", "trainer_state"); }).find("trainer_state has no 'nope'"),
      std::string::npos);
  EXPECT_NE(message([&] { d.at("s").to_bool("a.s"); }).find("a.s is a string, not a bool"),
            std::string::npos);
}

TEST(StateDictTest, CopyIsDeepForTreeSharedForTensors) {
  StateDict a = SampleState();
  StateDict b = a;
  b.at("optimizer").dict().set("step", 1);
  EXPECT_EQ(a.at("optimizer").dict().at("step").to_int(), 1234);
  EXPECT_TRUE(a.at("model")
                  .dict()
                  .at("encoder.bias")
                  .tensor()
                  .is_same(b.at("model").dict().at("encoder.bias").tensor()));
}

TEST(StateDictTest, ExactlyEqualNamesTheDifference) {
  StateDict a = SampleState();
  StateDict b = SampleState();
  EXPECT_TRUE(ExactlyEqual(a, b));
  b.at("model").dict().at("encoder.bias").tensor()[3] = 1000.0;
  std::string why;
  EXPECT_FALSE(ExactlyEqual(a, b, &why));
  EXPECT_NE(why.find("/model/encoder.bias"), std::string::npos) << why;
  StateDict c{{"d", 0.0}}, e{{"d", -0.0}};
  EXPECT_FALSE(ExactlyEqual(c, e));
  StateDict n1{{"d", std::nan("")}}, n2{{"d", std::nan("")}};
  EXPECT_TRUE(ExactlyEqual(n1, n2));
}

TEST(StateDictTest, CountsTensorsAndBytes) {
  StateDict s = SampleState();
  EXPECT_EQ(s.num_tensors(), 5u);
  EXPECT_EQ(s.tensor_bytes(), uint64_t{64 * 32 * 4 * 3 + 64 * 4 + 10 * 64 * 2});
}

TEST(FlattenTest, NamesAreEscapedAndUnambiguous) {
  // "a/b" as one key and "a" -> "b" as a path must not collide.
  StateDict s;
  s.set("a/b", PatternTensor({2}, at::kFloat));
  s.set("a", StateDict{{"b", PatternTensor({2}, at::kFloat, 1)}});
  s.set("100%", PatternTensor({1}, at::kFloat, 2));
  s.set("l", List{PatternTensor({1}, at::kInt), List{PatternTensor({1}, at::kInt, 1)}});
  std::vector<format::FlatTensor> flat;
  std::string tree;
  format::Flatten(s, &flat, &tree);
  std::vector<std::string> names;
  for (const auto& f : flat) names.push_back(f.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a%2Fb", "a/b", "100%25", "l/0", "l/1/0"}));
  EXPECT_EQ(FlatTensorName({"a/b"}), "a%2Fb");
  std::map<std::string, at::Tensor> tensors;
  for (const auto& f : flat) tensors[f.name] = f.tensor;
  StateDict back = format::Unflatten(tree, tensors, "test");
  std::string why;
  EXPECT_TRUE(ExactlyEqual(s, back, &why)) << why;
}

TEST(FlattenTest, ScalarsRoundTripExactly) {
  StateDict s;
  s.set("max", std::numeric_limits<int64_t>::max());
  s.set("min", std::numeric_limits<int64_t>::min());
  s.set("pi", 3.141592653589793);
  s.set("tiny", 4.9406564584124654e-324);
  s.set("neg0", -0.0);
  s.set("nan", std::numeric_limits<double>::quiet_NaN());
  s.set("inf", std::numeric_limits<double>::infinity());
  s.set("ninf", -std::numeric_limits<double>::infinity());
  s.set("one", 1.0);
  s.set("t", true);
  s.set("str", std::string("tab\t\"quote\" \xc3\xa9"));
  s.set("empty_str", std::string());
  s.set("nested_empty", List{List{}, StateDict{}});
  std::vector<format::FlatTensor> flat;
  std::string tree;
  format::Flatten(s, &flat, &tree);
  StateDict back = format::Unflatten(tree, {}, "test");
  std::string why;
  EXPECT_TRUE(ExactlyEqual(s, back, &why)) << why;
  EXPECT_TRUE(back.at("one").is_double());
}

TEST(FlattenTest, RejectsEmptyKeysReservedNamesAndBadUtf8) {
  std::vector<format::FlatTensor> flat;
  std::string tree;
  StateDict empty_key{{"", 1}};
  EXPECT_THROW(format::Flatten(empty_key, &flat, &tree), Error);
  StateDict nested_empty{{"a", StateDict{{"", 1}}}};
  try {
    format::Flatten(nested_empty, &flat, &tree);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos) << e.what();
  }
  StateDict reserved{{"__metadata__", PatternTensor({1}, at::kFloat)}};
  EXPECT_THROW(format::Flatten(reserved, &flat, &tree), Error);
  StateDict bad_utf8{{"k\xff", 1}};
  try {
    format::Flatten(bad_utf8, &flat, &tree);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kInvalidArgument);
  }
}

TEST(FlattenTest, MalformedTreesAreCorruption) {
  const std::map<std::string, at::Tensor> one{{"x", PatternTensor({1}, at::kFloat)}};
  for (const std::string tree :
       {"", "[]", "{\"d\":5}", "{\"d\":[[\"a\"]]}", "{\"d\":[[\"a\",{\"q\":1}]]}",
        "{\"d\":[[\"a\",{\"T\":\"missing\"}]]}", "{\"d\":[]}",
        "{\"d\":[[\"a\",{\"T\":\"x\"}],[\"b\",{\"T\":\"x\"}]]}",
        "{\"d\":[[\"a\",{\"T\":\"x\"}],[\"a\",{\"i\":1}]]}",
        "{\"d\":[[\"a\",{\"T\":\"x\"}],[\"b\",{\"i\":1.5}]]}"}) {
    try {
      format::Unflatten(tree, one, "file.safetensors");
      ADD_FAILURE() << "accepted " << tree;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Error::Code::kCorruption) << tree;
      EXPECT_NE(std::string(e.what()).find("file.safetensors"), std::string::npos);
    }
  }
  std::string deep = "{\"d\":[[\"a\",";
  for (int i = 0; i < 1000; ++i) deep += "{\"l\":[";
  EXPECT_THROW(format::Unflatten(deep, {}, "deep"), Error);
}

}  // namespace
}  // namespace ackpt
