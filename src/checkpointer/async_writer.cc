// AsyncWriter, WriteCheckpointFile, ReadCheckpointFile: a Checkpoint as one
// file, synchronously or through the engine.
#include "ackpt/async_writer.h"

#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include "ackpt/error.h"
#include "checkpointer/checkpoint_file.h"
#include "checkpointer/metadata_keys.h"
#include "engine/engine.h"
#include "format/internal.h"
#include "util/logger.h"

namespace ackpt {

namespace {
constexpr const char* kGroups[] = {"module_interface_state", "trainer_state",
                                   "trainer_backend_state"};
}  // namespace

StateDict CheckpointLayout(const Checkpoint& c) {
  StateDict root;
  root.set(kGroups[0], c.module_interface_state);
  root.set(kGroups[1], c.trainer_state);
  root.set(kGroups[2], c.trainer_backend_state);
  return root;
}

Checkpoint CheckpointFromLayout(StateDict root, const std::string& path) {
  Checkpoint c;
  for (auto& kv : root) {
    if (!kv.second.is_dict()) {
      throw Error::Corruption("'" + path + "': top-level entry '" + kv.first +
                              "' is not a state group");
    }
    if (kv.first == kGroups[0]) {
      c.module_interface_state = std::move(kv.second.dict());
    } else if (kv.first == kGroups[1]) {
      c.trainer_state = std::move(kv.second.dict());
    } else if (kv.first == kGroups[2]) {
      c.trainer_backend_state = std::move(kv.second.dict());
    } else {
      throw Error::Corruption("'" + path + "' has an unknown top-level group '" + kv.first + "'");
    }
  }
  return c;
}

WriteResult WriteCheckpointFile(const Checkpoint& checkpoint, const std::string& path,
                                const WriteOptions& options, Env* env) {
  return format::WriteStateDictSync(CheckpointLayout(checkpoint), path, options,
                                    BaseMetadata("checkpoint", 0, checkpoint.metrics), env);
}

Checkpoint ReadCheckpointFile(const std::string& path, const ReadOptions& options, Env* env) {
  auto reader = CheckpointReader::Open(path, options, env);
  const auto& meta = reader->info().metadata;
  auto kind = meta.find(kMetaKind);
  if (kind != meta.end() && kind->second != "checkpoint") {
    throw Error::InvalidArgument("'" + path + "' is a " + kind->second +
                                 " file, not a full checkpoint");
  }
  Checkpoint c = CheckpointFromLayout(reader->ReadStateDict(), path);
  c.metrics = ParseMetrics(meta);
  return c;
}

AsyncWriterOptions AsyncWriterOptionsFrom(const DefaultCheckpointerArguments& a) {
  AsyncWriterOptions o;
  o.compression = a.compression;
  o.zstd_level = a.zstd_level;
  o.chunk_size = a.chunk_size;
  o.writer_threads = a.writer_threads;
  o.snapshot_threads = a.snapshot_threads;
  o.staging_budget_bytes = a.staging_budget_bytes;
  o.pin_host_memory = a.pin_host_memory;
  o.backpressure = a.backpressure;
  o.overlap_snapshot = a.overlap_snapshot;
  o.writer_priority = a.writer_priority;
  o.fsync = a.fsync;
  o.drain_timeout_seconds = a.drain_timeout_seconds;
  o.metadata = a.metadata;
  o.on_save = a.on_save;
  o.log_level = a.log_level;
  o.logger = a.logger;
  o.env = a.env;
  return o;
}

class AsyncWriter::Impl {
 public:
  explicit Impl(AsyncWriterOptions o) : options(std::move(o)) {
    if (options.writer_threads < 0 || options.snapshot_threads < 0) {
      throw Error::InvalidArgument(
          "AsyncWriterOptions.writer_threads/snapshot_threads must be >= 0");
    }
    if (!(options.drain_timeout_seconds >= 0))
      throw Error::InvalidArgument("AsyncWriterOptions.drain_timeout_seconds must be >= 0");
    logger = ResolveLogger(options.log_level, options.logger, "AsyncWriterOptions.log_level");
    engine::EngineOptions e;
    e.write.compression = options.compression;
    e.write.zstd_level = options.zstd_level;
    e.write.chunk_size = options.chunk_size;
    e.write.threads = options.writer_threads;
    e.write.fsync = options.fsync;
    e.write.metadata = options.metadata;
    e.writer_threads = options.writer_threads;
    e.snapshot_threads = options.snapshot_threads;
    e.staging_budget_bytes = options.staging_budget_bytes;
    e.pin_host_memory = options.pin_host_memory;
    e.backpressure = options.backpressure;
    e.overlap_snapshot = options.overlap_snapshot;
    e.priority = options.writer_priority;
    e.drain_timeout_seconds = options.drain_timeout_seconds;
    e.env = options.env ? options.env : Env::Default();
    e.logger = logger;
    e.on_save = options.on_save;
    engine = std::make_unique<engine::Engine>(std::move(e));
  }
  AsyncWriterOptions options;
  std::shared_ptr<spdlog::logger> logger;
  std::unique_ptr<engine::Engine> engine;
};

engine::Engine& WriterEngine(AsyncWriter& writer) { return *writer.impl_->engine; }

AsyncWriter::AsyncWriter(AsyncWriterOptions options) {
  try {
    impl_ = std::make_unique<Impl>(std::move(options));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error::InvalidArgument(std::string("creating the AsyncWriter: ") + e.what());
  }
}

AsyncWriter::~AsyncWriter() = default;

bool AsyncWriter::Write(const Checkpoint& checkpoint, const std::string& path, int64_t index,
                        bool force) {
  engine::SaveHooks hooks;
  hooks.metadata = BaseMetadata("checkpoint", index, checkpoint.metrics);
  try {
    return impl_->engine->Save(CheckpointLayout(checkpoint), index, path, force, std::move(hooks));
  } catch (const c10::Error& e) {
    throw Error::InvalidArgument("write of index " + std::to_string(index) + " to '" + path +
                                 "': " + e.what_without_backtrace());
  }
}

bool AsyncWriter::WriteStateDict(const StateDict& state, const std::string& path, int64_t index,
                                 bool force) {
  try {
    return impl_->engine->Save(state, index, path, force, engine::SaveHooks{});
  } catch (const c10::Error& e) {
    throw Error::InvalidArgument("write of index " + std::to_string(index) + " to '" + path +
                                 "': " + e.what_without_backtrace());
  }
}

void AsyncWriter::Wait() { impl_->engine->Wait(); }
void AsyncWriter::WaitSnapshot() { impl_->engine->WaitSnapshot(); }
EngineCounters AsyncWriter::counters() const { return impl_->engine->counters(); }

}  // namespace ackpt
