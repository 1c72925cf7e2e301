// The logger every ackpt component writes to, chosen from its arguments.
#pragma once

#include <memory>
#include <string>

namespace spdlog {
class logger;
}

namespace ackpt {

// Returns `custom` or, when it is null, the stderr logger registered with
// spdlog as `logger_name` (created on first use), with its level set to
// `level_name`: TRACE, DEBUG, INFO, WARN (or WARNING), ERROR, CRITICAL (or
// FATAL) or OFF, in any case. An unknown level throws ackpt::Error
// (kInvalidArgument) naming `field_name_for_errors` (e.g.
// "TrainerArguments.log_level") and the accepted names.
std::shared_ptr<spdlog::logger> ResolveLogger(const std::string& level_name,
                                              std::shared_ptr<spdlog::logger> custom,
                                              const std::string& field_name_for_errors,
                                              const std::string& logger_name = "ackpt");

}  // namespace ackpt
