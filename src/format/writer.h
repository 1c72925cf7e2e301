// The writer: the one encode path (the tensors hashed, then header, frames
// or the plain stream, and seek table committed atomically at a path) and
// the synchronous writer on top of it. The engine runs the same encode path
// on its writer pool.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <map>
#include <string>
#include <vector>

#include "ackpt/env.h"
#include "ackpt/format.h"
#include "ackpt/state_dict.h"
#include "format/data_source.h"
#include "format/flatten.h"
#include "format/parallel.h"

namespace ackpt {
namespace format {

namespace codec {
class AutoModel;
}

// Throws kInvalidArgument for out-of-range chunk size or zstd level. The
// encoder below trusts its options: whoever takes WriteOptions from a user
// checks them once (the engine when it is built, WriteStateDictSync per call).
void ValidateWriteOptions(const WriteOptions& options);

// Fills every tensor's xxh3 from its bytes in `source` (waiting for them),
// in parallel across tensors.
void HashTensors(std::vector<FlatTensor>* tensors, DataSource* source,
                 const ParallelForFn& parallel_for);

// Encodes the header of `tensors` (in file order, staging_offset their
// offset in the data section, xxh3 filled) and commits header + data section
// at `path`, pulling the data from `source` front to back and releasing it as
// it is written: zstd frames when asked (the header region alone in the
// first frame, then data frames of chunk_size; frames compress in parallel
// over whatever the source has made available), else the plain stream. On
// failure (the source's too) the temp file is removed and the error
// rethrown; `path` is untouched. A set *cancel aborts between frames with
// kTimedOut. `auto_model` (not null) is the kAuto model the save consults
// and feeds (the engine's own, or codec::DefaultAutoModel()). `pace`, when
// set, is called between frame windows (plain files: between chunks) with
// the logical bytes handled so far and in all, and may sleep to spread the
// work out (EngineOptions::pacing_fraction); the time it takes is the
// result's paced_seconds and is not counted as the device's. `options`
// must have passed ValidateWriteOptions. The result's hash_seconds is 0:
// the caller hashed.
using PaceFn = std::function<void(uint64_t done, uint64_t total)>;
WriteResult EncodeStreamAndCommit(const std::vector<FlatTensor>& tensors,
                                  const std::string& tree_json, const WriteOptions& options,
                                  const std::map<std::string, std::string>& internal_metadata,
                                  const std::string& path, Env* env, DataSource* source,
                                  const ParallelForFn& parallel_for, codec::AutoModel* auto_model,
                                  const std::atomic<bool>* cancel = nullptr,
                                  const PaceFn& pace = nullptr);
// For tensors in memory: orders them for alignment, hashes them (in
// parallel) and commits them through EncodeStreamAndCommit. Every tensor's
// `data` must point at its contiguous bytes until this returns.
WriteResult EncodeAndCommit(std::vector<FlatTensor>* tensors, const std::string& tree_json,
                            const WriteOptions& options,
                            const std::map<std::string, std::string>& internal_metadata,
                            const std::string& path, Env* env, const ParallelForFn& parallel_for,
                            codec::AutoModel* auto_model,
                            const std::atomic<bool>* cancel = nullptr);
// The synchronous writer (WriteStateDict, WriteCheckpointFile): validates
// the options, flattens, makes contiguous copies where needed and runs
// EncodeAndCommit on the calling threads, with codec::DefaultAutoModel().
WriteResult WriteStateDictSync(const StateDict& state, const std::string& path,
                               const WriteOptions& options,
                               const std::map<std::string, std::string>& internal_metadata,
                               Env* env);

// Checks every tensor (dense, supported dtype) and fills dtype, shape and
// nbytes from it. Throws kUnsupported naming the tensor.
void DescribeTensors(std::vector<FlatTensor>* tensors);
// For the synchronous writer: points each tensor's `data` at contiguous CPU
// bytes, copying (into `keep_alive`) only tensors that are not already so.
void PrepareContiguous(std::vector<FlatTensor>* tensors, std::vector<at::Tensor>* keep_alive);

}  // namespace format
}  // namespace ackpt
