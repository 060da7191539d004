#pragma once
#include <string>

namespace busgate::gw {
// Sets up the process logger: "text" (human-readable) or "json" (one object per line).
void setup_logging(const std::string& format, const std::string& level);
}  // namespace busgate::gw
