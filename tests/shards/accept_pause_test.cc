// shards/accept_pause: at the fd limit a listener is paused, not retried in a loop. This is
// the in-process, count-based half of tests/tools/emfile_test (which measures a real server's
// CPU): it counts the reactor's loop iterations and the listener's wakeups while accept4 fails
// with EMFILE, which a spin would run up by the thousand, whatever the machine's speed. Then
// what the pause owns: a listener that cannot be watched again, and one paused at a stop, on
// a reactor of the test's own and on a sharded server (a shard's listener, the acceptor's).
#include "shards/accept_pause.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "engine/fd_table.h"
#include "engine/libreact.h"
#include "engine/libsock.h"
#include "shards/server.h"
#include "tests/testing/fault_injection.h"
#include "tests/testing/loopback.h"
#include "tests/testing/wait_for.h"

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kWaiting = 5;  // connections in the backlog while fds are out
constexpr auto kWindow = std::chrono::milliseconds(1000);

struct Server {
  int listener = -1;
  shards::AcceptPause pause;
  int resumes = 0;  // the pause timer fired
  int listener_wakeups = 0;
  int exhausted = 0;  // accept4 failures for lack of fds
  std::vector<int> accepted;
};
Server* g_server = nullptr;

void on_data(struct Reactor* r, int fd) {
  Server& s = *g_server;
  if (s.pause.owns(fd)) {
    ++s.resumes;
    s.pause.resume(r);
    return;
  }
  if (fd != s.listener) return;
  ++s.listener_wakeups;
  int c;
  while ((c = sock_accept(r, fd)) >= 0) s.accepted.push_back(c);
  if (shards::is_exhaustion(errno)) {
    ++s.exhausted;
    s.pause.pause(r, fd, errno);
  }
}

// Points g_server at `server`, then makes `r` (this file's on_data) watch a new loopback
// listener with the server's pause. Returns the listener's port.
int serve(Server* server, struct Reactor* r) {
  g_server = server;
  r->on_data = on_data;
  const testing_support::Listener l = testing_support::listen_loopback();
  server->listener = l.fd;
  EXPECT_EQ(reactor_add(r, l.fd), 0);
  EXPECT_TRUE(server->pause.init(r));
  return l.port;
}

// Lowers the soft RLIMIT_NOFILE to the lowest free fd number (every number below it is in
// use, so the next accept4 fails with EMFILE) for as long as it lives.
class NoFreeFds {
 public:
  NoFreeFds() {
    getrlimit(RLIMIT_NOFILE, &saved_);
    const int lowest_free = dup(STDIN_FILENO);
    close(lowest_free);
    rlimit lowered = saved_;
    lowered.rlim_cur = static_cast<rlim_t>(lowest_free);
    ok_ = lowest_free > 0 && setrlimit(RLIMIT_NOFILE, &lowered) == 0;
  }
  ~NoFreeFds() { setrlimit(RLIMIT_NOFILE, &saved_); }
  bool ok() const { return ok_; }

 private:
  rlimit saved_{};
  bool ok_ = false;
};

TEST(AcceptPauseTest, AtTheFdLimitTheListenerWakesOncePerPauseThenAcceptsWhenFdsFree) {
  Server server;
  struct Reactor r = {};
  const int port = serve(&server, &r);
  ASSERT_FALSE(HasFailure());
  std::vector<int> clients;
  for (int i = 0; i < kWaiting; ++i) {
    clients.push_back(testing_support::connect_client(port));
    ASSERT_GE(clients.back(), 0);
  }

  int iterations = 0;
  {
    NoFreeFds limit;
    ASSERT_TRUE(limit.ok());
    const auto start = Clock::now();
    while (Clock::now() - start < kWindow) {
      ASSERT_GE(reactor_review(&r), 0);
      ++iterations;
    }
  }
  EXPECT_TRUE(server.accepted.empty());
  EXPECT_GT(server.exhausted, 0);
  // Each wakeup after the first needs the pause timer to fire; each pause costs the loop two
  // iterations (the timer, then the listener's new edge). A retry loop would count thousands.
  const int pauses = static_cast<int>(kWindow.count() / shards::AcceptPause::kPauseMs) + 1;
  EXPECT_LE(server.listener_wakeups, pauses) << iterations << " loop iterations";
  EXPECT_LE(iterations, 2 * pauses + 2) << server.listener_wakeups << " listener wakeups";

  // Fds are back: the next resume takes the whole backlog.
  const auto end = Clock::now() + std::chrono::seconds(20);
  while (server.accepted.size() < kWaiting && Clock::now() < end) {
    ASSERT_GE(reactor_review(&r), 0);
  }
  EXPECT_EQ(server.accepted.size(), static_cast<std::size_t>(kWaiting));

  reactor_stop(&r);
  while (reactor_review(&r) >= 0) {}
  for (const int c : clients) close(c);
  g_server = nullptr;
}

