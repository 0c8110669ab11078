// The reactor through the libreact/libsock C API: on_close exactly once on every close path,
// peer half-close, fd reuse and stale events, edge-triggered progress, connect, backpressure,
// stop from a signal handler, timers, maxfd, static reactors, detach and re-attach.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/fd_table.h"
#include "engine/libreact.h"
#include "engine/libsock.h"
#include "engine/reactor.h"
#include "engine/remote.h"
#include "engine/routing.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/loopback.h"
#include "tests/testing/reactor_fixture.h"
#include "tests/testing/reactor_stats.h"
#include "tests/testing/run_until.h"

namespace {

using testing_support::connect_client;
using testing_support::listen_loopback;
using testing_support::pattern;
using testing_support::run_until;
using testing_support::set_sndbuf;

// Small kernel buffers on both ends, so a few hundred KB stay in the user-level queue.
constexpr int kSmallBuffer = 4096;

// Every callback of the fixture's reactor, counted, and the test's hook for each, if any.
struct Calls {
  std::map<int, int> data, ready, shutdown, close;
  std::vector<std::pair<char, int>> order;  // ('S' on_shutdown | 'C' on_close, fd)
  std::function<void(struct Reactor*, int)> on_data, on_ready, on_shutdown, on_close;
};

// Owns a plain fd (test clients, unattached listeners).
class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  void reset(int fd = -1) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

// What a test client has received, and how its stream ended.
struct Sink {
  std::string bytes;
  bool eof = false;  // recv returned 0: an orderly close
  int error = 0;     // the errno that ended the stream (ECONNRESET...)
  bool ended() const { return eof || error; }
};

// Reads what is available without blocking.
void pump(int fd, Sink* s) {
  char buf[65536];
  while (!s->ended()) {
    const ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      s->bytes.append(buf, static_cast<std::size_t>(n));
    } else if (n == 0) {
      s->eof = true;
    } else if (errno != EINTR) {
      if (errno != EAGAIN) s->error = errno;
      return;
    }
  }
}

// Runs r while the client fd is read into *s, until done().
template <typename Done>
bool pump_until(struct Reactor* r, int fd, Sink* s, Done&& done) {
  return run_until(r, [&] {
    pump(fd, s);
    return done();
  });
}

// Server side: sock_read until it stops giving bytes. Returns its last result (0: drained,
// -1: EOF when *err is 0, else an error).
ssize_t read_available(int fd, std::string* into, int* err = nullptr) {
  char buf[16384];
  for (;;) {
    const ssize_t n = sock_read(fd, buf, sizeof buf);
    if (n > 0) {
      into->append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (err) *err = n < 0 ? errno : 0;
    return n;
  }
}

// Waits (poll, no sleep) for a pending connection and accepts it for the sock_ API.
int accept_one(struct Reactor* r, int listener) {
  pollfd p{listener, POLLIN, 0};
  if (poll(&p, 1, 10000) != 1) return -1;
  return sock_accept(r, listener);
}

// Waits (poll, no sleep) until fd has input, without consuming any epoll edge.
bool wait_readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, 10000) == 1;
}

engine::FdSlot& slot_of(int fd) { return *engine::fd_slot(fd); }

// One iteration of the engine loop without waiting.
int run_once(struct Reactor* r) { return engine::Reactor::of(r, true)->run_once(0); }

// Runs iterations until one handles no event (at most `limit`): pending edges are consumed.
void settle(struct Reactor* r, int limit = 10) {
  while (limit-- > 0 && run_once(r) > 0) {}
}

class ReactorTest : public testing_support::ReactorFixture {
 protected:
  void TearDown() override {
    // The hooks capture the test body's locals, gone by now, and the stop below still runs
    // callbacks (on_shutdown, on_close).
    calls_.on_data = calls_.on_ready = calls_.on_shutdown = calls_.on_close = nullptr;
    listener_.reset();
    ReactorFixture::TearDown();
  }

  void on_data(struct Reactor* r, int fd) override {
    ++calls_.data[fd];
    if (calls_.on_data) calls_.on_data(r, fd);
  }
  void on_ready(struct Reactor* r, int fd) override {
    ++calls_.ready[fd];
    if (calls_.on_ready) calls_.on_ready(r, fd);
  }
  void on_shutdown(struct Reactor* r, int fd) override {
    ++calls_.shutdown[fd];
    calls_.order.emplace_back('S', fd);
    if (calls_.on_shutdown) calls_.on_shutdown(r, fd);
  }
  void on_close(struct Reactor* r, int fd) override {
    ++calls_.close[fd];
    calls_.order.emplace_back('C', fd);
    if (calls_.on_close) calls_.on_close(r, fd);
  }

  // Opens the test's loopback listener. It stays detached from r_: accept_next() takes its
  // connections one at a time, so the test knows which fd is which.
  void listen() {
    const auto l = listen_loopback();
    listener_.reset(l.fd);
    port_ = l.port;
  }
  // A new plain client of the listener; rcvbuf > 0 shrinks its receive buffer.
  int new_client(int rcvbuf = 0) { return connect_client(port_, rcvbuf); }
  // The server side of the next pending connection, accepted onto r_.
  int accept_next() { return accept_one(&r_, listener_.get()); }

  // listen(), one client (*c) and its server side accepted onto r_, returned. With buffer > 0
  // both the client's receive buffer and the server's send buffer are shrunk to it.
  int connect_one(UniqueFd* c, int buffer = 0) {
    listen();
    c->reset(new_client(buffer));
    const int s = accept_next();
    if (s >= 0 && buffer > 0) set_sndbuf(s, buffer);
    return s;
  }

  // Runs r_ until fd's queue met EAGAIN: the kernel buffers are full, the rest is queued.
  bool run_until_write_blocked(int fd) {
    return run_until(&r_, [&] { return (slot_of(fd).flags & engine::kWriteBlocked) != 0; });
  }

