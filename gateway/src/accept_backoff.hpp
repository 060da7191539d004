#pragma once
// Accepting connections when the process runs out of descriptors (or socket memory), for every
// listener (busgate TCP and TLS, HTTP and HTTPS).
//
// accept() fails with EMFILE while the process is at its RLIMIT_NOFILE, and keeps failing until a
// descriptor is freed; the pending connection stays in the kernel's backlog. Accepting again at once
// would spin a core and fill the log. So on EMFILE, ENFILE, ENOBUFS and ENOMEM (and any error not
// known to be about one pending connection) the listener waits before its next accept: 10 ms, then
// twice as long after each failure, at most 1 s, back to 10 ms after the next accepted connection.
// Errors about one pending connection (ECONNABORTED: the peer reset it before it was accepted, and
// the network errors Linux reports from accept()) retry at once. Connections already open are served
// throughout: only the listener waits.
//
// Log: at most one line a second per listener, with the cause, the soft descriptor limit and how
// many failures the line covers; after a pause one line says that accepting resumed. Failures are
// counted per listener and reason for /metrics (busgate_accept_errors_total).
//
// Not thread-safe: a listener's accepts complete on one thread (its acceptor's io_context).

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace busgate::gw {

struct AcceptErrorCounters;

// Why an accept failed, as counted in busgate_accept_errors_total{reason}.
enum class AcceptError {
  descriptors,  // EMFILE, ENFILE: back off
  memory,       // ENOBUFS, ENOMEM: back off
  connection,   // one pending connection failed (ECONNABORTED, ...): retry at once
  other,        // anything else: back off, so that no error can spin the loop
};
AcceptError classify_accept_error(const boost::system::error_code& ec);
const char* accept_error_name(AcceptError e);

// One series of busgate_accept_errors_total: failed accepts of a listener for one reason, since start.
struct AcceptErrorCount {
  std::string listener;
  const char* reason;
  uint64_t count;
};
// Every listener created in this process (in creation order), each with every reason.
std::vector<AcceptErrorCount> accept_error_counts();

// The soft RLIMIT_NOFILE of this process (0 when unknown).
uint64_t soft_descriptor_limit();

// Raises the soft RLIMIT_NOFILE to the hard limit (on Linux at most fs.nr_open when the hard limit
// is unlimited). `line` is what to log: "file descriptors: soft limit raised from 1024 to 20000",
// "file descriptors: limit 20000", or (failed) why it could not be raised.
struct DescriptorLimit {
  std::string line;
  bool failed = false;
};
DescriptorLimit raise_descriptor_limit();

// The backoff and log policy of one listener, without I/O (AcceptLoop applies it).
class AcceptBackoff {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr std::chrono::milliseconds kFirstWait{10};
  static constexpr std::chrono::milliseconds kMaxWait{1000};
  static constexpr std::chrono::milliseconds kLogEvery{1000};

  struct Step {
    std::chrono::milliseconds wait{0};  // before the next accept (0: at once)
    std::string warn;                   // a line to log now at warning level, or ""
    std::string info;                   // a line to log now at info level, or ""
    // A line was held back by the once-a-second rule: call flush() then.
    std::optional<Clock::time_point> flush_at;
  };

  // `listener` names it in log lines and metrics: "tcp", "tls", "http", "https".
  explicit AcceptBackoff(std::string listener);

  Step failed(const boost::system::error_code& ec, Clock::time_point now);
  Step accepted(Clock::time_point now);
  // The held-back "accepting resumed" line, if it is still due (no failure came since).
  Step flush(Clock::time_point now);

  const std::string& listener() const { return listener_; }
  bool paused() const { return wait_.count() > 0; }

 private:
  bool may_log(Clock::time_point now) const { return !last_line_ || now - *last_line_ >= kLogEvery; }
  std::string failure_line(const boost::system::error_code& ec, AcceptError kind, Clock::time_point now) const;
  std::string resumed_line() const;
  void logged(Clock::time_point now);

  std::string listener_;
  AcceptErrorCounters* counters_;
  std::chrono::milliseconds wait_{0};  // the last wait; 0 while accepting normally
  std::optional<Clock::time_point> last_line_;
  uint64_t unreported_ = 0;  // failures since the last line
  Clock::time_point first_unreported_{};
  uint64_t pause_failures_ = 0;  // failures since the pause began
  Clock::time_point pause_start_{};
  Clock::time_point resumed_at_{};
  bool resume_due_ = false;  // accepting resumed; that line was held back by the once-a-second rule
};

// Accepts on `acc` until it is closed. Each accepted socket is handed to `on_socket`, posted to the
// socket's own io_context (chosen by `pick`). Failures follow AcceptBackoff. The acceptor must
// outlive the loop; the loop must outlive the acceptor's io_context's handlers (destroy both after
// the io_contexts stopped, as the servers do).
class AcceptLoop {
 public:
  using PickContext = std::function<boost::asio::io_context&()>;
  using OnSocket = std::function<void(boost::asio::ip::tcp::socket)>;

  AcceptLoop(boost::asio::ip::tcp::acceptor& acc, std::string listener, PickContext pick, OnSocket on_socket);
  AcceptLoop(const AcceptLoop&) = delete;
  AcceptLoop& operator=(const AcceptLoop&) = delete;

  void start();
  // Stops accepting: closes the acceptor and cancels a pending wait.
  void close();

 private:
  void accept();
  void log(const AcceptBackoff::Step& step);

  boost::asio::ip::tcp::acceptor& acc_;
  AcceptBackoff backoff_;
  PickContext pick_;
  OnSocket on_socket_;
  boost::asio::steady_timer retry_timer_;
  boost::asio::steady_timer log_timer_;
};

}  // namespace busgate::gw
