// engine/routing: every reactor, not only a shard's, takes sock_ calls from other threads. A
// struct Reactor driven by the program on its own thread (thread R) gets writes and a close
// from two other threads on one of its connections, while R writes its own records: each is
// posted to R's inbox, made by the first post, and R runs them in order without any other
// event to wake it (R waits in epoll_wait with no timeout and no timers). Calls that need the
// owner thread fail with EPERM elsewhere; a stale handle fails with EBADF.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "engine/reactor.h"
#include "tests/testing/loopback.h"
#include "tests/testing/reactor_stats.h"
#include "tests/testing/thread_state.h"
#include "tests/testing/wait_for.h"

namespace {

using testing_support::wait_for;

#if defined(__SANITIZE_THREAD__)
constexpr uint32_t kRecords = 20000;  // per writer; TSan runs the same code about 10x slower
#else
constexpr uint32_t kRecords = 100000;
#endif
// R writes its own records this many at a time, between loop iterations.
constexpr uint32_t kOwnBatch = 100;
constexpr int kWriters = 3;  // two other threads, and R itself (writer 2)
constexpr uint32_t kOwn = 2;

// One sock_write: 16 bytes that say who wrote them, which of theirs they are, and a check
// word that a torn or shifted record cannot match.
struct Record {
  uint32_t writer;
  uint32_t seq;
  uint64_t check;
};
static_assert(sizeof(Record) == 16);

uint64_t check_of(uint32_t writer, uint32_t seq) {
  return (uint64_t{writer} << 32 | seq) * 0x9e3779b97f4a7c15u ^ 0x5bd1e995u;
}
Record record(uint32_t writer, uint32_t seq) { return Record{writer, seq, check_of(writer, seq)}; }

// What the client received, checked record by record as it arrives.
struct Stream {
  std::string carry;  // a record split across reads
  std::array<uint32_t, kWriters> next{};  // each writer's next expected seq
  uint64_t records = 0;
  uint64_t bad = 0;  // torn, foreign, lost, repeated or reordered records
  bool eof = false;

  // Reads what the socket has (blocking up to the poll timeout); false once the peer closed.
  bool pump(int fd, int timeout_ms) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return true;
    char buf[65536];
    const ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN)) {
      eof = true;
      return false;
    }
    if (n > 0) take(buf, static_cast<std::size_t>(n));
    return true;
  }
  void take(const char* data, std::size_t n) {
    carry.append(data, n);
    std::size_t at = 0;
    for (; carry.size() - at >= sizeof(Record); at += sizeof(Record)) {
      Record r;
      std::memcpy(&r, carry.data() + at, sizeof r);
      if (r.writer >= kWriters || r.check != check_of(r.writer, r.seq) || r.seq != next[r.writer]) {
        ++bad;
      } else {
        ++next[r.writer];
      }
      ++records;
    }
    carry.erase(0, at);
  }
};