  // connect_one() with small buffers (*c, *s), then `payload` written to *s until the kernel
  // refuses more: the client does not read, so the rest stays queued.
  void connect_with_blocked_queue(UniqueFd* c, int* s, const std::string& payload) {
    *s = connect_one(c, kSmallBuffer);
    ASSERT_GE(*s, 0);
    ASSERT_EQ(sock_write(*s, payload.data(), payload.size()), 0);
    ASSERT_TRUE(run_until_write_blocked(*s));
  }

  // Consumes the pending edges and stops r_ (which closes every attached fd), then checks that
  // on_close ran exactly once in all for each of fds: never again at the stop.
  void expect_closed_once_through_stop(std::initializer_list<int> fds) {
    settle(&r_);
    stop();
    for (const int fd : fds) EXPECT_EQ(calls_.close[fd], 1) << "fd " << fd;
  }

  Calls calls_;
  UniqueFd listener_;
  int port_ = 0;
};

// ---------------------------------------------------------------------------------------
// on_close: exactly once per closed fd, on every path.

TEST_F(ReactorTest, OnCloseRunsOnceWhenPeerCloses) {
  UniqueFd c;
  const int s = connect_one(&c);
  ASSERT_GE(s, 0);
  int last = -2, last_err = -2;
  calls_.on_data = [&](struct Reactor*, int fd) {
    std::string in;
    last = static_cast<int>(read_available(fd, &in, &last_err));
  };
  c.reset();
  ASSERT_TRUE(run_until(&r_, [&] { return calls_.close[s] == 1; }));
  EXPECT_EQ(last, -1);
  EXPECT_EQ(last_err, 0);  // EOF, not an error
  expect_closed_once_through_stop({s});
}

TEST_F(ReactorTest, OnCloseRunsOnceWhenPeerResets) {
  UniqueFd c;
  const int s = connect_one(&c);
  ASSERT_GE(s, 0);
  int last_err = 0;
  calls_.on_data = [&](struct Reactor*, int fd) {
    std::string in;
    read_available(fd, &in, &last_err);
  };
  testing_support::reset_on_close(c.get());
  c.reset();
  ASSERT_TRUE(run_until(&r_, [&] { return calls_.close[s] == 1; }));
  EXPECT_EQ(last_err, ECONNRESET);
  expect_closed_once_through_stop({s});
}

TEST_F(ReactorTest, OnCloseRunsOnceWhenResetConnectionIsNeverRead) {
  // A callback that ignores its input: the hang-up alone must close the fd (once).
  UniqueFd c;
  const int s = connect_one(&c);
  ASSERT_GE(s, 0);
  testing_support::reset_on_close(c.get());
  c.reset();
  ASSERT_TRUE(run_until(&r_, [&] { return calls_.close[s] == 1; }));
  expect_closed_once_through_stop({s});
}

TEST_F(ReactorTest, SockCloseDeliversQueuedDataBeforeOnClose) {
  UniqueFd c;
  const int s = connect_one(&c, kSmallBuffer);
  ASSERT_GE(s, 0);
  const std::string payload = pattern(512 * 1024, 11);
  ASSERT_EQ(sock_write(s, payload.data(), payload.size()), 0);
  sock_close(&r_, s);
  // The client does not read: the queue cannot drain, so the fd must stay open.
  ASSERT_TRUE(run_until_write_blocked(s));
  EXPECT_GT(slot_of(s).queued_bytes, 0u);
  EXPECT_EQ(calls_.close[s], 0);
  Sink got;
  ASSERT_TRUE(pump_until(&r_, c.get(), &got, [&] { return got.ended() && calls_.close[s] == 1; }));
  EXPECT_TRUE(got.eof);
  EXPECT_EQ(got.error, 0);
  EXPECT_TRUE(got.bytes == payload);
  expect_closed_once_through_stop({s});
}

TEST_F(ReactorTest, SockForceCloseDropsQueueAndRunsOnCloseOnceAtOnce) {
  UniqueFd c;
  int s = -1;
  const std::string payload = pattern(512 * 1024, 12);
  ASSERT_NO_FATAL_FAILURE(connect_with_blocked_queue(&c, &s, payload));
  ASSERT_GT(slot_of(s).queued_bytes, 0u);
  sock_force_close(&r_, s);
  EXPECT_EQ(calls_.close[s], 1);  // synchronous
  EXPECT_EQ(fcntl(s, F_GETFD), -1);
  SockPoolStats stats{};
  ASSERT_EQ(sock_pool_stats(&r_, &stats), 0);
  EXPECT_EQ(stats.outstanding, 0u);  // the queue went back to the pool
  Sink got;
  ASSERT_TRUE(pump_until(&r_, c.get(), &got, [&] { return got.ended(); }));
  EXPECT_LT(got.bytes.size(), payload.size());
  EXPECT_TRUE(got.bytes == payload.substr(0, got.bytes.size()));
  expect_closed_once_through_stop({s});
}

TEST_F(ReactorTest, ReactorCloseRunsOnCloseOnce) {
  UniqueFd c;
  const int s = connect_one(&c);
  ASSERT_GE(s, 0);
  reactor_close(&r_, s);
  EXPECT_EQ(calls_.close[s], 1);
  EXPECT_EQ(fcntl(s, F_GETFD), -1);
  reactor_close(&r_, s);  // no longer attached: a no-op
  Sink got;
  ASSERT_TRUE(pump_until(&r_, c.get(), &got, [&] { return got.ended(); }));
  EXPECT_TRUE(got.eof);
  stop();
  EXPECT_EQ(calls_.close[s], 1);
}

