#include "process_metrics.hpp"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace busgate::gw {

namespace {

struct Stat {
  double utime_ticks = 0, stime_ticks = 0, start_ticks = 0;
  double vsize = 0, rss_pages = 0;
};

// /proc/self/stat: fields after the command name (which may hold spaces and parentheses).
bool read_stat(Stat& s) {
  std::ifstream f("/proc/self/stat");
  std::string line;
  if (!std::getline(f, line)) return false;
  const auto close = line.rfind(')');
  if (close == std::string::npos) return false;
  std::istringstream in(line.substr(close + 2));
  std::string field;
  // Field 3 (state) is the first after the name; utime is 14, stime 15, starttime 22, vsize 23, rss 24.
  for (int n = 3; n <= 24 && in >> field; ++n) {
    if (n == 14) s.utime_ticks = std::stod(field);
    else if (n == 15) s.stime_ticks = std::stod(field);
    else if (n == 22) s.start_ticks = std::stod(field);
    else if (n == 23) s.vsize = std::stod(field);
    else if (n == 24) s.rss_pages = std::stod(field);
  }
  return true;
}

// Seconds since the epoch at boot (/proc/stat "btime").
double boot_time() {
  std::ifstream f("/proc/stat");
  std::string key;
  double v = 0;
  while (f >> key) {
    if (key == "btime") {
      f >> v;
      return v;
    }
    f.ignore(1 << 16, '\n');
  }
  return 0;
}

int open_fds() {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int n = 0;
  while (const dirent* e = readdir(d))
    if (e->d_name[0] != '.') ++n;
  closedir(d);
  return n - 1;  // the directory stream's own descriptor
}

void family(std::string& out, const char* name, const char* type, const char* help, double value) {
  char num[64];
  std::snprintf(num, sizeof num, "%.17g", value);
  out.append("# HELP ").append(name).append(" ").append(help).append("\n# TYPE ").append(name).append(" ");
  out.append(type).append("\n").append(name).append(" ").append(num).append("\n");
}

}  // namespace

void render_process_metrics(std::string& out) {
  Stat s;
  if (!read_stat(s)) return;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  family(out, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
         (s.utime_ticks + s.stime_ticks) / ticks);
  family(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", s.rss_pages * page);
  family(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", s.vsize);
  const int fds = open_fds();
  if (fds >= 0) family(out, "process_open_fds", "gauge", "Number of open file descriptors.", fds);
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    family(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.",
           rl.rlim_cur == RLIM_INFINITY ? -1 : static_cast<double>(rl.rlim_cur));
  family(out, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
         boot_time() + s.start_ticks / ticks);
}

}  // namespace busgate::gw
