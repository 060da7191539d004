#include "accept_backoff.hpp"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <array>
#include <atomic>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <mutex>

namespace busgate::gw {

namespace asio = boost::asio;
using asio::ip::tcp;

// ---- classification and counters -------------------------------------------------------------

AcceptError classify_accept_error(const boost::system::error_code& ec) {
  if (ec.category() != boost::system::system_category() && ec.category() != boost::system::generic_category())
    return AcceptError::other;
  switch (ec.value()) {
    case EMFILE:
    case ENFILE:
      return AcceptError::descriptors;
    case ENOBUFS:
    case ENOMEM:
      return AcceptError::memory;
    // The pending connection failed before it was accepted (accept(2): Linux passes the network
    // errors already pending on the new socket to accept()); the next one may be fine.
    case ECONNABORTED:
    case ECONNRESET:
    case EINTR:
    case EAGAIN:
#if EWOULDBLOCK != EAGAIN
    case EWOULDBLOCK:
#endif
    case EPROTO:
    case EPERM:
    case ETIMEDOUT:
    case ENETDOWN:
    case ENETUNREACH:
    case EHOSTDOWN:
    case EHOSTUNREACH:
    case ENOPROTOOPT:
    case EOPNOTSUPP:
#ifdef ENONET
    case ENONET:
#endif
      return AcceptError::connection;
    default:
      return AcceptError::other;
  }
}

const char* accept_error_name(AcceptError e) {
  switch (e) {
    case AcceptError::descriptors: return "descriptors";
    case AcceptError::memory: return "memory";
    case AcceptError::connection: return "connection";
    case AcceptError::other: return "other";
  }
  return "other";
}

constexpr std::array kReasons{AcceptError::descriptors, AcceptError::memory, AcceptError::connection,
                              AcceptError::other};

// One listener's failure counts. Listeners of the same name (a server started twice in a process)
// share them; entries live as long as the process, so the metric never goes backwards.
struct AcceptErrorCounters {
  explicit AcceptErrorCounters(std::string name) : listener(std::move(name)) {}
  const std::string listener;
  std::array<std::atomic<uint64_t>, kReasons.size()> by_reason{};
};

namespace {

std::mutex g_counters_mu;
std::deque<AcceptErrorCounters>& all_counters() {
  static std::deque<AcceptErrorCounters> all;  // a deque: elements never move
  return all;
}

AcceptErrorCounters* counters_for(const std::string& listener) {
  std::lock_guard lk(g_counters_mu);
  for (auto& c : all_counters())
    if (c.listener == listener) return &c;
  return &all_counters().emplace_back(listener);
}

std::string seconds_text(AcceptBackoff::Clock::duration d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", std::chrono::duration<double>(d).count());
  return buf;
}

}  // namespace

std::vector<AcceptErrorCount> accept_error_counts() {
  std::vector<AcceptErrorCount> out;
  std::lock_guard lk(g_counters_mu);
  for (const auto& c : all_counters())
    for (size_t i = 0; i < kReasons.size(); ++i)
      out.push_back({c.listener, accept_error_name(kReasons[i]), c.by_reason[i].load(std::memory_order_relaxed)});
  return out;
}

// ---- the descriptor limit ----------------------------------------------------------------------

uint64_t soft_descriptor_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 0;
  return static_cast<uint64_t>(rl.rlim_cur);
}

DescriptorLimit raise_descriptor_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return {std::string("file descriptors: cannot read the limit: ") + std::strerror(errno), true};
  if (rl.rlim_cur == RLIM_INFINITY) return {"file descriptors: limit unlimited"};
  rlim_t target = rl.rlim_max;
  if (target == RLIM_INFINITY) {
    // Linux refuses a soft limit above fs.nr_open, and "unlimited" is above it.
    target = 1 << 20;
    std::ifstream nr_open("/proc/sys/fs/nr_open");
    unsigned long long n = 0;
    if (nr_open >> n && n > 0) target = static_cast<rlim_t>(n);
  }
  const auto from = std::to_string(rl.rlim_cur);
  if (rl.rlim_cur >= target) return {"file descriptors: limit " + from};
  const rlimit raised{target, rl.rlim_max};
  if (setrlimit(RLIMIT_NOFILE, &raised) != 0)
    return {"file descriptors: limit " + from + " (cannot raise it to the hard limit " + std::to_string(target) +
                ": " + std::strerror(errno) + ")",
            true};
  return {"file descriptors: soft limit raised from " + from + " to " + std::to_string(target)};
}

// ---- the policy --------------------------------------------------------------------------------

AcceptBackoff::AcceptBackoff(std::string listener)
    : listener_(std::move(listener)), counters_(counters_for(listener_)) {}

void AcceptBackoff::logged(Clock::time_point now) {
  last_line_ = now;
  unreported_ = 0;
}