// The reactor, its listener and its one connection, driven by thread R.
class RoutingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    listener_ = testing_support::listen_loopback();
    client_ = testing_support::connect_client(listener_.port);
    ASSERT_GE(client_, 0);
    api_.on_data = [](struct Reactor* r, int fd) {
      RoutingTest* self = current_;
      if (fd != self->listener_.fd) return;
      const int s = sock_accept(r, fd);
      if (s >= 0) self->server_ = s;
    };
    api_.on_close = [](struct Reactor*, int fd) {
      // The thread first: a test that sees the fd (seq_cst) then sees its thread too.
      current_->closed_on_ = testing_support::current_tid();
      current_->closed_fd_ = fd;
    };
    current_ = this;
  }

  void TearDown() override {
    if (b_thread_.joinable()) {
      b_go_ = true;
      reactor_stop(&b_);
      b_thread_.join();
    }
    if (r_thread_.joinable()) {
      reactor_stop(&api_);  // the stop closes every fd attached to it, the listener included
      r_thread_.join();
    } else {
      close(listener_.fd);
    }
    close(client_);
    current_ = nullptr;
  }

  // Starts thread R: it sets up the reactor, accepts the connection, then writes its own
  // `own` records a batch per iteration (not blocking while it has some left) and afterwards
  // waits for events with no timeout, until the stop.
  void start_r(uint32_t own) {
    r_thread_ = std::thread([this, own] {
      r_tid_ = testing_support::current_tid();
      EXPECT_EQ(reactor_add(&api_, listener_.fd), 0);
      engine::Reactor* r = engine::Reactor::of(&api_, true);
      uint32_t written = 0;
      for (;;) {
        const int s = server_.load();
        while (s >= 0 && written < own && !own_refused_) {
          const Record rec = record(kOwn, written);
          if (sock_write(s, &rec, sizeof rec) < 0) {
            own_refused_ = true;  // closed by a posted close: the rest would be refused too
            break;
          }
          if (++written % kOwnBatch == 0) break;
        }
        own_written_ = written;
        const bool busy = s < 0 || (written < own && !own_refused_);
        if (r->run_once(busy ? 0 : -1) < 0) break;  // -1 with errno 0: stopped
      }
    });
    ASSERT_TRUE(wait_for([&] { return server_.load() >= 0; }));
  }

  // Starts thread B, which makes reactor b_ its own, then waits until b_go_ before it drives
  // b_ (no timeout) until its stop: what is posted to b_ meanwhile waits in its inbox.
  void start_b() {
    std::atomic<bool> made{false};
    b_thread_ = std::thread([this, &made] {
      engine::Reactor* b = engine::Reactor::of(&b_, true);
      made = true;
      while (!b_go_) std::this_thread::yield();
      while (b->run_once(-1) >= 0) {}
    });
    ASSERT_TRUE(wait_for([&] { return made.load(); }));
  }

  // Once calls posted to b_ before this one have run: fd numbers opened there meanwhile.
  void wait_for_b_to_catch_up() {
    int pair[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
    ASSERT_EQ(sock_open(&b_, pair[0]), 0);  // posted behind the others (one inbox, in order)
    EXPECT_TRUE(wait_for([&] { return sock_status(pair[0]) >= 0; }));
    close(pair[1]);  // b_ closes pair[0] at its stop
  }

  static inline RoutingTest* current_ = nullptr;
  struct Reactor api_ = {};
  testing_support::Listener listener_;
  int client_ = -1;
  std::thread r_thread_;
  std::atomic<pid_t> r_tid_{0};
  std::atomic<int> server_{-1};
  std::atomic<uint32_t> own_written_{0};
  std::atomic<bool> own_refused_{false};
  std::atomic<int> closed_fd_{-1};
  std::atomic<pid_t> closed_on_{0};
  struct Reactor b_ = {};
  std::thread b_thread_;
  std::atomic<bool> b_go_{false};
};

// What a plain socket received, polled (no blocking read) until `size` bytes came or
// wait_for's deadline passed.
std::string receive(int fd, std::size_t size) {
  std::string got;
  wait_for([&] {
    char buf[256];
    const ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
    return got.size() >= size;
  });
  return got;
}

void write_records(int fd, uint32_t writer, uint32_t count, std::atomic<uint64_t>* failures) {
  for (uint32_t seq = 0; seq < count; ++seq) {
    const Record rec = record(writer, seq);
    if (sock_write(fd, &rec, sizeof rec) != 0) ++*failures;
  }
}

TEST_F(RoutingTest, WritesFromTwoOtherThreadsAndTheOwnersOwnArriveIntactAndEachInOrder) {
  start_r(kRecords);
  const int fd = server_.load();
  std::atomic<uint64_t> failures{0};
  std::vector<std::thread> writers;
  for (uint32_t w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] { write_records(fd, w, kRecords, &failures); });
  }
  Stream got;
  const uint64_t total = uint64_t{3} * kRecords;
  const bool all = wait_for([&] { return !got.pump(client_, 10) || got.records >= total; });
  for (auto& t : writers) t.join();
  EXPECT_TRUE(all) << got.records << " of " << total << " records arrived";
  EXPECT_EQ(failures.load(), 0u) << "writes from other threads return 0 once queued";
  EXPECT_FALSE(got.eof);
  EXPECT_EQ(got.records, total);
  EXPECT_EQ(got.bad, 0u);
  for (uint32_t w = 0; w < kWriters; ++w) EXPECT_EQ(got.next[w], kRecords) << "writer " << w;
  EXPECT_EQ(got.carry.size(), 0u);
}

