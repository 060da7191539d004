#include "nats_link.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "log_text.hpp"
#include "nats_auth.hpp"
#include "nats_connection.hpp"
#include "nats_errors.hpp"
#include "nats_servers.hpp"
#include "nats_subs.hpp"
#include "nats_writer.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
using proto::Code;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kRefusedLogEvery = std::chrono::seconds(10);
constexpr size_t kLogTextMax = 256;

// Text from the server (its -ERR echoes subjects) on one escaped, bounded log line.
std::string clip(std::string_view s) { return log_text(s, kLogTextMax); }

// Runs every task, even when one throws (each failure is logged): one caller's exception must not
// cost the others their answer.
void run_all(NatsWriter::Tasks& tasks) {
  for (auto& t : tasks) {
    try {
      t();
    } catch (const std::exception& e) {
      spdlog::error("nats: a completion failed: {}", e.what());
    } catch (...) {
      spdlog::error("nats: a completion failed");
    }
  }
}

}  // namespace

struct NatsLink::Impl {
  NatsLinkOptions opt;
  MsgFn on_msg;
  EventFn on_event;
  RefusedFn on_refused;
  NatsCreds creds;
  NatsServerPool pool;

  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::thread thread;
  bool stopping = false;  // link thread

  NatsWriter writer;
  // Guards the subscription table together with what the writer queues for it: a SUB made while
  // the connection comes up is either in the replay or queued after it.
  std::mutex subs_mu;
  NatsSubscriptions subs;

  std::mutex mu;
  std::condition_variable cv;  // start() waits on it for the first attempt's outcome
  bool first_attempt_done = false;

  std::atomic<bool> up{false};
  std::atomic<int64_t> max_payload{0};
  std::atomic<uint64_t> reconnects{0};
  std::atomic<uint64_t> publishes_refused{0};
  uint64_t refused_logged = 0;  // link thread: publishes_refused when last logged
  Clock::time_point refused_log_at{};

  std::unique_ptr<NatsConnection> conn;  // last: its handlers use the rest

  Impl(NatsLinkOptions o, MsgFn m, EventFn e, RefusedFn r)
      : opt(std::move(o)),
        on_msg(std::move(m)),
        on_event(std::move(e)),
        on_refused(std::move(r)),
        creds(opt.creds_file.empty() ? NatsCreds{} : load_nats_creds(opt.creds_file)),
        pool(opt.servers),
        writer([this] { asio::post(io, [this] { start_write(); }); }) {
    NatsConnection::Events ev;
    ev.up = [this](int fd, bool again, const NatsServerUrl& s) { on_up(fd, again, s); };
    ev.down = [this](bool was_up, const NatsServerUrl& s) { on_down(was_up, s); };
    ev.item = [this](const NatsItem& item) { on_item(item); };
    ev.info = [this](const NatsInfo& info) {
      if (info.max_payload > 0) max_payload.store(info.max_payload);
    };
    ev.keepalive = [this] { writer.keepalive_ping(); };
    conn = std::make_unique<NatsConnection>(io, opt, creds, pool, std::move(ev));
  }

  // ---------------------------------------------------------------- connection events (link thread)

  void attempt_done() {
    std::lock_guard lk(mu);
    first_attempt_done = true;
    cv.notify_all();
  }

  void on_up(int fd, bool again, const NatsServerUrl& server) {
    {
      std::lock_guard lk(subs_mu);
      writer.go_up(fd, subs.replay());  // the subscriptions go before anything queued meanwhile
    }
    up.store(true);
    attempt_done();
    if (again) reconnects.fetch_add(1);
    if (on_event) on_event(again ? "reconnected" : "connected", server.text);
    start_write();
  }

  void on_down(bool was_up, const NatsServerUrl& server) {
    up.store(false);
    NatsWriter::Tasks failed = writer.go_down();
    attempt_done();
    run_all(failed);
    if (was_up && on_event) on_event("disconnected", server.text);
  }

  void on_item(const NatsItem& m) {
    switch (m.op) {
      case NatsOp::msg:
      case NatsOp::hmsg: {
        NatsInbound in;
        in.sid = m.sid;
        in.subject = m.subject;
        in.reply = m.reply;
        in.headers = m.headers;
        in.payload = m.payload;
        on_msg(in);
        break;
      }
      case NatsOp::ping:
        writer.answer_ping();
        break;
      case NatsOp::pong:
        if (NatsWriter::Task done = writer.on_pong()) done();
        break;
      case NatsOp::err:
        on_server_error(m.text);
        break;
      case NatsOp::info:  // applied by the connection
      case NatsOp::ok:
        break;
    }
  }

