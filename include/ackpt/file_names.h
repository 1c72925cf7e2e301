// Checkpoint file names: {prefix}_{index}.{ext}[.zst], ext "safetensors" by default.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "ackpt/export.h"

namespace ackpt {

inline constexpr const char* kPlainExtension = ".safetensors";
inline constexpr const char* kZstdExtension = ".safetensors.zst";

// "{prefix}_{index}.{ext}" plus ".zst" when compressed; prefix and ext must be
// non-empty and contain no '/'; index must be >= 0. Throws kInvalidArgument.
ACKPT_EXPORT std::string CheckpointFileName(const std::string& prefix, int64_t index, bool compressed,
                               const std::string& ext = "safetensors");

// The index of a file name that matches "{prefix}_{digits}.{ext}" or
// "{prefix}_{digits}.{ext}.zst" exactly (no sign, no other characters, no
// leading zeros except "0" itself, fits in int64). A directory part is
// ignored: the index is never taken from other digits in the path.
ACKPT_EXPORT std::optional<int64_t> ParseCheckpointIndex(const std::string& file_name, const std::string& prefix,
                                            const std::string& ext = "safetensors");

// Model-only files (save_model) use the prefix "{prefix}_model", so their names
// can never match the full-checkpoint pattern of the same prefix.
ACKPT_EXPORT std::string ModelFilePrefix(const std::string& prefix);

}  // namespace ackpt
