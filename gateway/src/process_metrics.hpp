#pragma once
// The standard Prometheus process metrics (process_cpu_seconds_total, process_resident_memory_bytes,
// ...), read from /proc/self on Linux.

#include <string>

namespace busgate::gw {

// Appends the process_* families in the text exposition format; nothing where /proc is missing.
void render_process_metrics(std::string& out);

}  // namespace busgate::gw
