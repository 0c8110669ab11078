// Timeouts of one reactor (engine/reactor.cc: start_timers, arm_timer, expire_timers; the
// libsock calls sock_set_timeout and sock_set_deadline): idle timeouts from the limits and per
// connection, reset by reads and by write progress but not by a stalled download; deadlines
// that nothing resets; many timers at once; and the reason on_close reports on every path.
//
// The reactor reads a fake clock (tests/testing/fake_clock.h) that the test steps by hand,
// kStep at a time, running the loop between steps: every time below is that clock's, so the
// contract "never early, at most a couple of wheel ticks late" is checked exactly, and a
// loaded machine pausing the test thread changes nothing (no real time passes for the
// reactor meanwhile). Real time bounds only how long a wait for the loop may take.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/fd_table.h"
#include "engine/libreact.h"
#include "engine/libsock.h"
#include "engine/timer_wheel.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/loopback.h"
#include "tests/testing/reactor_fixture.h"
#include "tests/testing/run_until.h"

namespace {

using std::chrono::milliseconds;
using testing_support::pattern;
using testing_support::run_until;

// The fake clock moves this much between loop iterations while a test waits for a timeout.
constexpr milliseconds kStep{10};
// How late a timeout may fire: durations round up to whole wheel ticks (< 1 tick), activity
// counts from the end of its tick (1 tick), and the test looks once per kStep.
constexpr milliseconds kLateness = 2 * milliseconds(engine::TimerWheel::kTickMs) + kStep;

// Not a multiple of a tick or of kStep: a timer that started mid-tick must still not fire early.
constexpr milliseconds kOffTick{37};

// Small kernel buffers on both ends, so that the user-level queue, not the kernel, holds a
// download and a reader's pace is the download's pace.
constexpr int kSmallBuffer = 4096;

// A server on the fixture's reactor that logs every connection it accepts (in accept order,
// which is connect order for one listener) and how each ended, in fake-clock milliseconds.
class TimeoutTest : public testing_support::ServerFixture {
 protected:
  struct Conn {
    int server = -1;
    int client = -1;
    int64_t start = 0;  // when the server accepted it (the clock stands still meanwhile)
    std::string input;  // what the server read
    bool read = true;   // false: the server ignores its input
    int closes = 0;
    SockCloseReason reason = SOCK_CLOSE_LOCAL;
    int64_t closed_at = 0;
  };

  void SetUp() override {
    ServerFixture::SetUp();
    clock_.install(&r_);
    // Connections then start part-way into a wheel tick, where rounding can go wrong.
    clock_.advance(kOffTick);
  }

  void TearDown() override {
    // The hooks capture the test body's locals, gone by now; the closes below still call
    // on_data (EOF).
    accept_hook_ = data_hook_ = nullptr;
    for (const Conn& c : conns_) close(c.client);
    ServerFixture::TearDown();
  }

  int64_t now() const { return clock_.now_ms(); }

  void set_idle_timeout(unsigned ms) {
    ReactorLimits limits{};
    limits.idle_timeout_ms = ms;
    ASSERT_EQ(reactor_set_limits(&r_, &limits), 0);
  }

  // Connects `n` clients (their receive buffers shrunk to rcvbuf when > 0) and runs the
  // reactor until it has accepted them all. Batches stay far below the listen backlog.
  void open_connections(std::size_t n, int rcvbuf = 0) {
    const std::size_t first = conns_.size();
    while (clients_.size() < first + n) {
      const std::size_t batch = std::min<std::size_t>(first + n - clients_.size(), 50);
      for (std::size_t i = 0; i < batch; ++i) {
        clients_.push_back(testing_support::connect_client(listener_.port, rcvbuf));
      }
      ASSERT_TRUE(run_until(&r_, [&] { return conns_.size() == clients_.size(); }));
    }
  }

  // One connection: conns_.back().
  Conn& open_connection(int rcvbuf = 0) {
    open_connections(1, rcvbuf);
    return conns_.back();
  }

