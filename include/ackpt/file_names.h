// Checkpoint file names: {prefix}_{index}.{ext}[.zst], ext "safetensors" by default.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ackpt {

inline constexpr const char* kPlainExtension = ".safetensors";
inline constexpr const char* kZstdExtension = ".safetensors.zst";

// "{prefix}_{index}.{ext}" plus ".zst" when compressed; prefix and ext must be
// non-empty and contain no '/'; index must be >= 0. Throws kInvalidArgument.
std::string CheckpointFileName(const std::string& prefix, int64_t index, bool compressed,
                               const std::string& ext = "safetensors");

// The index of a file name that matches "{prefix}_{digits}.{ext}" or
// "{prefix}_{digits}.{ext}.zst" exactly (no sign, no other characters, no
// leading zeros except "0" itself, fits in int64). A directory part is
// ignored: the index is never taken from other digits in the path.
std::optional<int64_t> ParseCheckpointIndex(const std::string& file_name, const std::string& prefix,
                                            const std::string& ext = "safetensors");

// Model-only files (save_model) use the prefix "{prefix}_model", so their names
// can never match the full-checkpoint pattern of the same prefix.
std::string ModelFilePrefix(const std::string& prefix);

// True for ackpt's hidden temp files: ".{name}.tmp-{digits}-{digits}".
bool IsTempFileName(const std::string& file_name);

// For an ackpt temp file name, the final name it was being written as
// (".model_3.safetensors.tmp-12-0" -> "model_3.safetensors"); nullopt otherwise.
std::optional<std::string> TempFileTarget(const std::string& file_name);

// The hidden temp name used while writing `final_name` (unique within the process).
std::string TempFileName(const std::string& final_name);

}  // namespace ackpt
