// How a Checkpoint is laid out in a file: its three state groups as the
// top-level entries of one StateDict (docs/FORMAT.md, "The state tree").
// The one place that knows it: WriteCheckpointFile, ReadCheckpointFile,
// AsyncWriter and DefaultCheckpointer all go through these.
#pragma once

#include <string>

#include "ackpt/checkpointer.h"

namespace ackpt {

class AsyncWriter;
namespace engine {
class Engine;
}

StateDict CheckpointLayout(const Checkpoint& checkpoint);
// Throws kCorruption naming `path` for anything but the three groups.
Checkpoint CheckpointFromLayout(StateDict root, const std::string& path);
// The engine under an AsyncWriter, for the checkpointers built on it.
engine::Engine& WriterEngine(AsyncWriter& writer);

}  // namespace ackpt
