// AsyncWriter: the save engine under a custom checkpointer, without policy.
#include "ackpt/async_writer.h"

#include "ackpt/error.h"
#include "checkpointer/checkpoint_file.h"
#include "checkpointer/guard.h"
#include "checkpointer/metadata_keys.h"
#include "engine/engine.h"

namespace ackpt {

AsyncWriter::AsyncWriter(const AsyncWriterOptions& options)
    : engine_(Guard(Error::Code::kInvalidArgument, "creating the AsyncWriter", [&] {
        return std::make_unique<engine::Engine>(options, "AsyncWriterOptions");
      })) {}

AsyncWriter::~AsyncWriter() = default;

bool AsyncWriter::Write(const Checkpoint& checkpoint, const std::string& path, int64_t index,
                        bool force) {
  return Guard(Error::Code::kInvalidArgument,
               "write of index " + std::to_string(index) + " to '" + path + "'", [&] {
                 engine::SaveHooks hooks;
                 hooks.metadata = BaseMetadata(FileKind::kCheckpoint, index, checkpoint.metrics);
                 return engine_->Save(CheckpointLayout(checkpoint), index, path, force,
                                      std::move(hooks));
               });
}

bool AsyncWriter::WriteStateDict(const StateDict& state, const std::string& path, int64_t index,
                                 bool force) {
  return Guard(Error::Code::kInvalidArgument,
               "write of index " + std::to_string(index) + " to '" + path + "'",
               [&] { return engine_->Save(state, index, path, force, engine::SaveHooks{}); });
}

void AsyncWriter::Wait() { engine_->Wait(); }
void AsyncWriter::WaitSnapshot() { engine_->WaitSnapshot(); }
EngineCounters AsyncWriter::counters() const { return engine_->counters(); }

}  // namespace ackpt