  // Moves the clock towards `until` (a fake time) kStep at a time, running the loop after
  // each step, until done() holds or the clock reached `until`. Returns done().
  bool advance_until(const std::function<bool()>& done, int64_t until) {
    while (!done() && now() < until) {
      clock_.advance(std::min(kStep, milliseconds(until - now())));
      for (int i = 0; i < 2; ++i) engine::Reactor::of(&r_, true)->run_once(0);
    }
    return done();
  }

  // Moves the clock by `d`, running the loop after each step.
  void advance(milliseconds d) {
    advance_until([] { return false; }, now() + d.count());
  }

  void on_accept(int fd) override {
    Conn& c = conns_.emplace_back();
    c.server = fd;
    c.client = clients_.at(conns_.size() - 1);
    c.start = now();
    live_[fd] = &c;
    if (accept_hook_) accept_hook_(c);
  }

  void on_connection_data(int fd) override {
    Conn* c = live_.at(fd);
    if (!c->read) return;
    char buf[4096];
    ssize_t n;
    while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
      c->input.append(buf, static_cast<std::size_t>(n));
    }
    if (data_hook_ && live_.count(fd)) data_hook_(*c);
  }

  void on_ready(struct Reactor*, int) override { ++readies_; }

  void on_close(struct Reactor* r, int fd) override {
    ServerFixture::on_close(r, fd);
    const auto it = live_.find(fd);
    if (it == live_.end()) {  // not accepted: the listener, a sock_connect
      others_closed_.emplace_back(fd, sock_close_reason());
      return;
    }
    it->second->reason = sock_close_reason();
    it->second->closed_at = now();
    ++it->second->closes;
    live_.erase(it);
  }

  // Asserts that c closed once for a timeout, no sooner than `timeout` after `from` and at
  // most kLateness after that.
  static void expect_timed_out(const Conn& c, int64_t from, milliseconds timeout) {
    EXPECT_EQ(c.closes, 1);
    EXPECT_EQ(c.reason, SOCK_CLOSE_TIMEOUT);
    EXPECT_GE(c.closed_at - from, timeout.count()) << "a timeout fired early";
    EXPECT_LE(c.closed_at - from, (timeout + kLateness).count()) << "a timeout fired late";
  }

  // Runs the clock until c closed or `timeout` plus kLateness passed since `from`, then
  // expect_timed_out().
  void expect_closes_at_its_timeout(const Conn& c, int64_t from, milliseconds timeout) {
    EXPECT_TRUE(advance_until([&] { return c.closes > 0; }, from + (timeout + kLateness).count()))
        << "still open " << (timeout + kLateness).count() << " ms after its timer started";
    expect_timed_out(c, from, timeout);
  }

  testing_support::FakeClock clock_;
  std::deque<Conn> conns_;  // a deque: live_ points into it
  std::map<int, Conn*> live_;
  std::vector<int> clients_;
  std::vector<std::pair<int, SockCloseReason>> others_closed_;
  int readies_ = 0;
  std::function<void(Conn&)> accept_hook_, data_hook_;
};

// ---------------------------------------------------------------------------------------
// Idle timeouts

TEST_F(TimeoutTest, IdleTimeoutFromTheLimitsClosesAnIdleConnectionWithReasonTimeout) {
  set_idle_timeout(300);
  Conn& c = open_connection();
  expect_closes_at_its_timeout(c, c.start, milliseconds(300));
  settle();
  EXPECT_EQ(c.closes, 1);
  std::string rest;
  EXPECT_FALSE(testing_support::drain(c.client, &rest)) << "the client sees the close";
  EXPECT_EQ(rest, "");
}

TEST_F(TimeoutTest, PerConnectionTimeoutOverridesTheLimitsAndZeroMeansNever) {
  set_idle_timeout(250);
  // Connection 0 keeps the reactor's 250 ms, 1 gets 700 ms, 2 never times out.
  accept_hook_ = [&](Conn& c) {
    const unsigned timeout_ms[] = {250, 700, 0};
    if (conns_.size() > 1) {
      EXPECT_EQ(sock_set_timeout(c.server, timeout_ms[conns_.size() - 1]), 0);
    }
  };
  open_connections(3);
  const Conn& by_default = conns_[0];
  const Conn& longer = conns_[1];
  const Conn& never = conns_[2];
  expect_closes_at_its_timeout(by_default, by_default.start, milliseconds(250));
  expect_closes_at_its_timeout(longer, longer.start, milliseconds(700));
  // Idle for ten times the longest of the others' timeouts, and still open.
  advance(milliseconds(7000));
  EXPECT_EQ(never.closes, 0);
  EXPECT_GE(sock_status(never.server), 0);

  EXPECT_EQ(sock_set_timeout(-1, 100), -1);
  EXPECT_EQ(errno, EBADF);
  EXPECT_EQ(sock_set_timeout(by_default.server, 100), -1) << "a closed fd has no timer to set";
  EXPECT_EQ(errno, EBADF);
}