// Watching the listener again can fail as accepting did (no memory for its epoll entry). The
// listener then rests for another pause instead of being dropped: once the kernel has memory
// again, the connection waiting in the backlog is accepted.
TEST(AcceptPauseTest, AListenerThatCannotBeWatchedAgainRestsAgainAndIsNotLost) {
  namespace faults = testing_support::faults;
  Server server;
  struct Reactor r = {};
  const int port = serve(&server, &r);
  ASSERT_FALSE(HasFailure());
  faults::watch(server.listener);
  server.pause.pause(&r, server.listener, EMFILE);
  faults::Plan plan;
  plan.rate[static_cast<std::size_t>(faults::Call::kEpollCtl)] = 1.0;  // every ADD fails
  faults::arm(plan);
  const auto end = Clock::now() + std::chrono::seconds(20);
  while (server.resumes < 2 && Clock::now() < end) ASSERT_GE(reactor_review(&r), 0);
  faults::disarm();
  EXPECT_EQ(server.resumes, 2) << "the first refused resume lost the listener";

  const int client = testing_support::connect_client(port);
  ASSERT_GE(client, 0);
  while (server.accepted.empty() && Clock::now() < end) ASSERT_GE(reactor_review(&r), 0);
  EXPECT_EQ(server.accepted.size(), 1u);

  reactor_stop(&r);
  while (reactor_review(&r) >= 0) {}
  close(client);
  g_server = nullptr;
}

