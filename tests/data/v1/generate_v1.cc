// How the format-version-1 fixtures in this folder were made (kept for the
// record; not built). It ran once against ackpt at commit 321ce27, the last
// writer of version 1. tests/format_compat_test.cc rebuilds the same state
// with FixtureState() and checks that these files still load bit-exact.
#include <ATen/ATen.h>
#include <ackpt/ackpt.h>

#include <cstdio>

static ackpt::StateDict FixtureState() {
  ackpt::StateDict s;
  s.set("w_f32", at::arange(0, 40000, at::kFloat).mul(0.001).reshape({200, 200}));
  s.set("w_f64", at::arange(0, 3000, at::kDouble).mul(0.5).reshape({30, 100}));
  s.set("w_bf16", at::arange(0, 5000, at::kFloat).mul(0.01).to(at::kBFloat16));
  s.set("w_f16", at::arange(0, 5000, at::kFloat).mul(0.01).to(at::kHalf).reshape({50, 100}));
  s.set("idx_i64", at::arange(0, 777, at::kLong));
  s.set("mask_bool", at::arange(0, 99, at::kInt).remainder(3).eq(0));
  s.set("bytes_u8", at::arange(0, 256, at::kInt).to(at::kByte));
  s.set("scalar", at::scalar_tensor(3.5, at::kFloat));
  s.set("empty", at::empty({0, 4}, at::kFloat));
  ackpt::StateDict nested{{"step", 42}, {"lr", 0.125}, {"name", "v1-fixture"}, {"flag", true}};
  nested.set("list", ackpt::List{ackpt::Value(1), ackpt::Value("two"), ackpt::Value(at::ones({3}))});
  s.set("trainer", nested);
  return s;
}

int main() {
  ackpt::WriteOptions o;
  o.chunk_size = 64 * 1024;  // several frames
  o.compression = ackpt::Compression::kZstd;
  ackpt::WriteStateDict(FixtureState(), "state_v1.safetensors.zst", o);
  o.compression = ackpt::Compression::kNone;
  ackpt::WriteStateDict(FixtureState(), "state_v1.safetensors", o);
  // Written by the checkpointer: metadata for the catalog (kind, index, time, metrics).
  ackpt::DefaultCheckpointerArguments a;
  a.save_dir = "ckpt";
  a.chunk_size = 64 * 1024;
  ackpt::DefaultCheckpointer c(a);
  for (int i : {10, 20}) {
    ackpt::Checkpoint cp;
    cp.module_interface_state = FixtureState();
    cp.trainer_backend_state.set("step", i);
    cp.metrics["val_loss"] = 1.0 / i;
    c.save(cp, i, /*force=*/true);
  }
  std::puts("ok");
  return 0;
}
