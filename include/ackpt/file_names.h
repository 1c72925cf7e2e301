// Checkpoint file names: {prefix}_{index}.{ext}[.zst], ext "safetensors" by default.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "ackpt/export.h"

namespace ackpt {

inline constexpr const char* kPlainExtension = ".safetensors";
inline constexpr const char* kZstdExtension = ".safetensors.zst";

// "{prefix}_{index}.{ext}" plus ".zst" when compressed; prefix and ext must be
// non-empty and contain no '/'; index must be >= 0. Throws kInvalidArgument.
ACKPT_EXPORT std::string CheckpointFileName(const std::string& prefix, int64_t index,
                                            bool compressed,
                                            const std::string& ext = "safetensors");

// The index of a file name that matches "{prefix}_{digits}.{ext}" or
// "{prefix}_{digits}.{ext}.zst" exactly (no sign, no other characters, no
// leading zeros except "0" itself, fits in int64). A directory part is
// ignored: the index is never taken from other digits in the path.
ACKPT_EXPORT std::optional<int64_t> ParseCheckpointIndex(const std::string& file_name,
                                                         const std::string& prefix,
                                                         const std::string& ext = "safetensors");

// Distributed checkpoints (distributed.h): rank r's part of checkpoint `index`
// is "{prefix}_{index}.rank{r}.{ext}[.zst]" (never a full-checkpoint name), and
// the checkpoint exists iff "{prefix}_{index}.manifest.json" does.
ACKPT_EXPORT std::string PartFileName(const std::string& prefix, int64_t index, int rank,
                                      bool compressed, const std::string& ext = "safetensors");
// (index, rank) of a part file name of this prefix/ext; nullopt otherwise.
ACKPT_EXPORT std::optional<std::pair<int64_t, int>> ParsePartFileName(
    const std::string& file_name, const std::string& prefix,
    const std::string& ext = "safetensors");
ACKPT_EXPORT std::string ManifestFileName(const std::string& prefix, int64_t index);
ACKPT_EXPORT std::optional<int64_t> ParseManifestIndex(const std::string& file_name,
                                                       const std::string& prefix);

// Model-only files (save_model) use the prefix "{prefix}_model", so their names
// can never match the full-checkpoint pattern of the same prefix.
ACKPT_EXPORT std::string ModelFilePrefix(const std::string& prefix);

}  // namespace ackpt