TEST_F(ReactorTest, ClosesInsideOnDataRunOnCloseOnce) {
  listen();
  UniqueFd c1(new_client()), c2(new_client()), c3(new_client());
  const int s1 = accept_next(), s2 = accept_next(), s3 = accept_next();
  ASSERT_GE(s1, 0);
  ASSERT_GE(s2, 0);
  ASSERT_GE(s3, 0);
  int data_after_close = 0;
  calls_.on_data = [&](struct Reactor* r, int fd) {
    if (calls_.close[fd]) ++data_after_close;
    std::string in;
    read_available(fd, &in);
    if (in.empty()) return;
    if (fd == s1) {
      sock_write(fd, "bye", 3);
      sock_close(r, fd);
      EXPECT_EQ(sock_write(fd, "late", 4), -1);  // refused: the connection is closing
      EXPECT_EQ(errno, EPIPE);
    } else if (fd == s2) {
      sock_force_close(r, fd);
    } else if (fd == s3) {
      reactor_close(r, fd);
    }
  };
  testing_support::write_all(c1.get(), "x");
  testing_support::write_all(c2.get(), "x");
  testing_support::write_all(c3.get(), "x");
  Sink got1, got2, got3;
  ASSERT_TRUE(run_until(&r_, [&] {
    pump(c1.get(), &got1);
    pump(c2.get(), &got2);
    pump(c3.get(), &got3);
    return got1.ended() && got2.ended() && got3.ended();
  }));
  EXPECT_EQ(got1.bytes, "bye");
  EXPECT_TRUE(got1.eof);
  expect_closed_once_through_stop({s1, s2, s3});
  EXPECT_EQ(data_after_close, 0);
}

TEST_F(ReactorTest, DoubleClosesRunOnCloseOnce) {
  listen();
  UniqueFd c1(new_client()), c2(new_client()), c3(new_client()), c4(new_client());
  const int s1 = accept_next(), s2 = accept_next(), s3 = accept_next(), s4 = accept_next();
  ASSERT_GE(s4, 0);
  sock_close(&r_, s1);
  sock_close(&r_, s1);
  sock_close(&r_, s2);
  sock_force_close(&r_, s2);
  EXPECT_EQ(calls_.close[s2], 1);
  sock_force_close(&r_, s3);
  sock_force_close(&r_, s3);
  reactor_close(&r_, s4);
  sock_close(&r_, s4);
  sock_force_close(&r_, s4);
  ASSERT_TRUE(run_until(&r_, [&] { return calls_.close[s1] == 1; }));
  expect_closed_once_through_stop({s1, s2, s3, s4});
}

TEST_F(ReactorTest, CloseInsideOnCloseOfAnotherFdRunsEachOnCloseOnce) {
  listen();
  UniqueFd c1(new_client()), c2(new_client()), c3(new_client());
  const int a = accept_next(), b = accept_next(), c = accept_next();
  ASSERT_GE(c, 0);
  // a's on_close force-closes b (nested on_close) and gracefully closes c; b's on_close tries
  // to close a again, which is already closed.
  calls_.on_close = [&](struct Reactor* r, int fd) {
    if (fd == a) {
      sock_force_close(r, b);
      sock_close(r, c);
    } else if (fd == b) {
      sock_force_close(r, a);
      reactor_close(r, a);
    }
  };
  reactor_close(&r_, a);
  EXPECT_EQ(calls_.close[a], 1);
  EXPECT_EQ(calls_.close[b], 1);
  ASSERT_TRUE(run_until(&r_, [&] { return calls_.close[c] == 1; }));
  expect_closed_once_through_stop({a, b, c});
}

// ---------------------------------------------------------------------------------------
// EPOLLRDHUP is the end of the request, not an error.

