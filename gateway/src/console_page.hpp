#pragma once
#include <string_view>

namespace busgate::gw {
// The /debug console: one self-contained HTML page (gateway/web/console.html, embedded at build time).
std::string_view console_page();
}  // namespace busgate::gw