TEST_F(RoutingTest, FirstCallPostedToAnIdleReactorWakesItWithNothingElseHappening) {
  start_r(0);
  // R sleeps in epoll_wait with no timeout and no inbox yet: the post that makes the inbox
  // must wake it, or nothing ever will.
  ASSERT_TRUE(wait_for([&] {
    return testing_support::sleeps_in(r_tid_.load(), {SYS_epoll_wait, SYS_epoll_pwait});
  }));
  const int fd = server_.load();
  std::thread([fd] {
    const Record rec = record(0, 0);
    EXPECT_EQ(sock_write(fd, &rec, sizeof rec), 0);
  }).join();
  Stream got;
  EXPECT_TRUE(wait_for([&] { return !got.pump(client_, 10) || got.records >= 1; }));
  EXPECT_EQ(got.records, 1u);
  EXPECT_EQ(got.bad, 0u);
  // Asleep again, now with an inbox: the inbox's own wakeup brings the next call.
  ASSERT_TRUE(wait_for([&] {
    return testing_support::sleeps_in(r_tid_.load(), {SYS_epoll_wait, SYS_epoll_pwait});
  }));
  std::thread([fd] {
    const Record rec = record(0, 1);
    EXPECT_EQ(sock_write(fd, &rec, sizeof rec), 0);
  }).join();
  EXPECT_TRUE(wait_for([&] { return !got.pump(client_, 10) || got.records >= 2; }));
  EXPECT_EQ(got.records, 2u);
  EXPECT_EQ(got.bad, 0u);
}

