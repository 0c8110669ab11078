// File: tests/engine/inbox_test.cc
// Inbox (engine/inbox.h): every posted call runs exactly once, in order per producer;
// a consumer that blocks between drains is always woken; the eventfd is written at most once
// per announced sleep, so far less often than once per post.
//
// Nothing here sleeps to synchronise: consumers block in poll() on the wake eventfd with the
// test's deadline as timeout, so a lost wakeup shows as a failure at the deadline, not a hang.
#include "engine/inbox.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <latch>
#include <thread>
#include <vector>

#include "engine/reactor.h"
#include "tests/testing/reactor_fixture.h"

namespace {

using engine::RemoteCall;
using engine::Inbox;
using engine::InboxCounters;
using Clock = std::chrono::steady_clock;

// The wake target of the tests that have no reactor: an eventfd written the way
// Reactor::wake() writes its own, with a count of the writes.
class WakeFd {
 public:
  WakeFd() : fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}
  ~WakeFd() {
    if (fd_ >= 0) close(fd_);
  }
  WakeFd(const WakeFd&) = delete;
  WakeFd& operator=(const WakeFd&) = delete;

  // Inbox::WakeFn; any thread.
  static void wake(void* self) {
    auto* w = static_cast<WakeFd*>(self);
    w->writes_.fetch_add(1, std::memory_order_relaxed);
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t r = write(w->fd_, &one, sizeof one);
  }

  // Reads (and so clears) the eventfd's counter: 0 when nothing was written since.
  uint64_t take() {
    uint64_t count = 0;
    return read(fd_, &count, sizeof count) == sizeof count ? count : 0;
  }

  int fd() const { return fd_; }
  uint64_t writes() const { return writes_.load(std::memory_order_relaxed); }

 private:
  int fd_;
  std::atomic<uint64_t> writes_{0};
};

// A call that carries (producer, sequence number) in fields the inbox never interprets.
RemoteCall numbered(int producer, std::size_t seq) {
  RemoteCall call{};
  call.kind = RemoteCall::Kind::kRun;
  call.target = engine::fd_key(producer, 0);
  call.length = seq;
  return call;
}

TEST(InboxTest, PostThenDrainOnOneThreadRunsEachCallOnceInOrder) {
  WakeFd wake;
  Inbox inbox(&WakeFd::wake, &wake);
  for (std::size_t i = 0; i < 3; ++i) ASSERT_TRUE(inbox.post(numbered(0, i)));

  std::vector<std::size_t> ran;
  EXPECT_EQ(inbox.drain_with([&](const RemoteCall& c) { ran.push_back(c.length); }), 3u);
  EXPECT_EQ(ran, (std::vector<std::size_t>{0, 1, 2}));
  EXPECT_EQ(inbox.drain_with([&](const RemoteCall&) { ADD_FAILURE() << "ran twice"; }), 0u);

  const InboxCounters c = inbox.counters();
  EXPECT_EQ(c.posted, 3u);
  EXPECT_EQ(c.drained, 3u);
  EXPECT_EQ(c.wakeups, 0u) << "the owner never announced a sleep";
  EXPECT_EQ(wake.take(), 0u);
}

TEST(InboxTest, MaySleepIsFalseWhileCallsArePending) {
  WakeFd wake;
  Inbox inbox(&WakeFd::wake, &wake);
  EXPECT_TRUE(inbox.may_sleep()) << "an empty inbox lets the owner block";

  inbox.drain_with([](const RemoteCall&) {});  // awake again
  ASSERT_TRUE(inbox.post(numbered(0, 0)));
  EXPECT_FALSE(inbox.may_sleep());
  EXPECT_FALSE(inbox.may_sleep()) << "asking again does not consume the pending call";
  EXPECT_EQ(inbox.drain_with([](const RemoteCall&) {}), 1u);
  EXPECT_TRUE(inbox.may_sleep());
  EXPECT_EQ(wake.writes(), 0u) << "no post arrived while the owner was asleep";
}

