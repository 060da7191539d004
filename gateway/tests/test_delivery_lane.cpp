#include <catch2/catch.hpp>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "delivery_lane.hpp"

using namespace busgate::gw;

namespace {

BusMessagePtr msg(const std::string& payload) { return std::make_shared<const BusMessage>("t.a.s", "", "", payload); }

// A consumer that records what it got and asks the lane to wait while `congested` is set.
struct Consumer : LaneConsumer {
  std::vector<std::string> got;
  bool congested = false;
  int waits = 0, overflows = 0;
  std::shared_ptr<DeliveryLane> waiting;
  bool lane_deliver(const std::shared_ptr<void>&, const BusMessagePtr& m) override {
    got.emplace_back(m->payload);
    return congested;
  }
  void lane_wait(const std::shared_ptr<DeliveryLane>& lane) override {
    ++waits;
    waiting = lane;
  }
  void lane_overflow(size_t) override { ++overflows; }
};

std::shared_ptr<void> sub() { return std::make_shared<int>(0); }

}  // namespace

TEST_CASE("an idle lane delivers at once, in order", "[lane]") {
  auto lane = std::make_shared<DeliveryLane>(1 << 20);
  auto c = std::make_shared<Consumer>();
  for (int i = 0; i < 3; ++i) CHECK(lane->offer(c, sub(), msg(std::to_string(i))));
  CHECK(c->got == std::vector<std::string>{"0", "1", "2"});
  CHECK_FALSE(lane->busy());
  CHECK(c->waits == 0);
}

TEST_CASE("a congested consumer makes the lane keep later messages, for everyone of the tenant", "[lane]") {
  auto lane = std::make_shared<DeliveryLane>(1 << 20);
  auto slow = std::make_shared<Consumer>();
  auto other = std::make_shared<Consumer>();
  slow->congested = true;
  lane->offer(slow, sub(), msg("a"));
  CHECK(slow->waits == 1);
  CHECK(lane->busy());
  lane->offer(other, sub(), msg("b"));
  lane->offer(slow, sub(), msg("c"));
  CHECK(other->got.empty());  // behind the wait, in order
  CHECK(lane->backlog_bytes() > 0);

  bool idle = false;
  lane->when_idle([&] { idle = true; });
  CHECK_FALSE(idle);
  // Only the consumer waited for can resume the lane.
  CHECK_FALSE(lane->resume(other.get(), 100));
  CHECK(other->got.empty());

  slow->congested = false;
  CHECK_FALSE(lane->resume(slow.get(), 100));
  CHECK(other->got == std::vector<std::string>{"b"});
  CHECK(slow->got == std::vector<std::string>{"a", "c"});
  CHECK(idle);
  CHECK_FALSE(lane->busy());
  CHECK(lane->backlog_bytes() == 0);
}

TEST_CASE("a backlog is delivered in turns of `budget` entries", "[lane]") {
  auto lane = std::make_shared<DeliveryLane>(1 << 20);
  auto c = std::make_shared<Consumer>();
  c->congested = true;
  lane->offer(c, sub(), msg("first"));
  c->congested = false;
  for (int i = 0; i < 10; ++i) lane->offer(c, sub(), msg(std::to_string(i)));
  CHECK(lane->resume(c.get(), 4));  // more left
  CHECK(c->got.size() == 5);
  CHECK(lane->busy());
  // While one thread owns the drain, new messages still queue behind it.
  lane->offer(c, sub(), msg("late"));
  CHECK(c->got.size() == 5);
  CHECK(lane->drain(4));
  CHECK_FALSE(lane->drain(4));
  REQUIRE(c->got.size() == 12);
  CHECK(c->got.back() == "late");
  CHECK_FALSE(lane->busy());
}

