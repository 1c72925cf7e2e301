// Only ackpt::Error leaves a public call: LibTorch's, JSON's and the
// standard library's exceptions are wrapped with what was being done.
#pragma once

#include <c10/util/Exception.h>

#include <new>
#include <nlohmann/json.hpp>
#include <string>

#include "ackpt/error.h"

namespace ackpt {

template <typename F>
auto Guard(Error::Code code, const std::string& what, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw Error(code, what + ": " + e.what_without_backtrace());
  } catch (const nlohmann::json::exception& e) {
    throw Error(code, what + ": " + e.what());
  } catch (const std::bad_alloc&) {
    throw Error(code, what + ": out of memory");
  } catch (const std::exception& e) {
    throw Error(code, what + ": " + e.what());
  }
}

}  // namespace ackpt