// A paused listener is detached, so the reactor's stop, which closes the attached fds, leaves
// it open: the pause closes it when destroyed. Left open, it would keep its port bound and
// its backlog filling with connections nobody accepts.
TEST(AcceptPauseTest, AListenerPausedWhenItsReactorStopsIsClosedWithThePause) {
  const testing_support::Listener l = testing_support::listen_loopback();
  {
    shards::AcceptPause pause;
    struct Reactor r = {};
    ASSERT_EQ(reactor_add(&r, l.fd), 0);
    ASSERT_TRUE(pause.init(&r));
    pause.pause(&r, l.fd, EMFILE);
    reactor_stop(&r);
    while (reactor_review(&r) >= 0) {}
    EXPECT_NE(fcntl(l.fd, F_GETFD), -1) << "the stop closed a detached fd";
  }
  errno = 0;
  EXPECT_EQ(fcntl(l.fd, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);
}

// The reactor's stop closes the pause timer; told so (closed(), from on_close, as a shard
// does), the pause closes a paused listener at once, so the port is free when the stop
// completes, and it forgets the timer's number, which a later connection may get. It says
// that it closed the listener, whose number its holder must forget too (no on_close comes for
// it); of an attached listener it says nothing: that one's own on_close comes.
TEST(AcceptPauseTest, WhenItsTimerClosesAPausedListenerIsClosedToo) {
  using Closed = shards::AcceptPause::Closed;
  static shards::AcceptPause* pause_of_test = nullptr;
  static std::vector<Closed> results;
  results.clear();
  const testing_support::Listener l = testing_support::listen_loopback();
  shards::AcceptPause pause;
  pause_of_test = &pause;
  struct Reactor r = {};
  r.on_close = [](struct Reactor*, int fd) { results.push_back(pause_of_test->closed(fd)); };
  ASSERT_EQ(reactor_add(&r, l.fd), 0);
  ASSERT_TRUE(pause.init(&r));
  pause.pause(&r, l.fd, EMFILE);
  reactor_stop(&r);
  while (reactor_review(&r) >= 0) {}
  EXPECT_EQ(results, std::vector<Closed>{Closed::kTimerAndListener});
  errno = 0;
  EXPECT_EQ(fcntl(l.fd, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);

  const int reused = dup(STDIN_FILENO);  // the lowest free number: the listener's or the timer's
  EXPECT_FALSE(pause.owns(reused));
  close(reused);

  // Not paused: the listener is the reactor's to close, and the timer's close says so.
  results.clear();
  const testing_support::Listener attached = testing_support::listen_loopback();
  shards::AcceptPause second;
  pause_of_test = &second;
  struct Reactor r2 = {};
  r2.on_close = r.on_close;
  ASSERT_EQ(reactor_add(&r2, attached.fd), 0);
  ASSERT_TRUE(second.init(&r2));
  reactor_stop(&r2);
  while (reactor_review(&r2) >= 0) {}
  EXPECT_EQ(std::count(results.begin(), results.end(), Closed::kTimer), 1);
  EXPECT_EQ(std::count(results.begin(), results.end(), Closed::kTimerAndListener), 0);
  pause_of_test = nullptr;
}

// --- A sharded server stopped while its listener is paused ---

// The listener is detached from its reactor: AcceptPause holds it.
bool paused(int listener) {
  return engine::load_owner(*engine::fd_slot(listener)) == nullptr;
}

// connect(2) of an existing socket (fds may be out) to 127.0.0.1:port; its result.
int connect_to(int fd, int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
}

// What the server's callbacks saw; one test at a time.
struct StopSeen {
  std::string connect_port;  // on_shutdown connects here, once
  std::atomic<int> opened{0};
  std::atomic<bool> shut_down{false};
  int connected = -1;  // the fd of on_shutdown's sock_connect
  int connected_shutdowns = 0;
  int connected_closes = 0;
};
StopSeen* g_seen = nullptr;

// A one-shard server (the shard accepts on its own listener) whose listener is paused at the
// fd limit when it stops. The stop closes the pause timer, and the pause closes the listener
// with it; the number is free then, and the user's on_shutdown gets it for a connection of its
// own. That connection is the user's, as any other: it gets its on_shutdown and its on_close
// (the shard once took it for its listener and kept both callbacks from the user).
TEST(AcceptPauseTest, AShardsListenerPausedAtTheStopLeavesItsNumberToTheUsersConnections) {
  const testing_support::Listener target = testing_support::listen_loopback();
  StopSeen seen;
  seen.connect_port = std::to_string(target.port);
  g_seen = &seen;
  SockServer* server = sock_server_start(
      .port = "0", .threads = 1,
      .on_shutdown =
          [](struct Reactor* r, int fd) {
            if (fd == g_seen->connected) {
              ++g_seen->connected_shutdowns;
            } else if (g_seen->connected < 0) {
              g_seen->connected = sock_connect(r, "127.0.0.1", g_seen->connect_port.c_str());
            }
          },
      .on_close =
          [](struct Reactor*, int fd) {
            if (fd == g_seen->connected) ++g_seen->connected_closes;
          },
      .on_open = [](struct Reactor*, int) { ++g_seen->opened; });
  ASSERT_NE(server, nullptr);
  const int port = sock_server_port(server);
  const int listener = testing_support::listening_fd(port);
  const int client = testing_support::connect_client(port);
  const int waiting = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  EXPECT_GE(listener, 0);
  EXPECT_GE(client, 0);
  EXPECT_GE(waiting, 0);
  EXPECT_TRUE(testing_support::wait_for([&] { return seen.opened.load() == 1; }));
  {
    NoFreeFds limit;  // until the stop is over: the pause must last
    EXPECT_TRUE(limit.ok());
    if (listener >= 0 && waiting >= 0 && limit.ok()) {
      connect_to(waiting, port);
      EXPECT_TRUE(testing_support::wait_for([&] { return paused(listener); }));
    }
    sock_server_stop(server);
  }
  EXPECT_EQ(seen.connected, listener) << "on_shutdown's connection did not get the number";
  EXPECT_EQ(seen.connected_shutdowns, 1);
  EXPECT_EQ(seen.connected_closes, 1);
  close(waiting);
  close(client);
  close(target.fd);
  g_seen = nullptr;
}

// With the acceptor thread, a listener paused at the fd limit when the server stops is closed
// with the acceptor's pause timer, before the shards' stops begin: connects are refused while
// the shards drain, rather than completed by the kernel into a backlog nobody accepts (and the
// port stays bound until the server is freed, after the drain).
TEST(AcceptPauseTest, TheAcceptorsListenerPausedAtTheStopIsClosedBeforeTheShardsDrain) {
  StopSeen seen;
  g_seen = &seen;
  SockServer* server = sock_server_start(
      .port = "0", .threads = 2, .accept_mode = SOCK_ACCEPT_THREAD,
      .on_shutdown = [](struct Reactor*, int) { g_seen->shut_down = true; },
      .on_open =
          [](struct Reactor*, int fd) {
            // More than the kernel buffers hold while the client reads nothing: the stop's
            // drain lasts until the test resets the connection.
            testing_support::set_sndbuf(fd, 4096);
            static const std::string kChunk(64 * 1024, 'x');
            for (int i = 0; i < 16; ++i) sock_write(fd, kChunk.data(), kChunk.size());
            ++g_seen->opened;
          },
      .stop_timeout_ms = 60000);
  ASSERT_NE(server, nullptr);
  const int port = sock_server_port(server);
  const int listener = testing_support::listening_fd(port);
  const int draining = testing_support::connect_client(port, 4096);
  const int waiting = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  EXPECT_GE(listener, 0);
  EXPECT_GE(draining, 0);
  EXPECT_GE(waiting, 0);
  EXPECT_TRUE(testing_support::wait_for([&] { return seen.opened.load() == 1; }));
  // Started while fds are free: UBSan checks a new thread's first virtual call through a pipe.
  std::latch stop(1);
  std::thread stopper([server, &stop] {
    stop.wait();
    sock_server_stop(server);
  });
  {
    NoFreeFds limit;  // until the acceptor has stopped: its pause must last
    EXPECT_TRUE(limit.ok());
    if (listener >= 0 && waiting >= 0 && limit.ok()) {
      connect_to(waiting, port);
      EXPECT_TRUE(testing_support::wait_for([&] { return paused(listener); }));
    }
    stop.count_down();
    // The shards' stops begin once the acceptor's thread has been joined (server.cc).
    EXPECT_TRUE(testing_support::wait_for([&] { return seen.shut_down.load(); }));
  }
  const int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  EXPECT_GE(probe, 0);
  errno = 0;
  EXPECT_EQ(connect_to(probe, port), -1) << "the paused listener still listens";
  EXPECT_EQ(errno, ECONNREFUSED);
  testing_support::reset_on_close(draining);
  close(draining);  // ends the drain
  stopper.join();
  close(probe);
  close(waiting);
  g_seen = nullptr;
}

// --- The fd limit's rest and the connection limit's hold at once ---

// Each reason keeps the listener detached until it is over: the rest's timer leaves a held
// listener alone, and the hold's release leaves a resting one alone; the listener is watched
// again only once both are over, whichever ends last.
TEST(AcceptPauseTest, TheRestsTimerLeavesAListenerHeldAtTheLimitDetached) {
  Server server;
  struct Reactor r = {};
  serve(&server, &r);
  ASSERT_FALSE(HasFailure());
  server.pause.pause(&r, server.listener, EMFILE);
  server.pause.hold(&r, server.listener);
  EXPECT_TRUE(server.pause.held());
  const auto end = Clock::now() + std::chrono::seconds(20);
  while (server.resumes < 1 && Clock::now() < end) ASSERT_GE(reactor_review(&r), 0);
  ASSERT_EQ(server.resumes, 1);
  EXPECT_TRUE(paused(server.listener)) << "the rest's end watched a held listener";
  server.pause.release(&r);
  EXPECT_FALSE(server.pause.held());
  EXPECT_FALSE(paused(server.listener));

  reactor_stop(&r);
  while (reactor_review(&r) >= 0) {}
  g_server = nullptr;
}

TEST(AcceptPauseTest, AReleaseLeavesARestingListenerToItsTimer) {
  Server server;
  struct Reactor r = {};
  const int port = serve(&server, &r);
  ASSERT_FALSE(HasFailure());
  server.pause.hold(&r, server.listener);
  server.pause.pause(&r, server.listener, EMFILE);  // as when fds ran out before the hold
  server.pause.release(&r);
  EXPECT_TRUE(paused(server.listener)) << "the release ended the rest early";
  const int client = testing_support::connect_client(port);
  ASSERT_GE(client, 0);
  const auto end = Clock::now() + std::chrono::seconds(20);
  while (server.accepted.empty() && Clock::now() < end) ASSERT_GE(reactor_review(&r), 0);
  EXPECT_EQ(server.resumes, 1);
  EXPECT_EQ(server.accepted.size(), 1u);

  reactor_stop(&r);
  while (reactor_review(&r) >= 0) {}
  close(client);
  g_server = nullptr;
}

}  // namespace