TEST_CASE("a consumer that is congested again stops the drain until it resumes", "[lane]") {
  auto lane = std::make_shared<DeliveryLane>(1 << 20);
  auto c = std::make_shared<Consumer>();
  c->congested = true;
  lane->offer(c, sub(), msg("1"));
  lane->offer(c, sub(), msg("2"));
  lane->offer(c, sub(), msg("3"));
  CHECK_FALSE(lane->resume(c.get(), 100));  // delivers "2", congested again
  CHECK(c->got == std::vector<std::string>{"1", "2"});
  CHECK(c->waits == 2);
  c->congested = false;
  lane->resume(c.get(), 100);
  CHECK(c->got == std::vector<std::string>{"1", "2", "3"});
}

TEST_CASE("a gone consumer's backlog is skipped", "[lane]") {
  auto lane = std::make_shared<DeliveryLane>(1 << 20);
  auto c = std::make_shared<Consumer>();
  auto other = std::make_shared<Consumer>();
  c->congested = true;
  lane->offer(c, sub(), msg("1"));
  lane->offer(c, sub(), msg("2"));
  lane->offer(other, sub(), msg("x"));
  const LaneConsumer* raw = c.get();
  c->waiting.reset();
  c.reset();  // the connection closed; it resumes the lane on its way out
  lane->resume(raw, 100);
  CHECK(other->got == std::vector<std::string>{"x"});
  CHECK_FALSE(lane->busy());
}

TEST_CASE("past its bound the backlog overflows the consumer waited for, then drops", "[lane]") {
  const size_t bound = 1 << 20;
  auto lane = std::make_shared<DeliveryLane>(bound);
  auto c = std::make_shared<Consumer>();
  auto other = std::make_shared<Consumer>();
  c->congested = true;
  lane->offer(c, sub(), msg("x"));
  const std::string big(64 * 1024, 'b');
  int accepted = 0;
  for (int i = 0; i < 40; ++i) accepted += lane->offer(other, sub(), msg(big)) ? 1 : 0;
  CHECK(c->overflows == 1);  // once, when the backlog passed the bound
  CHECK(accepted < 40);      // at twice the bound, new messages are dropped
  CHECK(lane->dropped() == uint64_t(40 - accepted));
  CHECK(lane->backlog_bytes() <= 2 * bound);
  // The consumer applies its policy and lets go: the rest reaches the others.
  c->congested = false;
  lane->resume(c.get(), 1000);
  CHECK(other->got.size() == size_t(accepted));
}

TEST_CASE("many threads offering while the lane waits and drains lose nothing", "[lane]") {
  auto lane = std::make_shared<DeliveryLane>(64u << 20);
  struct Counting : LaneConsumer {
    std::atomic<int> n{0};
    std::atomic<bool> congest_next{false};
    std::atomic<int> waits{0};
    std::mutex mu;
    std::vector<std::thread> resumers;  // a consumer's thread resumes the lane later
    bool lane_deliver(const std::shared_ptr<void>&, const BusMessagePtr&) override {
      n.fetch_add(1);
      return congest_next.exchange(false);
    }
    void lane_wait(const std::shared_ptr<DeliveryLane>& l) override {
      waits.fetch_add(1);
      std::lock_guard lk(mu);
      resumers.emplace_back([l, this] { l->resume(this, 1u << 30); });
    }
    void lane_overflow(size_t) override {}
  };
  auto c = std::make_shared<Counting>();
  std::vector<std::thread> threads;
  constexpr int kThreads = 4, kEach = 5000;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < kEach; ++i) {
        if (i % 500 == 0) c->congest_next = true;
        lane->offer(c, sub(), msg("m"));
      }
    });
  for (auto& t : threads) t.join();
  for (int i = 0; i < 200 && lane->busy(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK_FALSE(lane->busy());
  std::vector<std::thread> resumers;
  {
    std::lock_guard lk(c->mu);
    resumers.swap(c->resumers);
  }
  for (auto& t : resumers) t.join();
  CHECK(c->n.load() == kThreads * kEach);
  CHECK(c->waits.load() > 0);
}