TEST_F(TimeoutTest, ReadsResetTheIdleTimer) {
  constexpr milliseconds kTimeout{600};
  set_idle_timeout(kTimeout.count());
  Conn& c = open_connection();
  // A byte every kTimeout / 3 for three timeouts: each read restarts the timer.
  std::string sent;
  int64_t last_send = c.start;
  for (int i = 0; i < 9; ++i) {
    advance(kTimeout / 3);
    ASSERT_EQ(c.closes, 0) << "closed while the client kept sending, after " << sent.size()
                           << " bytes";
    const char byte = static_cast<char>('a' + i);
    ASSERT_EQ(send(c.client, &byte, 1, MSG_NOSIGNAL), 1);
    sent += byte;
    last_send = now();
    ASSERT_TRUE(run_until(&r_, [&] { return c.input.size() == sent.size() || c.closes; }));
  }
  EXPECT_EQ(c.input, sent);
  EXPECT_EQ(c.closes, 0);
  // Silence: the timeout runs from the last byte.
  expect_closes_at_its_timeout(c, last_send, kTimeout);
}

// Reads what the client has (at most `max` bytes), then runs the loop until the server's
// queue has had its chance to move; `last_move` becomes the fake time of a move seen.
class DownloadTest : public TimeoutTest {
 protected:
  void read_some(const Conn& c, std::size_t max, std::string* got, int64_t* last_move) {
    std::string buf(max, '\0');
    const ssize_t n = recv(c.client, buf.data(), max, MSG_DONTWAIT);
    if (n > 0) got->append(buf.data(), static_cast<std::size_t>(n));
    // The kernel hands the room back at once on loopback; a few iterations let the reactor
    // flush into it. The clock stands still meanwhile, so a move seen is dated exactly.
    const ssize_t before = sock_pending(c.server);
    run_iterations(3);
    if (c.closes == 0 && sock_pending(c.server) != before) *last_move = now();
  }
};

TEST_F(DownloadTest, WriteProgressKeepsASlowDownloadAliveUntilItCompletes) {
  constexpr milliseconds kTimeout{450};
  set_idle_timeout(kTimeout.count());
  // Reads of at most 8 KB, kTimeout / 3 apart: the download takes over 3 timeouts.
  const std::string payload = pattern(96 * 1024, 3);
  accept_hook_ = [&](Conn& c) {
    testing_support::set_sndbuf(c.server, kSmallBuffer);
    EXPECT_EQ(sock_write(c.server, payload.data(), payload.size()), 0);
  };
  Conn& c = open_connection(kSmallBuffer);
  std::string got;
  int64_t last_move = c.start;
  while (got.size() < payload.size() && c.closes == 0 && now() - c.start < 60'000) {
    advance(kTimeout / 3);
    read_some(c, 8192, &got, &last_move);
  }
  EXPECT_EQ(c.closes, 0) << "closed after " << got.size() << " of " << payload.size() << " bytes";
  EXPECT_EQ(got.size(), payload.size());
  EXPECT_EQ(testing_support::first_difference(got, payload), payload.size());
  EXPECT_GE(now() - c.start, 3 * kTimeout.count()) << "the download did not outlast the timeout";
  EXPECT_EQ(sock_pending(c.server), 0);

  // Done and idle: the timeout runs from the last write.
  expect_closes_at_its_timeout(c, last_move, kTimeout);
}

