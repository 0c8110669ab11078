// shards/accept_pause: at the fd limit a listener is paused, not retried in a loop. This is
// the in-process, count-based half of tests/tools/emfile_test (which measures a real server's
// CPU): it counts the reactor's loop iterations and the listener's wakeups while accept4 fails
// with EMFILE, which a spin would run up by the thousand, whatever the machine's speed. Then
// what the pause owns: a listener that cannot be watched again, and one paused at a stop.
#include "shards/accept_pause.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <vector>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "tests/testing/fault_injection.h"
#include "tests/testing/loopback.h"

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
// completes, and it forgets the timer's number, which a later connection may get.
TEST(AcceptPauseTest, WhenItsTimerClosesAPausedListenerIsClosedToo) {
  static shards::AcceptPause* pause_of_test = nullptr;
  const testing_support::Listener l = testing_support::listen_loopback();
  shards::AcceptPause pause;
  pause_of_test = &pause;
  struct Reactor r = {};
  r.on_close = [](struct Reactor*, int fd) { pause_of_test->closed(fd); };
  ASSERT_EQ(reactor_add(&r, l.fd), 0);
  ASSERT_TRUE(pause.init(&r));
  pause.pause(&r, l.fd, EMFILE);
  reactor_stop(&r);
  while (reactor_review(&r) >= 0) {}
  errno = 0;
  EXPECT_EQ(fcntl(l.fd, F_GETFD), -1);
  EXPECT_EQ(errno, EBADF);
  const int reused = dup(STDIN_FILENO);  // the lowest free number: the listener's or the timer's
  EXPECT_FALSE(pause.owns(reused));
  close(reused);
  pause_of_test = nullptr;
}

}  // namespace