TEST_F(ReactorTest, PeerHalfCloseDeliversRequestThenEofAndTheWholeResponse) {
  auto l = listen_loopback();
  ASSERT_EQ(reactor_add(&r_, l.fd), 0);
  const std::string request = pattern(8 * 1024, 21);
  const std::string response = pattern(1024 * 1024, 22);
  std::map<int, std::string> requests;
  std::string request_at_eof;
  int eofs = 0;
  int conn = -1;
  calls_.on_data = [&](struct Reactor* r, int fd) {
    if (fd == l.fd) {
      int s;
      while ((s = sock_accept(r, fd)) >= 0) conn = s;
      return;
    }
    int err = -1;
    if (read_available(fd, &requests[fd], &err) < 0 && err == 0) {
      ++eofs;
      request_at_eof = requests[fd];
      EXPECT_EQ(sock_write(fd, response.data(), response.size()), 0);
    }
  };
  // Request and FIN leave together, before the server even accepts.
  UniqueFd c(connect_client(l.port));
  ASSERT_EQ(send(c.get(), request.data(), request.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(request.size()));
  ASSERT_EQ(shutdown(c.get(), SHUT_WR), 0);
  Sink got;
  ASSERT_TRUE(pump_until(&r_, c.get(), &got, [&] { return got.ended(); }));
  EXPECT_EQ(eofs, 1);
  EXPECT_TRUE(request_at_eof == request);
  EXPECT_EQ(got.bytes.size(), response.size());
  EXPECT_TRUE(got.bytes == response);
  EXPECT_TRUE(got.eof);     // recv returned 0 ...
  EXPECT_EQ(got.error, 0);  // ... not ECONNRESET
  ASSERT_TRUE(run_until(&r_, [&] { return calls_.close[conn] == 1; }));
  stop();
  EXPECT_EQ(calls_.close[conn], 1);
}

// ---------------------------------------------------------------------------------------
// fd reuse and stale events.

TEST_F(ReactorTest, ReusedFdNeverReceivesTheOldConnectionsQueuedBytes) {
  UniqueFd ca;
  int a = -1;
  const std::string old_bytes = pattern(512 * 1024, 31);
  ASSERT_NO_FATAL_FAILURE(connect_with_blocked_queue(&ca, &a, old_bytes));
  // More output: A is now also listed for the next flush step, which must skip it.
  ASSERT_EQ(sock_write(a, "old tail", 8), 0);
  ASSERT_GT(slot_of(a).queued_bytes, 0u);
  // B's client socket takes its number while A's is still in use, so the server side of B
  // gets the lowest free number: A's.
  UniqueFd cb(new_client());
  sock_force_close(&r_, a);
  EXPECT_EQ(calls_.close[a], 1);
  const int b = accept_next();
  ASSERT_EQ(b, a);
  ca.reset();
  calls_.on_data = [&](struct Reactor*, int fd) {
    std::string in;
    read_available(fd, &in);
    if (!in.empty()) sock_write(fd, in.data(), in.size());  // echo; EOF closes after the echo
  };
  const std::string mine = pattern(3000, 32);
  testing_support::write_all(cb.get(), mine);
  ASSERT_EQ(shutdown(cb.get(), SHUT_WR), 0);
  Sink got;
  ASSERT_TRUE(pump_until(&r_, cb.get(), &got, [&] { return got.ended(); }));
  EXPECT_TRUE(got.eof);
  EXPECT_EQ(got.bytes.size(), mine.size());
  EXPECT_TRUE(got.bytes == mine);
  ASSERT_TRUE(run_until(&r_, [&] { return calls_.close[a] == 2; }));  // A's, then B's
}

TEST_F(ReactorTest, NumberReusedInsideOnCloseKeepsTheNewConnectionIntact) {
  // on_close runs after close(2): a connection accepted there gets the same number, and the
  // rest of the old close must not touch its state (the seed cleared state after the close).
  UniqueFd ca;
  int a = -1;
  const std::string old_bytes = pattern(256 * 1024, 33);
  ASSERT_NO_FATAL_FAILURE(connect_with_blocked_queue(&ca, &a, old_bytes));
  UniqueFd cb(new_client());
  int b = -1;
  calls_.on_close = [&](struct Reactor* r, int fd) {
    if (fd != a || b >= 0) return;
    b = sock_accept(r, listener_.get());
    sock_write(b, "new", 3);  // the first write to an empty queue goes straight to the kernel
    sock_write(b, "!", 1);    // the next one queues
  };
  sock_force_close(&r_, a);
  ASSERT_EQ(b, a);
  EXPECT_GE(sock_status(b), 0);
  EXPECT_EQ(slot_of(b).queued_bytes, 1u);  // its own queue, not emptied by A's close
  Sink got;
  ASSERT_TRUE(pump_until(&r_, cb.get(), &got, [&] { return got.bytes.size() >= 4; }));
  EXPECT_EQ(got.bytes, "new!");
  calls_.on_close = nullptr;
  stop();
  EXPECT_EQ(calls_.close[a], 2);  // A's, then B's at the stop
}

TEST_F(ReactorTest, StaleEventInTheSameBatchNeverReachesTheSocketThatReusedTheFd) {
  listen();
  UniqueFd c1(new_client()), c2(new_client());
  const int s1 = accept_next(), s2 = accept_next();
  ASSERT_GE(s1, 0);
  ASSERT_GE(s2, 0);
  // The replacement's client waits in the backlog; its socket number is below neither s.
  UniqueFd c3(new_client());
  settle(&r_);  // consume the EPOLLOUT edges of the two new registrations

  int first = -1, victim = -1, reused = -1;
  bool in_batch = false;
  int data_on_reused_in_batch = 0;
  std::map<int, std::string> got;
  calls_.on_data = [&](struct Reactor* r, int fd) {
    if (in_batch && fd == victim) ++data_on_reused_in_batch;
    read_available(fd, &got[fd]);
    if (first >= 0) return;
    first = fd;
    victim = fd == s1 ? s2 : s1;
    sock_force_close(r, victim);
    reused = sock_accept(r, listener_.get());  // the lowest free number: the victim's
  };
  testing_support::write_all(c1.get(), "one");
  testing_support::write_all(c2.get(), "two");
  ASSERT_TRUE(wait_readable(s1));
  ASSERT_TRUE(wait_readable(s2));
  in_batch = true;
  EXPECT_EQ(run_once(&r_), 2);  // both connections in one epoll batch
  in_batch = false;
  ASSERT_GE(first, 0);
  ASSERT_EQ(reused, victim);
  EXPECT_EQ(data_on_reused_in_batch, 0);
  EXPECT_EQ(calls_.close[victim], 1);
  EXPECT_EQ(got[first], first == s1 ? "one" : "two");
  EXPECT_EQ(got[victim], "");

  // The new socket works normally afterwards.
  testing_support::write_all(c3.get(), "fresh");
  ASSERT_TRUE(run_until(&r_, [&] { return got[reused] == "fresh"; }));
  EXPECT_EQ(calls_.close[victim], 1);
  stop();
  EXPECT_EQ(calls_.close[victim], 2);  // the old connection's, then the new one's
  EXPECT_EQ(calls_.close[first], 1);
}

// close_slot() marks the generation closed before it clears the owner, so a sock_close(NULL,
// fd) made on another thread in between reads (closed generation, this reactor) and posts a
// close stamped with that generation. A plain fd that takes the number in on_close (a timer
// here) must not answer to it: the close was aimed at the connection, which is gone. The
// window is a few instructions wide, so the test posts the call such a sock_close leaves.
TEST_F(ReactorTest, ACloseAimedAtAClosedConnectionSparesThePlainFdThatReusedItsNumber) {
  UniqueFd c;
  const int s = connect_one(&c);
  ASSERT_GE(s, 0);
  engine::Reactor* r = engine::Reactor::of(&r_, true);
  int timer = -1;
  calls_.on_close = [&](struct Reactor* api, int fd) {
    if (fd != s || timer >= 0) return;
    const uint32_t closed = slot_of(s).generation.load();
    ASSERT_EQ(engine::post(*r, engine::RemoteCall::Kind::kClose, s, closed), 0);
    timer = reactor_make_timer();
    ASSERT_GE(timer, 0);
    if (timer != s) {  // the kernel gives the lowest free number, which s may not be here
      ASSERT_EQ(dup2(timer, s), s);
      close(timer);
      timer = s;
    }
    ASSERT_EQ(reactor_add_timer(api, timer, 60'000), 0);
  };
  sock_force_close(&r_, s);
  ASSERT_EQ(timer, s);
  run_iterations(5);  // the posted close runs in the first
  EXPECT_EQ(calls_.close[s], 1) << "the timer was closed by a call aimed at the connection";
  EXPECT_GE(fcntl(timer, F_GETFD), 0);
  calls_.on_close = nullptr;
  reactor_close(&r_, timer);
  EXPECT_EQ(calls_.close[s], 2);
}

// ---------------------------------------------------------------------------------------
// Edge-triggered progress.

TEST_F(ReactorTest, PartialReadsNeverStallUnderEdgeTriggering) {
  UniqueFd c;
  const int s = connect_one(&c);
  ASSERT_GE(s, 0);
  const std::string input = pattern(1024 * 1024, 41);
  std::string got;
  calls_.on_data = [&](struct Reactor*, int fd) {
    char buf[100];
    const ssize_t n = sock_read(fd, buf, sizeof buf);  // one small read per call, never drained
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
  };
  std::size_t sent = 0;
  ASSERT_TRUE(run_until(&r_, [&] {
    if (sent < input.size()) {
      const ssize_t n =
          send(c.get(), input.data() + sent, input.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) sent += static_cast<std::size_t>(n);
    }
    return got.size() >= input.size();
  }));
  EXPECT_TRUE(got == input);
  EXPECT_GE(calls_.data[s], static_cast<int>(input.size() / 100));
}

// ---------------------------------------------------------------------------------------
// sock_connect.

TEST_F(ReactorTest, ConnectToListeningPortReportsReadyOnceThenDataFlowsBothWays) {
  auto l = listen_loopback();
  ASSERT_EQ(reactor_add(&r_, l.fd), 0);
  std::map<int, std::string> server_got;
  std::string client_got;
  int cfd = -1;
  calls_.on_data = [&](struct Reactor* r, int fd) {
    if (fd == l.fd) {
      while (sock_accept(r, fd) >= 0) {}
      return;
    }
    if (fd == cfd) {
      read_available(fd, &client_got);
      return;
    }
    read_available(fd, &server_got[fd]);
    if (server_got[fd] == "hello world") sock_write(fd, "pong", 4);
  };
  calls_.on_ready = [&](struct Reactor*, int fd) {
    if (fd == cfd) sock_write(fd, " world", 6);
  };
  cfd = sock_connect(&r_, "127.0.0.1", std::to_string(l.port).c_str());
  ASSERT_GE(cfd, 0);
  ASSERT_EQ(sock_write(cfd, "hello", 5), 0);  // queued until connected, sent before on_ready's
  ASSERT_TRUE(run_until(&r_, [&] { return client_got == "pong"; }));
  settle(&r_);
  EXPECT_EQ(calls_.ready[cfd], 1);
  int server_readies = 0;
  for (const auto& [fd, n] : calls_.ready) server_readies += fd == cfd ? 0 : n;
  EXPECT_EQ(server_readies, 0);
}

TEST_F(ReactorTest, GracefulCloseOfAConnectInProgressClosesOnceConnectedWithoutReady) {
  auto l = listen_loopback();  // never accepted: the kernel's backlog completes the connect
  const int cfd = sock_connect(&r_, "127.0.0.1", std::to_string(l.port).c_str());
  ASSERT_GE(cfd, 0);
  sock_close(&r_, cfd);  // nothing queued: closes as soon as the connect is done
  ASSERT_TRUE(run_until(&r_, [&] { return calls_.close[cfd] == 1; }));
  settle(&r_);
  EXPECT_EQ(calls_.close[cfd], 1);
  EXPECT_EQ(calls_.ready[cfd], 0);  // the user closed it: nothing is ready for them
}

TEST_F(ReactorTest, ConnectToClosedPortReportsCloseAndNeverReady) {
  // A port that nothing listens on: bind one, read it back, release it.
  int port = 0;
  {
    UniqueFd probe(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    socklen_t len = sizeof addr;
    getsockname(probe.get(), reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  const int fd = sock_connect(&r_, "127.0.0.1", std::to_string(port).c_str());
  if (fd < 0) {  // refused at once: documented
    EXPECT_EQ(errno, ECONNREFUSED);
  } else {
    ASSERT_TRUE(run_until(&r_, [&] { return calls_.close[fd] == 1; }));
    settle(&r_);
    EXPECT_EQ(calls_.close[fd], 1);
  }
  int readies = 0;
  for (const auto& entry : calls_.ready) readies += entry.second;
  EXPECT_EQ(readies, 0);
}

// ---------------------------------------------------------------------------------------
// Backpressure.

TEST_F(ReactorTest, OnReadyFiresOnceWhenABlockedQueueHasDrained) {
  UniqueFd c;
  const int s = connect_one(&c, kSmallBuffer);
  ASSERT_GE(s, 0);
  settle(&r_);
  std::vector<uint64_t> queued_at_ready;
  calls_.on_ready = [&](struct Reactor*, int fd) {
    if (fd == s) queued_at_ready.push_back(slot_of(fd).queued_bytes);
  };
  const std::string payload = pattern(1024 * 1024, 51);
  ASSERT_EQ(sock_write(s, payload.data(), payload.size()), 0);
  ASSERT_TRUE(run_until_write_blocked(s));
  settle(&r_);
  EXPECT_EQ(calls_.ready[s], 0);  // still blocked: the client reads nothing
  Sink got;
  ASSERT_TRUE(pump_until(&r_, c.get(), &got, [&] {
    return got.bytes.size() == payload.size() && calls_.ready[s] >= 1;
  }));
  settle(&r_);
  EXPECT_EQ(calls_.ready[s], 1);
  ASSERT_EQ(queued_at_ready.size(), 1u);
  EXPECT_EQ(queued_at_ready[0], 0u);
  EXPECT_TRUE(got.bytes == payload);
}

// ---------------------------------------------------------------------------------------
// Stopping.

struct Reactor* g_signal_target = nullptr;
void stop_on_signal(int) { reactor_stop(g_signal_target); }

TEST_F(ReactorTest, StopFromSignalHandlerDrainsQueuesAndClosesEveryFdOnce) {
  struct sigaction action = {};
  struct sigaction previous = {};
  action.sa_handler = stop_on_signal;
  sigemptyset(&action.sa_mask);
  ASSERT_EQ(sigaction(SIGINT, &action, &previous), 0);
  g_signal_target = &r_;

  auto l = listen_loopback();
  ASSERT_EQ(reactor_add(&r_, l.fd), 0);
  UniqueFd c1(connect_client(l.port, kSmallBuffer));
  UniqueFd c2(connect_client(l.port));
  std::vector<int> conns;
  int responder = -1;
  uint64_t queued_at_shutdown = 0;
  const std::string response = pattern(1024 * 1024, 61);
  calls_.on_data = [&](struct Reactor* r, int fd) {
    if (fd == l.fd) {
      int s;
      while ((s = sock_accept(r, fd)) >= 0) {
        set_sndbuf(s, kSmallBuffer);
        conns.push_back(s);
      }
      return;
    }
    std::string in;
    read_available(fd, &in);
    if (in == "GO") {
      responder = fd;
      sock_write(fd, response.data(), response.size());
      raise(SIGINT);
    }
  };
  calls_.on_shutdown = [&](struct Reactor*, int fd) {
    if (fd == responder) queued_at_shutdown = slot_of(fd).queued_bytes;
  };
  testing_support::write_all(c1.get(), "GO");

  Sink got1, got2;
  int rc = 0;
  for (int rounds = 0; rounds < 100000 && (rc = reactor_review(&r_)) >= 0; ++rounds) {
    if (calls_.shutdown.empty()) continue;  // the client reads only once the stop began
    pump(c1.get(), &got1);
    pump(c2.get(), &got2);
  }
  const int err = errno;
  sigaction(SIGINT, &previous, nullptr);
  EXPECT_EQ(rc, -1);
  EXPECT_EQ(err, 0);
  EXPECT_EQ(r_._impl, nullptr);

  ASSERT_EQ(conns.size(), 2u);
  ASSERT_GE(responder, 0);
  EXPECT_GT(queued_at_shutdown, 0u);  // the response was still queued when the stop began
  for (const int fd : {l.fd, conns[0], conns[1]}) {
    EXPECT_EQ(calls_.shutdown[fd], 1) << fd;
    EXPECT_EQ(calls_.close[fd], 1) << fd;
    // on_shutdown comes before on_close.
    std::vector<char> seen;
    for (const auto& [what, which] : calls_.order) {
      if (which == fd) seen.push_back(what);
    }
    EXPECT_EQ(seen, (std::vector<char>{'S', 'C'})) << fd;
  }
  // The queued output reached the client before the close.
  pump(c1.get(), &got1);
  pump(c2.get(), &got2);
  EXPECT_TRUE(got1.eof);
  EXPECT_EQ(got1.bytes.size(), response.size());
  EXPECT_TRUE(got1.bytes == response);
  EXPECT_TRUE(got2.eof);
  EXPECT_EQ(got2.bytes, "");
}

TEST_F(ReactorTest, IdleReactorStopsInOneReview) {
  ASSERT_EQ(reactor_init(&r_), 0);
  reactor_stop(&r_);
  errno = EINVAL;
  EXPECT_EQ(reactor_review(&r_), -1);
  EXPECT_EQ(errno, 0);
  EXPECT_EQ(r_._impl, nullptr);
}

// libreact.h: the review that completes a stop returns -1 with errno 0, which a loop such as
// `while (reactor_review(&r) >= 0 || errno != 0) {}` (a shard thread runs one) takes
// for "stopped". The engine state's teardown ends that review and may set errno on its way: a
// pool destroyed with a packet still out reports the leak on stderr, and a failed write there
// leaves errno set. A loop that read that errno as a failure would review again, and so make a
// new reactor that nothing stops: its thread would never end.
TEST(ReactorStopTest, TheReviewThatCompletesAStopReturnsErrnoZeroWhateverTheTeardownSet) {
  static Packet* held = nullptr;
  struct Reactor r = {};
  // On the reactor's thread, inside its review: the packet comes from the reactor's pool.
  r.on_shutdown = [](struct Reactor*, int) { held = sock_checkout_packet(); };
  const int timer = reactor_make_timer();
  ASSERT_GE(timer, 0);
  ASSERT_EQ(reactor_add(&r, timer), 0);
  reactor_stop(&r);
  // stderr open for reading only: the pool's leak report fails with EBADF.
  const int saved_stderr = dup(STDERR_FILENO);
  const int unwritable = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(saved_stderr, 0);
  ASSERT_GE(unwritable, 0);
  ASSERT_EQ(dup2(unwritable, STDERR_FILENO), STDERR_FILENO);
  int rc = 0;
  for (int i = 0; i < 100 && rc >= 0; ++i) rc = reactor_review(&r);
  const int err = errno;
  dup2(saved_stderr, STDERR_FILENO);
  close(saved_stderr);
  close(unwritable);
  EXPECT_NE(held, nullptr);
  EXPECT_EQ(rc, -1);
  EXPECT_EQ(err, 0) << std::strerror(err);
  EXPECT_EQ(r._impl, nullptr);
  sock_free_packet(held);  // its pool is gone: the chunk stays leaked, as the report said
  held = nullptr;
}

// A peer that never reads cannot hold a stop forever, and the cap does not cut the peers that
// do read: their queues drain completely, and what is left closes when the drain limit
// (libreact.h, reactor_stop: 5 s) has passed since the stop began. The reactor reads a fake
// clock stepped by hand, so the cap is checked to the millisecond on any machine.
TEST_F(ReactorTest, StopClosesAPeerThatNeverReadsAtTheFiveSecondDrainLimit) {
  constexpr int64_t kDrainLimitMs = 5000;
  testing_support::FakeClock clock;
  clock.install(&r_);
  auto l = listen_loopback();
  ASSERT_EQ(reactor_add(&r_, l.fd), 0);
  const std::string response = pattern(1024 * 1024, 62);
  std::vector<int> conns;
  calls_.on_data = [&](struct Reactor* r, int fd) {
    if (fd != l.fd) return;
    int s;
    while ((s = sock_accept(r, fd)) >= 0) {
      set_sndbuf(s, kSmallBuffer);
      conns.push_back(s);
      EXPECT_EQ(sock_write(s, response.data(), response.size()), 0);
    }
  };
  UniqueFd reader(connect_client(l.port, kSmallBuffer));
  UniqueFd idler(connect_client(l.port, kSmallBuffer));
  ASSERT_TRUE(run_until(&r_, [&] { return conns.size() == 2; }));

  reactor_stop(&r_);
  engine::Reactor* r = engine::Reactor::of(&r_, false);
  ASSERT_NE(r, nullptr);
  const int64_t began = clock.now_ms();  // the next iteration begins the stop
  Sink got, idle_got;
  // Until 1 ms before the limit, the reactor keeps running.
  for (;;) {
    ASSERT_GE(r->run_once(0), 0) << "stopped " << clock.now_ms() - began << " ms after it began";
    pump(reader.get(), &got);
    const int64_t left = began + kDrainLimitMs - 1 - clock.now_ms();
    if (left == 0) break;
    clock.advance(std::chrono::milliseconds(std::min<int64_t>(10, left)));
  }
  EXPECT_TRUE(got.eof) << "the reader's queue drained and closed before the limit";
  EXPECT_EQ(got.bytes.size(), response.size());
  EXPECT_TRUE(got.bytes == response);
  EXPECT_GT(slot_of(conns[1]).queued_bytes, 0u) << "the idler still has output queued";

  // At the limit: the rest closes and the stop completes in this iteration.
  clock.advance(std::chrono::milliseconds(1));
  errno = EINVAL;
  EXPECT_EQ(r->run_once(0), -1);
  EXPECT_EQ(errno, 0);
  EXPECT_EQ(r_._impl, nullptr);
  EXPECT_EQ(calls_.close[conns[0]], 1);
  EXPECT_EQ(calls_.close[conns[1]], 1);
  // The idler got a prefix of its response, then the close.
  pollfd p{idler.get(), POLLIN, 0};
  while (!idle_got.ended() && poll(&p, 1, 20000) > 0) pump(idler.get(), &idle_got);
  EXPECT_TRUE(idle_got.ended());
  EXPECT_LT(idle_got.bytes.size(), response.size());
  EXPECT_EQ(testing_support::first_difference(idle_got.bytes, response), idle_got.bytes.size());
}

// An fd that reaches the reactor after its stop began is shut down like the others. Here a
// connection is accepted and a pipe attached in another fd's on_shutdown, after the stop
// listed the attached fds, as a connection handed over through the inbox is opened after the
// stop's first step. Each gets on_shutdown once and on_close after it, the connection's
// farewell reaches its peer, and the stop completes once they are done: the clock never
// moves, so a stop that waited for the drain limit would never complete.
TEST_F(ReactorTest, FdsAttachedWhileTheStopDrainsGetOnShutdownAndDoNotHoldTheStop) {
  testing_support::FakeClock clock;
  clock.install(&r_);
  UniqueFd first_client;
  const int first = connect_one(&first_client);
  ASSERT_GE(first, 0);
  UniqueFd late_client(new_client());
  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK), 0);
  UniqueFd pipe_writer(pipe_fds[1]);
  const int late_plain = pipe_fds[0];  // attached below: the reactor closes it
  int late = -1;
  calls_.on_shutdown = [&](struct Reactor* r, int fd) {
    if (fd == first) {
      late = accept_next();
      EXPECT_GE(late, 0);
      EXPECT_EQ(reactor_add(r, late_plain), 0);
    } else if (fd == late) {
      EXPECT_EQ(sock_write(fd, "bye", 3), 0);
    }
  };

  reactor_stop(&r_);
  engine::Reactor* r = engine::Reactor::of(&r_, false);
  ASSERT_NE(r, nullptr);
  int rc = 0;
  for (int i = 0; i < 1000 && (rc = r->run_once(0)) >= 0; ++i) {}
  const int err = errno;
  ASSERT_EQ(rc, -1) << "the stop waits for the drain limit";
  EXPECT_EQ(err, 0);
  EXPECT_EQ(r_._impl, nullptr);
  for (const int fd : {first, late, late_plain}) {
    std::vector<char> seen;
    for (const auto& [what, which] : calls_.order) {
      if (which == fd) seen.push_back(what);
    }
    EXPECT_EQ(seen, (std::vector<char>{'S', 'C'})) << "fd " << fd;
  }
  Sink got;
  pollfd p{late_client.get(), POLLIN, 0};
  while (!got.ended() && poll(&p, 1, 10000) > 0) pump(late_client.get(), &got);
  EXPECT_TRUE(got.eof);
  EXPECT_EQ(got.bytes, "bye");
}

// ---------------------------------------------------------------------------------------
// Timers.

TEST_F(ReactorTest, TimerFiresRepeatedlyAndResetConsumesExpirations) {
  const int tfd = reactor_make_timer();
  ASSERT_GE(tfd, 0);
  ASSERT_EQ(reactor_add_timer(&r_, tfd, 10), 0);
  int fires = 0;
  int left_after_reset = 0;
  calls_.on_data = [&](struct Reactor*, int fd) {
    if (fd != tfd) return;
    ++fires;
    reactor_reset_timer(fd);
    uint64_t expirations;
    if (read(fd, &expirations, sizeof expirations) != -1 || errno != EAGAIN) ++left_after_reset;
  };
  ASSERT_TRUE(run_until(&r_, [&] { return fires >= 3; }));
  EXPECT_EQ(left_after_reset, 0);
  reactor_close(&r_, tfd);
  EXPECT_EQ(calls_.close[tfd], 1);
}

// ---------------------------------------------------------------------------------------
// maxfd, static initialisation, detach and re-attach.

TEST_F(ReactorTest, MaxfdRefusesHigherFdsWithEbadf) {
  UniqueFd raw(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  UniqueFd fd(fcntl(raw.get(), F_DUPFD_CLOEXEC, 4));  // the lowest free number >= 4
  ASSERT_GE(fd.get(), 4);
  struct Reactor small = {};
  small.maxfd = 4;
  errno = 0;
  EXPECT_EQ(reactor_add(&small, fd.get()), -1);
  EXPECT_EQ(errno, EBADF);
  errno = 0;
  EXPECT_EQ(sock_open(&small, fd.get()), -1);
  EXPECT_EQ(errno, EBADF);
  // The bound is exclusive: maxfd = fd refuses fd, maxfd = fd + 1 admits it.
  struct Reactor edge = {};
  edge.maxfd = fd.get();
  EXPECT_EQ(reactor_add(&edge, fd.get()), -1);
  EXPECT_EQ(errno, EBADF);
  edge.maxfd = fd.get() + 1;
  EXPECT_EQ(reactor_add(&edge, fd.get()), 0);
  EXPECT_EQ(reactor_remove(&edge, fd.get()), 0);
  for (struct Reactor* r : {&small, &edge}) {
    reactor_stop(r);
    ASSERT_TRUE(run_until(r, [&] { return r->_impl == nullptr; }));
  }
}

int g_static_listener = -1;

void static_on_data(struct Reactor* r, int fd) {
  if (fd == g_static_listener) {
    while (sock_accept(r, fd) >= 0) {}
    return;
  }
  std::string in;
  read_available(fd, &in);
  if (!in.empty()) sock_write(fd, in.data(), in.size());
}

TEST_F(ReactorTest, StaticallyInitialisedReactorNeedsNoReactorInit) {
  // The seed's C idiom, verbatim; libreact.h gives the omitted members C++ zero defaults, so
  // it compiles cleanly under -Wextra -Werror too.
  static struct Reactor r = {.on_data = static_on_data, .maxfd = 1024};
  auto l = listen_loopback();
  g_static_listener = l.fd;
  ASSERT_EQ(reactor_add(&r, l.fd), 0);  // first use: creates the engine state
  EXPECT_NE(r._impl, nullptr);
  UniqueFd c(connect_client(l.port));
  testing_support::write_all(c.get(), "static");
  Sink got;
  ASSERT_TRUE(pump_until(&r, c.get(), &got, [&] { return got.bytes.size() >= 6; }));
  EXPECT_EQ(got.bytes, "static");
  reactor_stop(&r);
  ASSERT_TRUE(run_until(&r, [&] { return r._impl == nullptr; }));
}

TEST_F(ReactorTest, RemoveDetachesWithoutClosingAndAttachRestoresCallbacks) {
  UniqueFd c;
  const int s = connect_one(&c);
  ASSERT_GE(s, 0);
  std::string got;
  calls_.on_data = [&](struct Reactor*, int fd) { read_available(fd, &got); };
  settle(&r_);
  ASSERT_EQ(reactor_remove(&r_, s), 0);
  errno = 0;
  EXPECT_EQ(reactor_remove(&r_, s), -1);  // no longer attached
  EXPECT_EQ(errno, EBADF);

  testing_support::write_all(c.get(), "while detached");
  ASSERT_TRUE(wait_readable(s));
  settle(&r_);  // an attached fd would have had its on_data here
  EXPECT_EQ(calls_.data[s], 0);
  EXPECT_EQ(calls_.close[s], 0);
  EXPECT_GE(sock_status(s), 0);  // still open, sock_ state kept

  ASSERT_EQ(sock_attach(&r_, s), 0);
  ASSERT_TRUE(run_until(&r_, [&] { return got == "while detached"; }));
  EXPECT_GE(calls_.data[s], 1);
  stop();
  EXPECT_EQ(calls_.close[s], 1);
}

// A connection attached to another reactor leaves the first one's count (connections in
// sock_stats, which the shards' load figures and the stop's wait read) and joins the other's.
TEST_F(ReactorTest, AConnectionMovedToAnotherReactorCountsOnlyThere) {
  UniqueFd c;
  const int s = connect_one(&c);
  ASSERT_GE(s, 0);
  settle(&r_);
  const auto connections = [](struct Reactor* r) { return testing_support::stats_of(r).connections; };
  const uint64_t before = connections(&r_);
  ASSERT_GE(before, 1u);
  struct Reactor other = {};
  ASSERT_EQ(sock_attach(&other, s), 0);
  EXPECT_EQ(connections(&r_), before - 1);
  EXPECT_EQ(connections(&other), 1u);
  reactor_stop(&other);
  ASSERT_TRUE(run_until(&other, [&] { return other._impl == nullptr; }));
  EXPECT_EQ(calls_.close[s], 0) << "other's on_close is its own (none), not r_'s";
  EXPECT_EQ(connections(&r_), before - 1);
}

}  // namespace