TEST_F(DownloadTest, ReaderThatStopsReadingIsClosedOneTimeoutAfterTheQueueStopsMoving) {
  constexpr milliseconds kTimeout{300};
  set_idle_timeout(kTimeout.count());
  const std::string payload = pattern(1024 * 1024, 4);
  accept_hook_ = [&](Conn& c) {
    testing_support::set_sndbuf(c.server, kSmallBuffer);
    EXPECT_EQ(sock_write(c.server, payload.data(), payload.size()), 0);
  };
  Conn& c = open_connection(kSmallBuffer);
  // Three paced reads, then nothing: the queue stops moving with most of it still queued.
  std::string got;
  int64_t last_move = c.start;
  for (int i = 0; i < 3; ++i) {
    advance(kTimeout / 3);
    ASSERT_EQ(c.closes, 0) << "closed while the reader was reading";
    read_some(c, 8192, &got, &last_move);
  }
  EXPECT_GT(last_move, c.start) << "the reads moved the queue";
  EXPECT_GT(sock_pending(c.server), 0);
  expect_closes_at_its_timeout(c, last_move, kTimeout);
  EXPECT_GT(got.size(), 0u);
  EXPECT_LT(got.size(), payload.size());
  EXPECT_EQ(testing_support::first_difference(got, payload), got.size());
}

// How a client's stream ended once the server closed: 0 for a FIN (EOF), else recv's errno.
int stream_end(struct Reactor* r, int client) {
  int end = -1;
  char buf[65536];
  const bool ended = run_until(r, [&] {
    for (;;) {
      const ssize_t n = recv(client, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) continue;
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return false;
      end = n == 0 ? 0 : errno;
      return true;
    }
  });
  EXPECT_TRUE(ended) << "the stream did not end";
  return end;
}

// A timeout with bytes still owed to the peer resets the connection: with a FIN, the orphaned
// socket would go on offering a reader that stopped what its kernel holds, and a response cut
// short would end like a whole one.
TEST_F(DownloadTest, TimeoutWithBytesStillOwedResetsTheConnection) {
  constexpr milliseconds kTimeout{300};
  set_idle_timeout(kTimeout.count());
  const std::string payload = pattern(1024 * 1024, 5);
  accept_hook_ = [&](Conn& c) {
    EXPECT_EQ(sock_write(c.server, payload.data(), payload.size()), 0);
  };
  Conn& c = open_connection(kSmallBuffer);
  expect_closes_at_its_timeout(c, c.start, kTimeout);
  EXPECT_EQ(stream_end(&r_, c.client), ECONNRESET);
}

TEST_F(TimeoutTest, IdleTimeoutWithNothingOwedClosesWithAFin) {
  set_idle_timeout(300);
  Conn& c = open_connection();
  expect_closes_at_its_timeout(c, c.start, milliseconds(300));
  EXPECT_EQ(stream_end(&r_, c.client), 0);
}

// An fd without a reactor closed gracefully through one: that reactor drains it, and bounds
// the drain as it bounds its own connections' (a peer that stops reading meets the idle
// timeout) instead of holding the fd and its queue until the reactor stops.
TEST_F(TimeoutTest, GracefulCloseThroughAReactorOfAnFdWithoutOneMeetsTheIdleTimeout) {
  constexpr milliseconds kTimeout{300};
  set_idle_timeout(kTimeout.count());
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
  ASSERT_EQ(sock_open(nullptr, pair[0]), 0);
  const std::string payload = pattern(4 * 1024 * 1024, 9);  // far past the socket's buffers
  ASSERT_EQ(sock_write(pair[0], payload.data(), payload.size()), 0);
  sock_close(&r_, pair[0]);  // pair[1] never reads: the queue never drains
  const int64_t from = now();
  const auto closed = [&] { return !others_closed_.empty(); };
  EXPECT_TRUE(advance_until(closed, from + (kTimeout + kLateness).count()));
  ASSERT_EQ(others_closed_.size(), 1u);
  EXPECT_EQ(others_closed_[0].first, pair[0]);
  EXPECT_EQ(others_closed_[0].second, SOCK_CLOSE_TIMEOUT);
  close(pair[1]);
}

// ---------------------------------------------------------------------------------------
// Deadlines