  // A -ERR on a connection that is up. Permission violations leave the connection open; any other
  // -ERR is followed by the server closing it.
  void on_server_error(std::string_view text) {
    const NatsServerError e = classify_nats_error(text);
    switch (e.kind) {
      case NatsServerError::Kind::subscribe_denied: {
        std::vector<uint64_t> sids;
        {
          std::lock_guard lk(subs_mu);
          sids = subs.take_refused(e.subject, e.queue);
        }
        spdlog::warn("nats: the server refused the subscription to {}{}{} ({} subscription(s) dropped): {}",
                     clip(e.subject), e.queue.empty() ? "" : " queue ", clip(e.queue), sids.size(), clip(text));
        if (on_refused)
          for (const uint64_t sid : sids) on_refused(sid, text);
        break;
      }
      case NatsServerError::Kind::publish_denied: {
        const uint64_t n = publishes_refused.fetch_add(1) + 1;
        const auto now = Clock::now();
        if (refused_logged == 0 || now - refused_log_at >= kRefusedLogEvery) {
          spdlog::warn("nats: the server refused a publish to {} (dropped; {} refused in all): {}", clip(e.subject), n,
                       clip(text));
          refused_logged = n;
          refused_log_at = now;
        }
        break;
      }
      case NatsServerError::Kind::other:
        spdlog::warn("nats: the server reports: {}", clip(text));
        break;
    }
  }

  // ---------------------------------------------------------------- writing (link thread)

  void start_write() {
    const std::string* batch = writer.begin_batch();
    if (!batch) return;
    conn->write(*batch, [this] {
      NatsWriter::Tasks released = writer.end_batch();
      run_all(released);
      start_write();
    });
  }

  void shutdown() {
    stopping = true;
    std::string rest;
    NatsWriter::Tasks failed = writer.stop(rest);
    up.store(false);
    conn->stop(rest);
    attempt_done();
    run_all(failed);
  }

  void run() {
    // Nothing escapes the link thread: an exception from a handler ends the current connection (the
    // link reconnects) and the thread goes on.
    for (;;) {
      try {
        io.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("nats: connection '{}': {}", opt.name, e.what());
      } catch (...) {
        spdlog::error("nats: connection '{}': unknown exception", opt.name);
      }
      if (stopping) return;
      asio::post(io, [this] {
        if (!stopping) conn->reset("the connection was reset after an internal error");
      });
    }
  }
};

NatsLink::NatsLink(NatsLinkOptions opts, MsgFn on_msg, EventFn on_event, RefusedFn on_refused)
    : impl_(std::make_shared<Impl>(std::move(opts), std::move(on_msg), std::move(on_event), std::move(on_refused))) {}

NatsLink::~NatsLink() {
  if (!impl_->thread.joinable()) return;
  asio::post(impl_->io, [impl = impl_.get()] {
    impl->shutdown();
    impl->work.reset();
    impl->io.stop();
  });
  impl_->thread.join();
}

bool NatsLink::start(std::chrono::milliseconds wait) {
  Impl& i = *impl_;
  i.work.emplace(i.io.get_executor());
  i.thread = std::thread([&i] { i.run(); });
  asio::post(i.io, [&i] { i.conn->start(); });
  std::unique_lock lk(i.mu);
  i.cv.wait_for(lk, wait, [&] { return i.first_attempt_done; });
  return i.up.load();
}

bool NatsLink::connected() const { return impl_->up.load(); }
int64_t NatsLink::max_payload() const { return impl_->max_payload.load(); }
uint64_t NatsLink::reconnects() const { return impl_->reconnects.load(); }
uint64_t NatsLink::publishes_refused() const { return impl_->publishes_refused.load(); }

Code NatsLink::publish(std::string_view subject, std::string_view reply, std::string_view headers,
                       std::string_view payload, bool now) {
  const int64_t mp = impl_->max_payload.load(std::memory_order_relaxed);
  if (mp > 0 && headers.size() + payload.size() > static_cast<size_t>(mp)) return Code::payload_too_large;
  return impl_->writer.publish(subject, reply, headers, payload, now);
}

void NatsLink::subscribe(uint64_t sid, std::string_view subject, std::string_view queue) {
  std::string line;
  nats_append_sub(line, subject, queue, sid);
  std::lock_guard lk(impl_->subs_mu);
  impl_->subs.add(sid, subject, queue);
  impl_->writer.append(line);  // when down, the replay on connect sends it
}

void NatsLink::unsubscribe(uint64_t sid) {
  std::string line;
  nats_append_unsub(line, sid);
  std::lock_guard lk(impl_->subs_mu);
  if (impl_->subs.remove(sid)) impl_->writer.append(line);
}

void NatsLink::ping(DoneFn done) { impl_->writer.ping(std::move(done)); }
bool NatsLink::congested() const { return impl_->writer.congested(); }
void NatsLink::when_drained(std::function<void()> fn) { impl_->writer.when_drained(std::move(fn)); }

}  // namespace busgate::gw