TEST_F(RoutingTest, CloseFromAnotherThreadDeliversEverythingQueuedBeforeItThenTheEof) {
  start_r(kRecords);
  const int fd = server_.load();
  const intptr_t handle = sock_fd2uuid(fd);
  ASSERT_GE(handle, 0);
  std::atomic<uint64_t> failures{0};
  // Writer 0 writes its records and then closes; writer 1 writes through the handle and stops
  // at the first refusal (the close ran first). Their calls and R's own interleave meanwhile.
  std::atomic<uint32_t> refused_at{kRecords};
  std::thread closer([&] {
    write_records(fd, 0, kRecords, &failures);
    sock_close(nullptr, fd);
  });
  std::thread other([&] {
    for (uint32_t seq = 0; seq < kRecords; ++seq) {
      const Record rec = record(1, seq);
      if (sock_write2(.buffer = &rec, .length = sizeof rec, .uuid = handle) != 0) {
        refused_at = seq;
        break;
      }
    }
  });
  Stream got;
  EXPECT_TRUE(wait_for([&] { return !got.pump(client_, 10); })) << "no EOF";
  closer.join();
  other.join();
  EXPECT_TRUE(got.eof);
  EXPECT_EQ(failures.load(), 0u);
  EXPECT_EQ(got.bad, 0u);
  EXPECT_EQ(got.carry.size(), 0u) << "a record was cut by the close";
  // Everything writer 0 queued before its close arrived; the others, a gap-free prefix.
  EXPECT_EQ(got.next[0], kRecords);
  EXPECT_LE(got.next[1], refused_at.load());
  EXPECT_LE(got.next[kOwn], own_written_.load());
  // The connection is gone: its handle is stale from any thread.
  const Record rec = record(1, 0);
  std::thread([&] {
    errno = 0;
    EXPECT_EQ(sock_write2(.buffer = &rec, .length = sizeof rec, .uuid = handle), -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_EQ(sock_close_uuid(handle), -1);
    EXPECT_EQ(errno, EBADF);
  }).join();
}

TEST_F(RoutingTest, CallsThatNeedTheOwnerThreadFailWithEpermElsewhere) {
  start_r(0);
  const int fd = server_.load();
  std::thread([fd] {
    char buf[16];
    errno = 0;
    EXPECT_EQ(sock_read(fd, buf, sizeof buf), -1);
    EXPECT_EQ(errno, EPERM);
    EXPECT_EQ(sock_set_timeout(fd, 100), -1);
    EXPECT_EQ(errno, EPERM);
    EXPECT_EQ(sock_pending(fd), -1);
    EXPECT_EQ(errno, EPERM);
    EXPECT_EQ(sock_tlc_get(fd), nullptr);
    EXPECT_EQ(errno, EPERM);
    // sock_status only reads the generation: any thread.
    EXPECT_GE(sock_status(fd), 0);
  }).join();
}

// A packet chain that cannot be sent is refused by the calling thread, where the caller keeps
// it (libsock.h), not posted: on R, a file packet without its FILE* crashed in fileno(NULL),
// and a length past the packet's memory sent what lies beyond it.
TEST_F(RoutingTest, APacketThatCannotBeSentIsRefusedWithEinvalBeforeItIsPosted) {
  start_r(0);
  const int fd = server_.load();
  std::thread([fd] {
    Packet* no_file = sock_checkout_packet();
    ASSERT_NE(no_file, nullptr);
    no_file->buffer = nullptr;
    no_file->metadata.is_file = 1;
    errno = 0;
    const ssize_t r = sock_send_packet(fd, no_file);
    EXPECT_EQ(r, -1);
    EXPECT_EQ(errno, EINVAL);
    if (r == -1) sock_free_packet(no_file);
    Packet* too_long = sock_checkout_packet();
    ASSERT_NE(too_long, nullptr);
    too_long->length = BUFFER_PACKET_SIZE + 1;
    errno = 0;
    const ssize_t r2 = sock_send_packet(fd, too_long);
    EXPECT_EQ(r2, -1);
    EXPECT_EQ(errno, EINVAL);
    if (r2 == -1) sock_free_packet(too_long);
    // The connection is intact, and nothing reached the peer before this write.
    const Record rec = record(0, 0);
    EXPECT_EQ(sock_write(fd, &rec, sizeof rec), 0);
  }).join();
  Stream got;
  EXPECT_TRUE(wait_for([&] { return !got.pump(client_, 10) || got.records >= 1; }));
  EXPECT_EQ(got.records, 1u);
  EXPECT_EQ(got.bad, 0u);
  EXPECT_EQ(got.carry.size(), 0u);
}

// A reactor on this thread cannot take an fd from one that another thread drives: that
// reactor's epoll set, counters and the fd's slot are its thread's alone (libreact.h,
// reactor_add: EEXIST; libsock.h, sock_attach and sock_open). The fd stays where it was,
// still served, and its count with it.
TEST_F(RoutingTest, AttachingAnFdThatAnotherThreadsReactorHoldsFailsWithEexist) {
  start_r(0);
  const int fd = server_.load();
  const auto connections = [](struct Reactor* r) { return testing_support::stats_of(r).connections; };
  const uint64_t before = connections(&api_);
  EXPECT_EQ(before, 2u);  // the listener and the connection
  struct Reactor other = {};
  errno = 0;
  EXPECT_EQ(sock_attach(&other, fd), -1);
  EXPECT_EQ(errno, EEXIST);
  errno = 0;
  EXPECT_EQ(reactor_add(&other, fd), -1);
  EXPECT_EQ(errno, EEXIST);
  // Opening the number afresh (as after a close(2) behind R's back and a reuse) is refused
  // too, before any of R's state for it is released or its generation moved.
  const intptr_t uuid = sock_fd2uuid(fd);  // carries the connection's generation
  errno = 0;
  EXPECT_EQ(sock_open(&other, fd), -1);
  EXPECT_EQ(errno, EEXIST);
  EXPECT_EQ(sock_fd2uuid(fd), uuid) << "the connection was reopened";
  EXPECT_EQ(connections(&api_), before);
  EXPECT_EQ(connections(&other), 0u);
  // R still owns it: a write from here is posted to R, which sends it.
  ASSERT_EQ(sock_write(fd, "still R's", 9), 0);
  EXPECT_EQ(receive(client_, 9), "still R's");
  reactor_stop(&other);
  EXPECT_EQ(reactor_review(&other), -1);  // nothing attached: the stop completes at once
}

// sock_open of an fd that R holds, on reactor B of a third thread: posted, the open would find
// R's hold only on B's thread, and close the fd under R (whose slot still says open, so R
// would serve and time out whatever reuses the number). Refused at once instead: EEXIST, as on
// B's own thread, and the fd stays R's, still served.
TEST_F(RoutingTest, OpeningOnAThirdThreadsReactorAnFdThatAReactorHoldsFailsWithEexistAndKeepsIt) {
  start_r(0);
  start_b();
  const int fd = server_.load();
  errno = 0;
  EXPECT_EQ(sock_open(&b_, fd), -1);
  EXPECT_EQ(errno, EEXIST);
  b_go_ = true;
  wait_for_b_to_catch_up();
  ASSERT_GE(fcntl(fd, F_GETFD), 0) << "the fd was closed under R";
  ASSERT_EQ(sock_write(fd, "still R's", 9), 0);
  EXPECT_EQ(receive(client_, 9), "still R's");
}

// An fd open without a reactor, then opened on B from here: until B runs the open, which
// releases what the first open left, the fd's calls fail with EBADF (libsock.h, "a posted
// open"), rather than run here, inline, on the slot B is about to release.
TEST_F(RoutingTest, AnFdOpenWithoutAReactorIsClosedToItsCallsUntilItsPostedOpenRuns) {
  start_b();
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
  ASSERT_EQ(sock_open(nullptr, pair[0]), 0);
  ASSERT_EQ(sock_write(pair[0], "first", 5), 0);  // sent at once: nothing queued
  ASSERT_EQ(sock_open(&b_, pair[0]), 0);  // B waits: the open stays posted
  errno = 0;
  EXPECT_EQ(sock_write(pair[0], "early", 5), -1);
  EXPECT_EQ(errno, EBADF);
  EXPECT_EQ(sock_status(pair[0]), -1);
  char byte;
  errno = 0;
  EXPECT_EQ(sock_read(pair[0], &byte, 1), -1);  // sock_read and sock_flush check the flags
  EXPECT_EQ(errno, EBADF);
  errno = 0;
  EXPECT_EQ(sock_flush(pair[0]), -1);
  EXPECT_EQ(errno, EBADF);
  b_go_ = true;
  ASSERT_TRUE(wait_for([&] { return sock_status(pair[0]) >= 0; }));
  ASSERT_EQ(sock_write(pair[0], "on B", 4), 0);  // posted to B, which sends it
  EXPECT_EQ(receive(pair[1], 9), "firston B");
  close(pair[1]);
}

// sock_status reads only the generation on any thread: while the thread using an fd without
// a reactor opens and clears it, another thread's sock_status never reads the slot's flags
// (a data race TSan reports).
TEST_F(RoutingTest, StatusFromAnotherThreadReadsNoFlagsOfAnFdWithoutAReactor) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
  std::atomic<bool> done{false};
  std::thread user([&] {
    for (int i = 0; i < 2000; ++i) {
      EXPECT_EQ(sock_open(nullptr, pair[0]), 0);
      sock_clear(pair[0]);
    }
    done = true;
  });
  while (!done) (void)sock_status(pair[0]);
  user.join();
  EXPECT_EQ(sock_status(pair[0]), -1);  // cleared last
  close(pair[0]);
  close(pair[1]);
}