TEST_F(TimeoutTest, DeadlineClosesAConnectionThatKeepsSending) {
  // Slowloris: a byte every deadline / 10 keeps the idle timer fresh, never the deadline.
  constexpr milliseconds kDeadline{800};
  set_idle_timeout(400);
  accept_hook_ = [&](Conn& c) { EXPECT_EQ(sock_set_deadline(c.server, kDeadline.count()), 0); };
  Conn& c = open_connection();
  std::size_t sent = 0;
  while (c.closes == 0 && now() - c.start < (kDeadline + kLateness).count()) {
    advance(kDeadline / 10);
    const char byte = 'x';
    if (c.closes == 0 && send(c.client, &byte, 1, MSG_NOSIGNAL) == 1) ++sent;
    ASSERT_TRUE(run_until(&r_, [&] { return c.input.size() == sent || c.closes; }));
  }
  expect_timed_out(c, c.start, kDeadline);
  EXPECT_GE(sent, 9u);
  EXPECT_EQ(c.input.size(), sent);
}

TEST_F(TimeoutTest, DeadlineOfZeroClearsIt) {
  // A protocol's "request header within 300 ms": connection 0 completes its header (a line)
  // at once and its deadline is cleared; connection 1 never does and is closed at 300 ms.
  constexpr milliseconds kDeadline{300};
  set_idle_timeout(0);
  accept_hook_ = [&](Conn& c) { EXPECT_EQ(sock_set_deadline(c.server, kDeadline.count()), 0); };
  int cleared = 0;
  data_hook_ = [&](Conn& c) {
    if (c.input.find('\n') != std::string::npos && !cleared++) {
      EXPECT_EQ(sock_set_deadline(c.server, 0), 0);
    }
  };
  open_connections(2);
  const Conn& complete = conns_[0];
  const Conn& incomplete = conns_[1];
  testing_support::write_all(complete.client, "GET /\n");
  testing_support::write_all(incomplete.client, "GET /");
  ASSERT_TRUE(run_until(
      &r_, [&] { return complete.input.size() == 6 && incomplete.input.size() == 5; }));
  expect_closes_at_its_timeout(incomplete, incomplete.start, kDeadline);
  EXPECT_EQ(incomplete.input, "GET /");
  // Open for ten deadlines.
  advance(10 * kDeadline);
  EXPECT_EQ(complete.closes, 0);
  EXPECT_EQ(cleared, 1);
  EXPECT_EQ(complete.input, "GET /\n");
  EXPECT_GE(sock_status(complete.server), 0);
  // Clearing the deadline gave back the per-connection extra state: idle, it costs one slot.
  EXPECT_EQ(engine::fd_slot(complete.server)->extra, nullptr);
}

// ---------------------------------------------------------------------------------------
// Many timers

TEST_F(TimeoutTest, TwoHundredConnectionsWithSpreadTimeoutsAllCloseNoneEarly) {
  constexpr std::size_t kConnections = 200;
  // 100 ms to 1095 ms: a different timeout for each connection, over 20 wheel ticks.
  const auto timeout_of = [](std::size_t i) { return milliseconds(100 + 5 * i); };
  accept_hook_ = [&](Conn& c) {
    const std::size_t i = conns_.size() - 1;
    EXPECT_EQ(sock_set_timeout(c.server, static_cast<unsigned>(timeout_of(i).count())), 0);
  };
  open_connections(kConnections);
  const int64_t last_due = conns_.back().start + (timeout_of(kConnections - 1) + kLateness).count();
  EXPECT_TRUE(advance_until([&] { return live_.empty(); }, last_due));
  for (std::size_t i = 0; i < kConnections; ++i) {
    SCOPED_TRACE("connection " + std::to_string(i));
    expect_timed_out(conns_[i], conns_[i].start, timeout_of(i));
    std::string rest;
    EXPECT_FALSE(testing_support::drain(conns_[i].client, &rest)) << "the client sees the close";
  }
}

// ---------------------------------------------------------------------------------------
// Close reasons (libsock.h, enum SockCloseReason)

TEST_F(TimeoutTest, PeerCloseReportsPeer) {
  Conn& c = open_connection();
  testing_support::write_all(c.client, "last words");
  close(c.client);
  c.client = -1;
  ASSERT_TRUE(run_until(&r_, [&] { return c.closes > 0; }));
  EXPECT_EQ(c.reason, SOCK_CLOSE_PEER);
  EXPECT_EQ(c.input, "last words");
}

