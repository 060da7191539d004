// Session: the way out. Frames into the bounded outbound queue (every frame counts toward
// max_pending and the tenant's and node's budgets), writes in slices, producer flow control with the
// tenant's delivery lane, and pausing publishers while the bus is congested (docs/protocol.md
// section 15, slow consumers).
#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>

#include "busgate/protocol/msgpack.hpp"
#include "flush_batch.hpp"
#include "server.hpp"
#include "session.hpp"
#include "session_sub.hpp"
#include "tcp_progress.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
using proto::Code;
using Clock = std::chrono::steady_clock;

namespace {
// Producer flow control: how often a delivery lane waiting for this consumer looks for progress...
constexpr auto kProducerStall = std::chrono::milliseconds(10);
// ... and gives up on a consumer (until its queue empties) after this many looks without progress.
constexpr uint32_t kIdleStallsToGiveUp = 5;
// Backlog entries a lane delivers in one turn of a consumer's thread before letting others run.
constexpr size_t kLaneBudget = 256;
constexpr size_t kWriteSlice = 256 * 1024;
}  // namespace

bool Session::peer_acked_more_locked() {
  const uint64_t acked = tcp_bytes_acked(fd_.load(std::memory_order_relaxed));
  const bool more = acked > acked_mark_;
  acked_mark_ = acked;
  return more;
}

// ---------------------------------------------------------------- producer flow control

void Session::lane_wait(const std::shared_ptr<DeliveryLane>& lane) {
  asio::post(ex_, [self = shared_from_this(), lane] { self->start_lane_wait(lane); });
}

void Session::start_lane_wait(const std::shared_ptr<DeliveryLane>& lane) {
  bool ready;
  {
    std::lock_guard lk(out_mu_);
    ready = state_.load() == State::closed || closing_ || stall_spent_ || !out_.past_half();
    if (!ready) {
      lane_waiting_ = lane;
      writes_mark_ = out_.writes_done();
      peer_acked_more_locked();  // the mark to compare with at the next look
    }
  }
  if (ready) return resume_lane(lane);
  arm_lane_timer();
}

void Session::on_lane_timer() {
  std::shared_ptr<DeliveryLane> lane;
  {
    std::lock_guard lk(out_mu_);
    if (!lane_waiting_) return;
    const bool progress = out_.writes_done() != writes_mark_;
    const bool acked = peer_acked_more_locked();
    writes_mark_ = out_.writes_done();
    if (progress || acked) {
      idle_stalls_ = 0;
    } else if (++idle_stalls_ >= kIdleStallsToGiveUp) {
      // The client reads nothing: the tenant's deliveries stop waiting for it until its queue empties.
      stall_spent_ = true;
      lane.swap(lane_waiting_);
      spdlog::debug("session={} made no write progress in {} ms; not waited for again until its queue empties",
                    session_id_, kProducerStall.count() * kIdleStallsToGiveUp);
    }
  }
  if (lane) return resume_lane(std::move(lane));
  arm_lane_timer();
}

void Session::arm_lane_timer() {
  lane_timer_.expires_after(kProducerStall);
  lane_timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
    if (ec) return;
    if (auto self = weak.lock()) self->on_lane_timer();
  });
}

void Session::resume_lane(std::shared_ptr<DeliveryLane> lane) {
  if (!lane) return;
  lane_timer_.cancel();
  if (!lane->resume(this, kLaneBudget)) return;
  // More backlog than one turn: go on later on this thread, letting other connections run between.
  struct Drain {
    std::shared_ptr<DeliveryLane> lane;
    asio::any_io_executor ex;
    void operator()() const {
      if (lane->drain(kLaneBudget)) asio::post(ex, *this);
    }
  };
  asio::post(ex_, Drain{std::move(lane), ex_});
}

void Session::lane_overflow(size_t backlog_bytes) {
  asio::post(ex_, [self = shared_from_this(), backlog_bytes] {
    std::shared_ptr<DeliveryLane> lane;
    {
      std::lock_guard lk(self->out_mu_);
      lane.swap(self->lane_waiting_);
      if (self->out_.mark_slow()) {
        self->tenant_metrics().slow_consumer_disconnects.fetch_add(1, std::memory_order_relaxed);
      }
    }
    self->fatal(Code::slow_consumer, "the client did not read fast enough: " + std::to_string(backlog_bytes) +
                                         " bytes for its tenant waited behind it (max_backlog_bytes)");
    self->resume_lane(std::move(lane));
  });
}

bool Session::admit_locked(size_t extra) {
  // The tenant's or the node's budget is full: a connection holding a fair part of its own bound is
  // cut (it frees what it holds); one that reads along is not (docs/protocol.md section 15).
  if (const char* full = budget_.overrun(extra); full && out_.pending() >= out_.max_pending() / 4) {
    over_budget_locked(full);
    return false;
  }
  switch (out_.admit(extra)) {
    case OutboundQueue::Admit::over:
      if (out_.mark_slow()) {
        tenant_metrics().slow_consumer_disconnects.fetch_add(1, std::memory_order_relaxed);
        asio::post(ex_, [self = shared_from_this()] {
          self->fatal(Code::slow_consumer, "the client did not read fast enough: outbound queue passed " +
                                               std::to_string(self->out_.max_pending()) + " bytes");
        });
      }
      return false;
    case OutboundQueue::Admit::warn:
      proto::encode_err_framed(out_.buf(), Code::slow_consumer_warning,
                               "outbound queue passed half of " + std::to_string(out_.max_pending()) + " bytes");
      tenant_metrics().count_error(Code::slow_consumer_warning);
      return true;
    default: return true;
  }
}

