// Which files this process has open through a CheckpointReader, by
// canonical path, so that retention never deletes a checkpoint being read.
#pragma once

#include <string>

namespace ackpt {
namespace format {

// Counts `path` as open for its lifetime (every CheckpointReader holds one).
class OpenFileRegistration {
 public:
  explicit OpenFileRegistration(const std::string& path);
  ~OpenFileRegistration();
  OpenFileRegistration(const OpenFileRegistration&) = delete;
  OpenFileRegistration& operator=(const OpenFileRegistration&) = delete;

 private:
  std::string path_;  // canonical
};

}  // namespace format

// True while a CheckpointReader in this process has `path` open (retention
// never deletes such a file).
bool IsOpenForReading(const std::string& path);

}  // namespace ackpt