TEST_F(TimeoutTest, LocalClosesReportLocal) {
  open_connections(3);
  sock_close(&r_, conns_[0].server);
  sock_force_close(&r_, conns_[1].server);
  reactor_close(&r_, conns_[2].server);
  ASSERT_TRUE(run_until(&r_, [&] { return live_.empty(); }));
  for (const Conn& c : conns_) {
    EXPECT_EQ(c.closes, 1);
    EXPECT_EQ(c.reason, SOCK_CLOSE_LOCAL);
  }
}

TEST_F(TimeoutTest, PeerResetReportsErrorWhetherTheServerReadsOrNot) {
  // A RST makes the read fail with ECONNRESET: a read error (libsock.h), not an orderly
  // close. A server that ignores its input hears of it through EPOLLERR: the same reason.
  open_connections(2);
  Conn& reads = conns_[0];
  Conn& ignores = conns_[1];
  ignores.read = false;
  for (Conn* c : {&reads, &ignores}) {
    testing_support::write_all(c->client, "abc");
    testing_support::reset_on_close(c->client);
    close(c->client);
    c->client = -1;
  }
  ASSERT_TRUE(run_until(&r_, [&] { return live_.empty(); }));
  EXPECT_EQ(reads.reason, SOCK_CLOSE_ERROR);
  EXPECT_EQ(ignores.reason, SOCK_CLOSE_ERROR);
  EXPECT_EQ(ignores.input, "");
  settle();
  EXPECT_EQ(reads.closes, 1);
  EXPECT_EQ(ignores.closes, 1);
}

TEST_F(TimeoutTest, FailedConnectReportsError) {
  // A port nobody listens on: a listener's, closed again.
  const testing_support::Listener gone = testing_support::listen_loopback();
  close(gone.fd);
  const int fd = sock_connect(&r_, "127.0.0.1", std::to_string(gone.port).c_str());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(run_until(&r_, [&] { return !others_closed_.empty(); }));
  ASSERT_EQ(others_closed_.size(), 1u);
  EXPECT_EQ(others_closed_[0].first, fd);
  EXPECT_EQ(others_closed_[0].second, SOCK_CLOSE_ERROR);
  EXPECT_EQ(readies_, 0) << "a failed connect is never ready";
}

// ---------------------------------------------------------------------------------------
// Timers across reactor_remove and reactor_add, and settings changed once a timer is past due

// A connection detached while its idle timer fell due: the wheel dropped that entry, and the
// connection, added back, was never timed out again. Its idle time now counts from the add
// (nobody watched its reads and writes meanwhile).
TEST_F(TimeoutTest, IdleTimerThatFellDueWhileDetachedTimesOutOnceAddedBack) {
  set_idle_timeout(300);
  Conn& c = open_connection();
  ASSERT_EQ(reactor_remove(&r_, c.server), 0);
  advance(milliseconds(1000));  // the entry falls due with nobody attached
  EXPECT_EQ(c.closes, 0) << "a detached fd is not the reactor's to close";
  ASSERT_EQ(reactor_add(&r_, c.server), 0);
  expect_closes_at_its_timeout(c, now(), milliseconds(300));
}

// The same for a deadline, which nothing extends: added back before it, it still holds.
TEST_F(TimeoutTest, DeadlineKeepsCountingWhileDetachedAndClosesTheConnectionAddedBack) {
  constexpr milliseconds kDeadline{500};
  set_idle_timeout(0);
  accept_hook_ = [&](Conn& c) { EXPECT_EQ(sock_set_deadline(c.server, kDeadline.count()), 0); };
  Conn& passed = open_connection();  // its deadline passes while detached
  Conn& ahead = open_connection();   // added back before its deadline
  ASSERT_EQ(reactor_remove(&r_, passed.server), 0);
  ASSERT_EQ(reactor_remove(&r_, ahead.server), 0);
  advance(kDeadline / 2);
  ASSERT_EQ(reactor_add(&r_, ahead.server), 0);
  advance(kDeadline);
  ASSERT_EQ(reactor_add(&r_, passed.server), 0);
  EXPECT_EQ(passed.closes, 0) << "closed inside reactor_add";
  expect_closes_at_its_timeout(ahead, ahead.start, kDeadline);
  EXPECT_TRUE(advance_until([&] { return passed.closes > 0; }, now() + kLateness.count()));
  EXPECT_EQ(passed.closes, 1);
  EXPECT_EQ(passed.reason, SOCK_CLOSE_TIMEOUT);
}

