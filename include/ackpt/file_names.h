// Checkpoint file names: {prefix}_{index}.safetensors[.zst].
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ackpt {

inline constexpr const char* kPlainExtension = ".safetensors";
inline constexpr const char* kZstdExtension = ".safetensors.zst";

// "{prefix}_{index}{extension}"; prefix must be non-empty and contain no '/';
// index must be >= 0. Throws kInvalidArgument otherwise.
std::string CheckpointFileName(const std::string& prefix, int64_t index, bool compressed);

// The index of a file name that matches "{prefix}_{digits}.safetensors" or
// "{prefix}_{digits}.safetensors.zst" exactly (no sign, no other characters,
// no leading zeros except "0" itself, fits in int64). A directory part is
// ignored: the index is never taken from other digits in the path.
std::optional<int64_t> ParseCheckpointIndex(const std::string& file_name, const std::string& prefix);

// True for ackpt's hidden temp files: ".{name}.tmp-{digits}-{digits}".
bool IsTempFileName(const std::string& file_name);

// The hidden temp name used while writing `final_name` (unique within the process).
std::string TempFileName(const std::string& final_name);

}  // namespace ackpt
