// The open-file registry (format/open_files.h).
#include "format/open_files.h"

#include <limits.h>
#include <stdlib.h>

#include <map>
#include <mutex>

namespace ackpt {
namespace format {

namespace {

std::mutex g_open_mu;
std::map<std::string, int>* g_open = new std::map<std::string, int>();  // never destroyed

std::string CanonicalPath(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) != nullptr ? std::string(buf) : path;
}

}  // namespace

OpenFileRegistration::OpenFileRegistration(const std::string& path) : path_(CanonicalPath(path)) {
  std::lock_guard<std::mutex> lock(g_open_mu);
  ++(*g_open)[path_];
}

OpenFileRegistration::~OpenFileRegistration() {
  std::lock_guard<std::mutex> lock(g_open_mu);
  auto it = g_open->find(path_);
  if (it != g_open->end() && --it->second == 0) g_open->erase(it);
}

}  // namespace format

bool IsOpenForReading(const std::string& path) {
  const std::string canonical = format::CanonicalPath(path);
  std::lock_guard<std::mutex> lock(format::g_open_mu);
  return format::g_open->count(canonical) > 0;
}

}  // namespace ackpt