// sock_accept from a thread other than the one whose reactor watches the listener: the
// listener's slot flags are that thread's (kReadPending, the TCP_NODELAY mark), so the accept
// leaves them alone (a data race TSan reports), and the connection still gets TCP_NODELAY.
TEST_F(RoutingTest, AcceptFromAnotherThreadOnAListenerThatRWatchesLeavesItsSlotToR) {
  start_r(0);
  std::atomic<bool> done{false};
  std::thread clients([&] {
    for (int i = 0; i < 200; ++i) close(testing_support::connect_client(listener_.port));
    done = true;
  });
  while (!done) {  // R accepts too: whichever thread is first takes each connection
    const int fd = sock_accept(nullptr, listener_.fd);
    if (fd < 0) continue;
    int nodelay = 0;
    socklen_t len = sizeof nodelay;
    EXPECT_EQ(getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, &len), 0);
    EXPECT_NE(nodelay, 0);
    sock_close(nullptr, fd);
  }
  clients.join();
}

// An fd opened without a reactor, closed through a reactor that another thread drives: the
// close goes to that thread, which attaches the fd, sends what was queued, closes it and runs
// its on_close there (sock_close: "runs on_close of fd's reactor, or of `reactor` when fd has
// none"), not on the caller's thread.
TEST_F(RoutingTest, CloseOfAnFdWithoutAReactorThroughOneOnAnotherThreadRunsOnThatThread) {
  start_r(0);
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
  ASSERT_EQ(sock_open(nullptr, pair[0]), 0);
  const std::string bytes = "queued before the close";
  ASSERT_EQ(sock_write(pair[0], bytes.data(), bytes.size()), 0);
  sock_close(&api_, pair[0]);
  std::string got;
  char buf[256];
  bool eof = false;
  EXPECT_TRUE(wait_for([&] {
    const ssize_t n = recv(pair[1], buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
    eof = n == 0;
    return eof;
  }));
  EXPECT_EQ(got, bytes);
  EXPECT_TRUE(wait_for([&] { return closed_fd_.load() == pair[0]; }));
  EXPECT_EQ(closed_on_.load(), r_tid_.load()) << "on_close ran off the reactor's thread";
  close(pair[1]);
}

// An fd moved back and forth between two reactors that one thread drives (sock_attach on
// that thread) keeps an owner throughout: another thread's calls route by it, and in a
// moment without one, sock_open onto a third thread's reactor would read "open without a
// reactor" and close the slot under the mover (sock_write would run inline, on the mover's
// slot). Each of those opens is refused with EEXIST instead, and every move succeeds.
TEST_F(RoutingTest, AnFdMovedBetweenTwoReactorsOfOneThreadKeepsAnOwnerThroughout) {
#if defined(__SANITIZE_THREAD__)
  constexpr int kMoves = 2000;
#else
  constexpr int kMoves = 20000;
#endif
  start_b();
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
  std::atomic<bool> moving{false};
  std::atomic<bool> done{false};
  std::atomic<bool> opener_done{false};
  std::atomic<int> failed_moves{0};
  std::thread mover([&] {
    struct Reactor x = {};
    struct Reactor y = {};
    if (sock_open(&x, pair[0]) != 0) ++failed_moves;
    moving = true;
    for (int i = 0; i < kMoves; ++i) {
      if (sock_attach(i % 2 ? &x : &y, pair[0]) != 0) ++failed_moves;
    }
    done = true;
    while (!opener_done) std::this_thread::yield();  // its last open saw the fd held, not closed
    sock_force_close(nullptr, pair[0]);
    for (struct Reactor* r : {&x, &y}) {
      reactor_stop(r);
      while (reactor_review(r) >= 0) {}
    }
  });
  while (!moving) std::this_thread::yield();
  int opened = 0;
  while (!done) {
    errno = 0;
    if (sock_open(&b_, pair[0]) == 0 || errno != EEXIST) ++opened;
  }
  opener_done = true;
  mover.join();
  EXPECT_EQ(failed_moves.load(), 0);
  EXPECT_EQ(opened, 0) << "sock_open found the fd open without an owner";
  close(pair[1]);
}

#if !defined(NDEBUG)
// Debug builds catch a caller that reaches past the routing: the owner-thread-only members of
// engine::Reactor assert their thread.
TEST_F(RoutingTest, OwnerThreadOnlyMembersAbortOnAnotherThreadInDebugBuilds) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  engine::Reactor* r = engine::Reactor::of(&api_, true);
  r->bind_owner_thread();  // this thread now; the death test's child runs the check elsewhere
  EXPECT_DEATH(std::thread([r] { r->assert_owner_thread(); }).join(), "is_owner_thread");
  reactor_stop(&api_);
  while (reactor_review(&api_) >= 0) {}
}
#endif

}  // namespace