// sock_set_timeout and sock_set_deadline on a connection whose deadline or idle time passed
// in this tick (its wheel entry not run yet) closed it inside the call: on_close ran within
// the caller's callback, on a connection the call then reported as set. The close now waits
// for the timer step of the same iteration.
TEST_F(TimeoutTest, ChangingATimerThatIsAlreadyDueClosesTheConnectionInTheTimerStepNotInTheCall) {
  set_idle_timeout(300);
  accept_hook_ = [&](Conn& c) {
    // The trigger outlives the clock's jump whichever iteration reads its byte.
    EXPECT_EQ(conns_.size() == 1 ? sock_set_timeout(c.server, 60'000)
              : conns_.size() == 3 ? sock_set_deadline(c.server, 100)
                                   : 0,
              0);
  };
  Conn& trigger = open_connection();
  Conn& idle = open_connection();      // idle past its timeout below
  Conn& deadline = open_connection();  // past its deadline below
  int calls = 0;
  data_hook_ = [&](Conn& c) {
    if (&c != &trigger || calls++) return;
    EXPECT_EQ(sock_set_timeout(deadline.server, 60'000), 0);
    EXPECT_EQ(deadline.closes, 0) << "sock_set_timeout closed the fd inside the call";
    EXPECT_EQ(sock_set_deadline(idle.server, 60'000), 0);
    EXPECT_EQ(idle.closes, 0) << "sock_set_deadline closed the fd inside the call";
  };
  // Both expiries pass with no loop run in between, so their entries have not fired.
  clock_.advance(milliseconds(500));
  testing_support::write_all(trigger.client, "x");
  ASSERT_TRUE(run_until(&r_, [&] { return calls > 0; }));
  ASSERT_TRUE(run_until(&r_, [&] { return idle.closes && deadline.closes; }));
  EXPECT_EQ(idle.reason, SOCK_CLOSE_TIMEOUT);
  EXPECT_EQ(deadline.reason, SOCK_CLOSE_TIMEOUT);
  EXPECT_EQ(trigger.closes, 0);
}

TEST_F(TimeoutTest, ReasonOutsideOnCloseIsLocal) {
  EXPECT_EQ(sock_close_reason(), SOCK_CLOSE_LOCAL);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Trimming after churn (Reactor::trim): closed connections leave their idle-timer entries in
// the wheel until due; once thousands pile up an iteration that waited drops them. A
// connection only detached for now (reactor_remove) loses its entry too, and, added back,
// still times out when it would have.

TEST_F(TimeoutTest, TrimAfterChurnKeepsTheTimeoutOfADetachedConnection) {
  set_idle_timeout(1000);
  Conn& kept = open_connection();
  ASSERT_EQ(reactor_remove(&r_, kept.server), 0);
  // 5,000 short connections (pipes opened with sock_open, each filing an idle timer, then
  // closed): their entries are dead, far more than the live connections allow.
  for (int i = 0; i < 5000; ++i) {
    int p[2];
    ASSERT_EQ(pipe(p), 0);
    ASSERT_EQ(sock_open(&r_, p[0]), 0);
    sock_force_close(&r_, p[0]);
    close(p[1]);
  }
  auto trims = [&] {
    SockStats s{};
    s.size = sizeof s;
    sock_stats(&r_, &s);
    return s.trims;
  };
  const uint64_t before = trims();
  // An iteration that may wait (timeout 1 ms: the loop is keeping up) trims.
  ASSERT_TRUE(run_until(&r_, [&] {
    engine::Reactor::of(&r_, true)->run_once(1);
    return trims() > before;
  }));
  ASSERT_EQ(reactor_add(&r_, kept.server), 0);
  expect_closes_at_its_timeout(kept, kept.start, milliseconds(1000));
}
