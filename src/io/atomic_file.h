// The atomic commit protocol and the hidden temp-file names it writes. The
// only place that knows how temp files are named (docs/FORMAT.md, "File
// names" and "The commit protocol").
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "ackpt/env.h"

namespace ackpt {

// The hidden temp name used while writing `final_name`:
// ".{basename}.tmp-{pid}-{n}", unique within the process.
std::string TempFileName(const std::string& final_name);
// True for names TempFileName makes: ".{name}.tmp-{digits}-{digits}".
bool IsTempFileName(const std::string& file_name);
// For a temp file name, the final name it was being written as
// (".model_3.safetensors.tmp-12-0" -> "model_3.safetensors"); nullopt otherwise.
std::optional<std::string> TempFileTarget(const std::string& file_name);
// For a temp file name, the id of the process that wrote it; nullopt otherwise.
std::optional<int64_t> TempFileWriterPid(const std::string& file_name);

// body(file) writes a hidden temp file next to `path`; then fsync (if asked),
// close, rename over `path`, fsync the directory. On failure the temp file is
// removed and the error rethrown; `path` is untouched.
void AtomicWrite(Env* env, const std::string& path, bool fsync,
                 const std::function<void(WritableFile*)>& body);

}  // namespace ackpt