TEST(InboxTest, OnlyTheFirstPostAfterMaySleepWritesTheEventfd) {
  WakeFd wake;
  Inbox inbox(&WakeFd::wake, &wake);
  ASSERT_TRUE(inbox.may_sleep());
  for (std::size_t i = 0; i < 5; ++i) ASSERT_TRUE(inbox.post(numbered(0, i)));
  EXPECT_EQ(inbox.counters().wakeups, 1u);
  EXPECT_EQ(wake.take(), 1u) << "five posts to one sleep, one eventfd write";

  EXPECT_EQ(inbox.drain_with([](const RemoteCall&) {}), 5u);
  ASSERT_TRUE(inbox.post(numbered(0, 5)));
  EXPECT_EQ(wake.take(), 0u) << "the owner is awake: no write";

  EXPECT_EQ(inbox.drain_with([](const RemoteCall&) {}), 1u);
  ASSERT_TRUE(inbox.may_sleep());
  ASSERT_TRUE(inbox.post(numbered(0, 6)));
  EXPECT_EQ(wake.take(), 1u) << "a new sleep earns a new write";
  EXPECT_EQ(inbox.counters().wakeups, 2u);
  EXPECT_EQ(wake.writes(), 2u);
}

TEST(InboxTest, DrainRunsAtMostOneBatchAndLeavesTheRestPending) {
  WakeFd wake;
  Inbox inbox(&WakeFd::wake, &wake);
  constexpr std::size_t kPosts = Inbox::kDrainBatch + 1;
  for (std::size_t i = 0; i < kPosts; ++i) ASSERT_TRUE(inbox.post(numbered(0, i)));

  std::size_t next = 0;
  auto check = [&](const RemoteCall& c) { EXPECT_EQ(c.length, next++); };
  EXPECT_EQ(inbox.drain_with(check), Inbox::kDrainBatch);
  EXPECT_FALSE(inbox.may_sleep()) << "the owner must come back for the rest without blocking";
  EXPECT_EQ(inbox.drain_with(check), 1u);
  EXPECT_EQ(next, kPosts);
  EXPECT_TRUE(inbox.may_sleep());
}

TEST(InboxTest, DrainEndsWhenARunCallKeepsPostingToItsOwnInbox) {
  WakeFd wake;
  Inbox inbox(&WakeFd::wake, &wake);
  ASSERT_TRUE(inbox.post(numbered(0, 0)));
  // Each call posts its successor: an unbounded drain would never return.
  auto repost = [&](const RemoteCall& c) { ASSERT_TRUE(inbox.post(numbered(0, c.length + 1))); };
  EXPECT_EQ(inbox.drain_with(repost), Inbox::kDrainBatch);
  EXPECT_FALSE(inbox.may_sleep());
  EXPECT_EQ(inbox.drain_with([](const RemoteCall&) {}), 1u);
}

// The stress test: every call once, FIFO per producer, and few eventfd writes. A wakeup lost
// here is repaired by the next post unless it was the last; the burst test below is the one
// that makes every lost wakeup fatal. TSan slows the queue's atomics by an order of magnitude,
// so it gets fewer posts.
#if defined(__SANITIZE_THREAD__)
constexpr std::size_t kPostsPerProducer = 100'000;
#else
constexpr std::size_t kPostsPerProducer = 1'000'000;
#endif
constexpr int kProducers = 2;
constexpr std::size_t kTotalPosts = kPostsPerProducer * kProducers;
// Well inside the medium test timeout (300 s), far beyond what the run needs (< 5 s).
constexpr auto kStressDeadline = std::chrono::seconds(120);

// What the consumer saw; read by the test thread after join().
struct ConsumerLog {
  std::size_t ran = 0;
  std::size_t out_of_order = 0;  // calls whose number was not their producer's next
  std::vector<std::size_t> next = std::vector<std::size_t>(kProducers, 0);
  uint64_t may_sleep_calls = 0;
  uint64_t blocks = 0;  // may_sleep() said true, so the consumer blocked in poll()
  bool hit_deadline = false;
};

