// What include/ackpt/env.h defines beside the interface: the default Env
// and the path helpers every layer uses.
#include "ackpt/env.h"

#include "ackpt/error.h"
#include "io/posix_env.h"

namespace ackpt {

Env* Env::Default() {
  static Env* env = NewPosixEnv();  // never destroyed: used from detached threads
  return env;
}

std::vector<std::string> GetChildrenIfExists(Env* env, const std::string& dir) {
  try {
    return env->GetChildren(dir);
  } catch (const Error& e) {
    if (e.code() == Error::Code::kNotFound) return {};
    throw;
  }
}

std::string DirName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string BaseName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir == ".") return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

}  // namespace ackpt