std::string AcceptBackoff::failure_line(const boost::system::error_code& ec, AcceptError kind,
                                        Clock::time_point now) const {
  const std::string count =
      unreported_ > 1 ? std::to_string(unreported_) + " failures in " + seconds_text(now - first_unreported_) + " s"
                      : "";
  const std::string limit = "limit " + std::to_string(soft_descriptor_limit()) + " descriptors";
  const std::string where = " on the " + listener_ + " listener: ";
  auto details = [&](std::string first) {
    if (!count.empty()) first += (first.empty() ? "" : "; ") + count;
    return first.empty() ? std::string() : " (" + first + ")";
  };
  switch (kind) {
    case AcceptError::descriptors: {
      const std::string cause = ec.value() == ENFILE
                                    ? "the system's open-file table is full" + details("fs.file-max; process " + limit)
                                    : "too many open files" + details(limit);
      return "accept paused" + where + cause + "; see docs/operations.md, 'File descriptors'";
    }
    case AcceptError::memory:
      return "accept paused" + where + "out of memory for sockets" + details(ec.message());
    case AcceptError::other:
      return "accept paused" + where + ec.message() + details("");
    case AcceptError::connection:
      break;
  }
  return "accept failed" + where + ec.message() + details("");
}

std::string AcceptBackoff::resumed_line() const {
  return "accept resumed on the " + listener_ + " listener after " + std::to_string(pause_failures_) +
         (pause_failures_ == 1 ? " failure" : " failures") + " in " + seconds_text(resumed_at_ - pause_start_) + " s";
}

AcceptBackoff::Step AcceptBackoff::failed(const boost::system::error_code& ec, Clock::time_point now) {
  const AcceptError kind = classify_accept_error(ec);
  counters_->by_reason[static_cast<size_t>(kind)].fetch_add(1, std::memory_order_relaxed);
  if (unreported_++ == 0) first_unreported_ = now;
  Step step;
  if (kind != AcceptError::connection) {
    if (!paused()) {
      if (!resume_due_) {  // a new pause (else the one whose end was not logged yet goes on)
        pause_start_ = now;
        pause_failures_ = 0;
      }
      wait_ = kFirstWait;
    } else {
      wait_ = std::min(2 * wait_, kMaxWait);
    }
    resume_due_ = false;
    step.wait = wait_;
  }
  if (paused() || resume_due_) ++pause_failures_;
  if (may_log(now)) {
    step.warn = failure_line(ec, kind, now);
    logged(now);
  }
  return step;
}

AcceptBackoff::Step AcceptBackoff::accepted(Clock::time_point now) {
  Step step;
  if (!paused()) return step;
  wait_ = std::chrono::milliseconds(0);
  resumed_at_ = now;
  resume_due_ = true;
  if (may_log(now)) return flush(now);
  step.flush_at = *last_line_ + kLogEvery;
  return step;
}

AcceptBackoff::Step AcceptBackoff::flush(Clock::time_point now) {
  Step step;
  if (!resume_due_) return step;
  if (!may_log(now)) {
    step.flush_at = *last_line_ + kLogEvery;
    return step;
  }
  step.info = resumed_line();
  resume_due_ = false;
  logged(now);
  return step;
}

// ---- the loop ----------------------------------------------------------------------------------

AcceptLoop::AcceptLoop(tcp::acceptor& acc, std::string listener, PickContext pick, OnSocket on_socket)
    : acc_(acc),
      backoff_(std::move(listener)),
      pick_(std::move(pick)),
      on_socket_(std::move(on_socket)),
      retry_timer_(acc.get_executor()),
      log_timer_(acc.get_executor()) {}

void AcceptLoop::start() { accept(); }

void AcceptLoop::close() {
  boost::system::error_code ec;
  acc_.close(ec);
  retry_timer_.cancel();
  log_timer_.cancel();
}

void AcceptLoop::accept() {
  acc_.async_accept(pick_(), [this](const boost::system::error_code& ec, tcp::socket sock) {
    if (ec == asio::error::operation_aborted || !acc_.is_open()) return;
    const auto now = AcceptBackoff::Clock::now();
    if (ec) {
      const auto step = backoff_.failed(ec, now);
      log(step);
      if (step.wait.count() == 0) return accept();
      retry_timer_.expires_after(step.wait);
      retry_timer_.async_wait([this](const boost::system::error_code& e) {
        if (!e && acc_.is_open()) accept();
      });
      return;
    }
    auto ex = sock.get_executor();
    asio::post(ex, [f = on_socket_, s = std::make_shared<tcp::socket>(std::move(sock))] { f(std::move(*s)); });
    log(backoff_.accepted(now));
    accept();
  });
}

void AcceptLoop::log(const AcceptBackoff::Step& step) {
  if (!step.warn.empty()) spdlog::warn("{}", step.warn);
  if (!step.info.empty()) spdlog::info("{}", step.info);
  if (!step.flush_at) return;
  log_timer_.expires_at(*step.flush_at);
  log_timer_.async_wait([this](const boost::system::error_code& e) {
    if (!e) log(backoff_.flush(AcceptBackoff::Clock::now()));
  });
}

}  // namespace busgate::gw
