#include "util/logger.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <iterator>

#include "ackpt/error.h"

namespace ackpt {

std::shared_ptr<spdlog::logger> ResolveLogger(const std::string& level_name,
                                              std::shared_ptr<spdlog::logger> custom,
                                              const std::string& field_name_for_errors,
                                              const std::string& logger_name) {
  std::string level = level_name;
  std::transform(level.begin(), level.end(), level.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  // Python's logging names (pymarlin's arguments use them) for spdlog's levels.
  if (level == "warning") level = "warn";
  if (level == "fatal") level = "critical";
  static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  if (std::find(std::begin(kLevels), std::end(kLevels), level) == std::end(kLevels)) {
    throw Error::InvalidArgument(field_name_for_errors + " '" + level_name +
                                 "' is not one of TRACE, DEBUG, INFO, WARN, ERROR, CRITICAL, OFF");
  }
  std::shared_ptr<spdlog::logger> logger = std::move(custom);
  if (!logger) {
    logger = spdlog::get(logger_name);
    if (!logger) {
      try {
        logger = spdlog::stderr_color_mt(logger_name);
      } catch (const spdlog::spdlog_ex&) {
        logger = spdlog::get(logger_name);  // another thread registered it first
      }
    }
  }
  logger->set_level(spdlog::level::from_str(level));
  return logger;
}

}  // namespace ackpt