void Session::over_budget_locked(const char* which) {
  if (!out_.mark_slow()) return;
  tenant_metrics().slow_consumer_disconnects.fetch_add(1, std::memory_order_relaxed);
  server_.metrics().budget_disconnects.fetch_add(1, std::memory_order_relaxed);
  asio::post(ex_, [self = shared_from_this(), which] {
    self->fatal(Code::slow_consumer, std::string("the client did not read fast enough and the bytes queued for ") +
                                         (std::string_view(which) == "max_queued_bytes" ? "this node" : "its tenant") +
                                         " reached " + which);
  });
}

bool Session::control_room_locked() {
  constexpr size_t kControlSlack = 64 * 1024;
  budget_.report(out_.pending());
  if (out_.pending() <= out_.max_pending() + kControlSlack) return true;
  if (out_.mark_slow()) {
    tenant_metrics().slow_consumer_disconnects.fetch_add(1, std::memory_order_relaxed);
    asio::post(ex_, [self = shared_from_this()] {
      self->fatal(Code::slow_consumer, "the client did not read its answers: outbound queue passed " +
                                           std::to_string(self->out_.max_pending()) + " bytes");
    });
  }
  return false;
}

void Session::send_frame(const proto::Frame& f) {
  std::lock_guard lk(out_mu_);
  if (control_room_locked()) proto::encode_framed(f, out_.buf());
}

void Session::send_err(Code code, std::string_view message, uint64_t ref_op, uint64_t ref_id) {
  tenant_metrics().count_error(code);
  std::lock_guard lk(out_mu_);
  if (control_room_locked()) proto::encode_err_framed(out_.buf(), code, message, ref_op, ref_id);
}

void Session::send_ok(uint64_t ref_op, uint64_t ref_id) {
  std::lock_guard lk(out_mu_);
  if (control_room_locked()) proto::encode_ok_framed(out_.buf(), ref_op, ref_id);
}

void Session::send_res(uint32_t req_id, Code status, std::string_view message) {
  tenant_metrics().count_error(status);
  std::lock_guard lk(out_mu_);
  if (control_room_locked()) proto::encode_res_framed(out_.buf(), req_id, static_cast<uint64_t>(status), message, {});
}

bool Session::on_batch_end() {
  flush();
  if (sub_pending_) return false;  // finish_sub() resumes reading
  const bool published = std::exchange(published_, false);
  if (published && lane_ && lane_->busy()) {
    // Producer flow control: the tenant's deliveries wait for a slow consumer; its publishers on this
    // node pause until they are through (docs/protocol.md section 12, slow consumers).
    server_.metrics().producer_paces.fetch_add(1, std::memory_order_relaxed);
    paced_ = true;
    lane_->when_idle([weak = weak_from_this(), ex = ex_] {
      asio::post(ex, [weak] {
        if (auto self = weak.lock()) self->resume_paced();
      });
    });
    return false;
  }
  Bus& bus = server_.bus();
  if (!bus.congested()) return true;
  server_.metrics().bus_congestion_pauses.fetch_add(1, std::memory_order_relaxed);
  // Publisher flow control: stop reading this client until the bus has written its backlog.
  bus.when_drained([weak = weak_from_this(), ex = ex_] {
    asio::post(ex, [weak] {
      if (auto self = weak.lock(); self && self->transport_) self->transport_->resume_read();
    });
  });
  return false;
}

void Session::resume_paced() {
  if (!paced_) return;
  paced_ = false;
  if (transport_) transport_->resume_read();
}

void Session::schedule_flush_locked() {
  budget_.report(out_.pending());
  if (flush_posted_ || out_.writing()) return;
  flush_posted_ = true;
  // Within a read being handed out (flush_batch.hpp) the flush is posted once, at its end.
  auto post = [self = shared_from_this()] { asio::post(self->ex_, [self] { self->flush(); }); };
  if (!FlushBatch::defer(post)) post();
}

// A request delivered from another thread (the bus link's, another connection's) is written from
// that thread when this connection writes nothing else, so that the responder gets it without
// waiting for this connection's thread to wake: one thread hand-off less per request. True when
// everything queued went out; else the rest takes the usual way (schedule_flush_locked).
bool Session::write_through_locked() {
  if (!transport_ || flush_posted_ || closing_) return false;
  const std::string_view bytes = out_.idle_bytes();
  if (bytes.empty()) return false;
  const long n = transport_->write_now(bytes);
  if (n <= 0) return false;
  out_.wrote_direct(static_cast<size_t>(n));
  budget_.report(out_.pending());
  return out_.pending() == 0;
}

void Session::flush() {
  std::unique_lock lk(out_mu_);
  flush_posted_ = false;
  if (out_.writing() || !transport_) return;
  // Byte streams are written in slices, so that a slow reader shows progress often (flow control
  // looks for it) and one write never holds more than a slice of socket time.
  const std::string_view slice = out_.next_slice(transport_->byte_stream() ? kWriteSlice : 0);
  if (slice.empty()) {
    if (closing_) {
      lk.unlock();
      close_transport();
    }
    return;
  }
  lk.unlock();
  transport_->write(slice, [self = shared_from_this()](bool ok) { self->on_write(ok); });
}

void Session::on_write(bool ok) {
  std::shared_ptr<DeliveryLane> lane;
  {
    std::lock_guard lk(out_mu_);
    if (out_.written()) stall_spent_ = false;  // only after the queue has emptied
    budget_.report(out_.pending());
    if (lane_waiting_ && !out_.past_half()) lane.swap(lane_waiting_);
  }
  if (lane) resume_lane(std::move(lane));
  if (!ok) return close_transport();
  flush();
}

}  // namespace busgate::gw
