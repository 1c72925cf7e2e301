// Writing your own checkpointer, as pymarlin's checkpointer page does: one
// that saves only every 5th index, on ackpt's asynchronous engine.
//
//   ackpt_example_custom_checkpointer [DIR]     (default DIR: ./custom_checkpoints)
//
// AbstractCheckpointer is the interface the Trainer drives (save / save_model
// / load / wait); AsyncWriter does the asynchronous part (snapshot into
// staging, then hash, compress, write, fsync, rename in the background);
// ReadCheckpointFile reads what it wrote. Exits non-zero if the resumed state
// differs from what was saved.
#include <ATen/ATen.h>

#include <cstdio>

#include "ackpt/ackpt.h"
#include "ackpt/async_writer.h"

class EveryFifthCheckpointer : public ackpt::AbstractCheckpointer {
 public:
  explicit EveryFifthCheckpointer(std::string dir) : dir_(std::move(dir)), writer_(Options()) {
    ackpt::Env::Default()->CreateDirs(dir_);
  }

  void save(const ackpt::Checkpoint& checkpoint, int64_t index, bool force = false) override {
    if (!force && index % 5 != 0) return;
    // Returns after the snapshot; force = true returns once the file is durable.
    writer_.Write(checkpoint, Path("ckpt", index), index, force);
  }
  void save_model(const ackpt::StateDict& model_state, int64_t index) override {
    writer_.WriteStateDict(model_state, Path("model", index), index, /*force=*/true);
  }
  ackpt::Checkpoint load() override {
    writer_.Wait();  // never read a file that is still being written
    int64_t newest = -1;
    for (const auto& name : ackpt::GetChildrenIfExists(ackpt::Env::Default(), dir_)) {
      if (auto i = ackpt::ParseCheckpointIndex(name, "ckpt")) newest = std::max(newest, *i);
    }
    if (newest < 0) return ackpt::Checkpoint();
    return ackpt::ReadCheckpointFile(Path("ckpt", newest));
  }
  void wait() override { writer_.Wait(); }

 private:
  static ackpt::AsyncWriterOptions Options() {
    ackpt::AsyncWriterOptions o;
    o.writer_threads = 2;
    o.log_level = "WARN";
    return o;
  }
  std::string Path(const char* prefix, int64_t index) const {
    return ackpt::JoinPath(dir_, ackpt::CheckpointFileName(prefix, index, /*compressed=*/true));
  }

  std::string dir_;
  ackpt::AsyncWriter writer_;
};

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "custom_checkpoints";
  at::Tensor w = at::zeros({256, 64});
  ackpt::Checkpoint last_saved;
  {
    EveryFifthCheckpointer checkpointer(dir);
    for (int64_t step = 1; step <= 12; ++step) {
      w.add_(0.5);  // "training"
      ackpt::Checkpoint c;
      c.module_interface_state.set("w", w);
      c.trainer_backend_state.set("step", step);
      c.metrics["loss"] = 1.0 / static_cast<double>(step);
      checkpointer.save(c, step);  // writes only steps 5 and 10
      if (step % 5 == 0) {
        last_saved.module_interface_state.set("w", w.clone());
        last_saved.trainer_backend_state.set("step", step);
      }
    }
    checkpointer.wait();
  }
  EveryFifthCheckpointer again(dir);
  const ackpt::Checkpoint resumed = again.load();
  std::string why;
  const bool same =
      ackpt::ExactlyEqual(resumed.module_interface_state, last_saved.module_interface_state,
                          &why) &&
      ackpt::ExactlyEqual(resumed.trainer_backend_state, last_saved.trainer_backend_state, &why);
  std::printf("resumed step %lld from %s: %s\n",
              static_cast<long long>(resumed.trainer_backend_state.at("step").to_int()),
              dir.c_str(), same ? "identical to what was saved" : ("MISMATCH: " + why).c_str());
  return same ? 0 : 1;
}