// The reactor's loop in miniature: drain, and block on the eventfd only after may_sleep().
void consume(Inbox& inbox, WakeFd& wake, Clock::time_point deadline, ConsumerLog& log) {
  auto check = [&log](const RemoteCall& c) {
    std::size_t& expected = log.next[static_cast<std::size_t>(c.fd())];
    if (c.length != expected) ++log.out_of_order;
    expected = c.length + 1;
    ++log.ran;
  };
  while (log.ran < kTotalPosts) {
    ++log.may_sleep_calls;
    if (inbox.may_sleep()) {
      ++log.blocks;
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
      pollfd pfd{.fd = wake.fd(), .events = POLLIN, .revents = 0};
      // A lost wakeup leaves the consumer here, with calls queued, until the deadline.
      const int n = left.count() > 0 ? poll(&pfd, 1, static_cast<int>(left.count())) : 0;
      if (n == 0) {
        log.hit_deadline = true;
        return;
      }
      if (n < 0 && errno != EINTR) return;
      wake.take();
    }
    inbox.drain_with(check);
  }
}

TEST(InboxTest, TwoProducersToOneSleepingConsumerLoseNoCallAndNoWakeup) {
  WakeFd wake;
  Inbox inbox(&WakeFd::wake, &wake);
  const Clock::time_point deadline = Clock::now() + kStressDeadline;
  std::latch start(kProducers + 1);
  std::atomic<std::size_t> failed_posts{0};

  ConsumerLog log;
  std::thread consumer([&] {
    start.arrive_and_wait();
    consume(inbox, wake, deadline, log);
  });
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      start.arrive_and_wait();
      for (std::size_t i = 0; i < kPostsPerProducer; ++i) {
        if (!inbox.post(numbered(p, i))) failed_posts.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  for (std::thread& t : producers) t.join();
  consumer.join();

  ASSERT_FALSE(log.hit_deadline) << "consumer blocked with calls queued (lost wakeup?) after "
                                 << log.ran << " of " << kTotalPosts << " calls";
  EXPECT_EQ(failed_posts.load(), 0u);
  EXPECT_EQ(log.ran, kTotalPosts);
  EXPECT_EQ(log.out_of_order, 0u) << "FIFO per producer, each call once";
  for (int p = 0; p < kProducers; ++p) EXPECT_EQ(log.next[p], kPostsPerProducer) << p;
  EXPECT_EQ(inbox.drain_with([](const RemoteCall&) { ADD_FAILURE() << "extra call"; }), 0u);

  const InboxCounters c = inbox.counters();
  EXPECT_EQ(c.posted, kTotalPosts);
  EXPECT_EQ(c.drained, kTotalPosts);
  EXPECT_EQ(c.wakeups, wake.writes()) << "the counter counts eventfd writes";
  EXPECT_LE(c.wakeups, log.may_sleep_calls) << "at most one eventfd write per announced sleep";
  EXPECT_LE(c.wakeups, c.posted);
  const double ratio = static_cast<double>(c.wakeups) / static_cast<double>(c.posted);
  std::printf("posts %llu, eventfd writes %llu (%.5f per post), consumer blocks %llu, "
              "may_sleep calls %llu\n",
              static_cast<unsigned long long>(c.posted), static_cast<unsigned long long>(c.wakeups),
              ratio, static_cast<unsigned long long>(log.blocks),
              static_cast<unsigned long long>(log.may_sleep_calls));
  ::testing::Test::RecordProperty("eventfd_writes", static_cast<int>(c.wakeups));
  ::testing::Test::RecordProperty("consumer_blocks", static_cast<int>(log.blocks));
}

// Continuous posting hides a lost wakeup: the next post finds the consumer asleep and wakes it.
// Here the producers take turns: one posts a burst, waits until the consumer has run all of
// it, then hands the turn to the other. Every burst lands on a consumer that is asleep or about
// to be, no other post can repair a wakeup lost at that moment, and a lost one leaves everyone
// waiting until the deadline.
#if defined(__SANITIZE_THREAD__)
constexpr std::size_t kBurstsPerProducer = 5'000;
#else
constexpr std::size_t kBurstsPerProducer = 50'000;
#endif
constexpr std::size_t kMaxBurst = 4;  // bursts of 1..kMaxBurst calls, in turn
constexpr auto kBurstDeadline = std::chrono::seconds(60);

// Yields until done() or the deadline; returns done(). Producers wait like this, not asleep.
template <typename Done>
bool spin_until(Done&& done, Clock::time_point deadline) {
  while (!done()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

TEST(InboxTest, EveryBurstWakesTheConsumerThatWaitsForIt) {
  WakeFd wake;
  Inbox inbox(&WakeFd::wake, &wake);
  const Clock::time_point deadline = Clock::now() + kBurstDeadline;
  std::size_t total = 0;
  for (std::size_t b = 0; b < kBurstsPerProducer; ++b) total += 1 + b % kMaxBurst;
  total *= kProducers;
  // ran[p]: calls of producer p run so far; written by the consumer, polled by producer p.
  std::atomic<std::size_t> ran[kProducers] = {};
  std::atomic<std::size_t> turn{0};  // burst b of producer p goes at turn b * kProducers + p
  std::atomic<bool> lost{false};
  std::latch start(kProducers + 1);

  std::size_t out_of_order = 0;
  std::thread consumer([&] {
    start.arrive_and_wait();
    std::size_t seen = 0;
    auto run = [&](const RemoteCall& c) {
      std::atomic<std::size_t>& n = ran[c.fd()];
      if (c.length != n.load(std::memory_order_relaxed)) ++out_of_order;
      n.store(c.length + 1, std::memory_order_release);
      ++seen;
    };
    while (seen < total) {
      if (inbox.may_sleep()) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
        pollfd pfd{.fd = wake.fd(), .events = POLLIN, .revents = 0};
        if (left.count() <= 0 || poll(&pfd, 1, static_cast<int>(left.count())) == 0) {
          lost.store(true);  // asleep while the producer in turn waits for its burst
          return;
        }
        wake.take();
      }
      inbox.drain_with(run);
    }
  });

  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      start.arrive_and_wait();
      std::size_t seq = 0;
      for (std::size_t b = 0; b < kBurstsPerProducer; ++b) {
        const std::size_t my_turn = b * kProducers + static_cast<std::size_t>(p);
        if (!spin_until([&] { return turn.load(std::memory_order_acquire) == my_turn; },
                        deadline)) {
          return;
        }
        for (std::size_t i = 0; i <= b % kMaxBurst; ++i) ASSERT_TRUE(inbox.post(numbered(p, seq++)));
        if (!spin_until([&] { return ran[p].load(std::memory_order_acquire) == seq; }, deadline)) {
          return;
        }
        turn.store(my_turn + 1, std::memory_order_release);
      }
    });
  }
  for (std::thread& t : producers) t.join();
  consumer.join();

  ASSERT_FALSE(lost.load()) << "the consumer slept with a burst queued: lost wakeup";
  EXPECT_EQ(out_of_order, 0u);
  EXPECT_EQ(inbox.counters().drained, total);
  std::printf("bursts %zu, calls %zu, eventfd writes %llu\n", kBurstsPerProducer * kProducers,
              total, static_cast<unsigned long long>(inbox.counters().wakeups));
}

// The Reactor constructor wakes through Reactor::wake(): a post after may_sleep() ends the
// reactor's blocking wait.
using InboxReactorTest = testing_support::ReactorFixture;

TEST_F(InboxReactorTest, PostAfterMaySleepEndsTheReactorsBlockingWait) {
  engine::Reactor* reactor = engine::Reactor::of(&r_, true);
  ASSERT_NE(reactor, nullptr);
  Inbox inbox(*reactor);
  ASSERT_TRUE(inbox.may_sleep());
  ASSERT_TRUE(inbox.post(numbered(0, 0)));
  EXPECT_EQ(inbox.counters().wakeups, 1u);

  // Without the wake this run_once() would wait out its whole timeout with no event.
  constexpr int kLongWaitMs = 60'000;
  const Clock::time_point begin = Clock::now();
  EXPECT_GT(reactor->run_once(kLongWaitMs), 0) << "woken by the eventfd, not by the timeout";
  EXPECT_LT(Clock::now() - begin, std::chrono::milliseconds(kLongWaitMs));
  EXPECT_EQ(inbox.drain_with([](const RemoteCall&) {}), 1u);
}

}  // namespace
