// engine/accept: what accepting a connection costs and keeps. TCP_NODELAY reaches every
// accepted socket, from the listener once a reactor watches it, by a call of its own otherwise,
// and a new listener behind a reused number is asked afresh; a blocking listener is made
// non-blocking, so that accepting until EAGAIN never waits; a batch handed to a reactor on
// another thread travels in one post and opens there, each fd counted as taken there whether
// it opens or not (placement's in-flight count); and a close that leaves the epoll set
// to close(2) (no EPOLL_CTL_DEL) lets no stale event reach the next connection on the number.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "engine/accept.h"
#include "engine/fd_table.h"
#include "engine/inbox.h"
#include "engine/libreact.h"
#include "engine/libsock.h"
#include "engine/remote.h"
#include "engine/reactor.h"
#include "engine/routing.h"
#include "tests/testing/block_watchdog.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/loopback.h"
#include "tests/testing/reactor_fixture.h"
#include "tests/testing/run_until.h"
#include "tests/testing/wait_for.h"

namespace {

using testing_support::connect_client;
using testing_support::Listener;
using testing_support::listen_loopback;
using testing_support::wait_for;

int no_delay(int fd) {
  int value = -1;
  socklen_t length = sizeof value;
  if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &value, &length) < 0) return -1;
  return value;
}

// A loopback listener made without the library, so without TCP_NODELAY (sock_listen sets it),
// and blocking if asked (sock_listen's are not).
Listener plain_listener(bool blocking = false) {
  Listener l;
  l.fd = socket(AF_INET, SOCK_STREAM | (blocking ? 0 : SOCK_NONBLOCK) | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof addr;
  EXPECT_EQ(bind(l.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(listen(l.fd, SOMAXCONN), 0);
  getsockname(l.fd, reinterpret_cast<sockaddr*>(&addr), &length);
  l.port = ntohs(addr.sin_port);
  EXPECT_EQ(no_delay(l.fd), 0);
  return l;
}

// Moves a fresh listener without TCP_NODELAY onto `number`, closing what was there behind the
// library's back, as a program that closes a listener and opens another may do. Returns the
// new listener's port.
int replace_listener(int number, bool blocking = false) {
  const Listener fresh = plain_listener(blocking);
  EXPECT_EQ(dup2(fresh.fd, number), number);
  close(fresh.fd);
  return fresh.port;
}

class AcceptTest : public testing_support::ServerFixture {
 protected:
  void on_connection_data(int fd) override {
    char buf[256];
    ssize_t n;
    while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
      received_[static_cast<std::size_t>(fd)].append(buf, static_cast<std::size_t>(n));
    }
  }
  std::array<std::string, 1024> received_;
};

TEST_F(AcceptTest, AcceptedSocketsInheritNoDelayFromTheWatchedListener) {
  int a = -1, b = -1;
  const int ca = connect_and_accept(&a);
  const int cb = connect_and_accept(&b);
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  EXPECT_EQ(no_delay(a), 1);
  EXPECT_EQ(no_delay(b), 1);
  EXPECT_EQ(no_delay(listener_.fd), 1) << "set once on the listener, for all to inherit";
  close(ca);
  close(cb);
}

// Connections queued before the listener had the option were cloned without it: each of a
// burst accepted in one go gets it all the same.
TEST_F(AcceptTest, EveryConnectionOfABurstQueuedBeforeTheFirstAcceptHasNoDelay) {
  constexpr int kBurst = 5;
  listener_.port = replace_listener(listener_.fd);
  ASSERT_EQ(reactor_add(&r_, listener_.fd), 0);
  std::vector<int> clients;
  for (int i = 0; i < kBurst; ++i) clients.push_back(connect_client(listener_.port));
  ASSERT_TRUE(testing_support::run_until(&r_, [&] { return accepted_.size() == kBurst; }));
  for (const int fd : accepted_) EXPECT_EQ(no_delay(fd), 1) << "accepted fd " << fd;
  EXPECT_EQ(no_delay(listener_.fd), 1);
  for (const int c : clients) close(c);
}

TEST_F(AcceptTest, ANewListenerBehindAReusedNumberIsAskedAgain) {
  int a = -1;
  close(connect_and_accept(&a));  // the listener is marked: later accepts skip the setsockopt
  ASSERT_GE(a, 0);
  listener_.port = replace_listener(listener_.fd);
  ASSERT_EQ(reactor_add(&r_, listener_.fd), 0) << "the program watches its new listener";
  int b = -1;
  const int cb = connect_and_accept(&b);
  ASSERT_GE(b, 0);
  EXPECT_EQ(no_delay(b), 1);
  EXPECT_EQ(no_delay(listener_.fd), 1);
  close(cb);
}

// The fixture accepts until sock_accept says EAGAIN: on a blocking listener that last accept4
// would wait for the next client, holding the reactor's thread.
TEST_F(AcceptTest, ABlockingListenerIsMadeNonBlockingSoTheLastAcceptReturns) {
  listener_.port = replace_listener(listener_.fd, true);
  ASSERT_EQ(reactor_add(&r_, listener_.fd), 0);
  const int client = connect_client(listener_.port);
  {
    const testing_support::BlockWatchdog watchdog(
        listener_.fd, testing_support::BlockWatchdog::Unblock::kEndListener);
    ASSERT_TRUE(testing_support::run_until(&r_, [&] { return accepted_.size() == 1; }));
    EXPECT_FALSE(watchdog.fired());
  }
  EXPECT_NE(fcntl(listener_.fd, F_GETFL) & O_NONBLOCK, 0);
  errno = 0;
  EXPECT_EQ(sock_accept(&r_, listener_.fd), -1);
  EXPECT_EQ(errno, EAGAIN);
  close(client);
}

TEST(AcceptUnwatchedTest, AListenerNoReactorWatchesGivesEachConnectionNoDelay) {
  const Listener listener = listen_loopback();
  int port = listener.port;
  for (int round = 0; round < 2; ++round) {
    const int client = connect_client(port);
    int server = -1;
    ASSERT_TRUE(wait_for([&] { return (server = sock_accept(nullptr, listener.fd)) >= 0; }));
    EXPECT_EQ(no_delay(server), 1) << "round " << round;
    sock_force_close(nullptr, server);
    close(client);
    port = replace_listener(listener.fd);  // nothing tells the library: it must not assume
  }
  close(listener.fd);
}

// The stale registration a close without EPOLL_CTL_DEL leaves while a copy of the fd lives on
// reports the old connection's input with the old generation: it must reach nobody, not the
// new connection that got the number.
TEST_F(AcceptTest, AClosedConnectionsLingeringRegistrationReachesNotTheNextOnItsNumber) {
  int a = -1;
  const int ca = connect_and_accept(&a);
  ASSERT_GE(a, 0);
  const int copy = dup(a);  // keeps the file, and so its epoll registration, alive
  ASSERT_GE(copy, 0);
  const int cb = connect_client(listener_.port);  // its socket must not take a's number
  sock_force_close(&r_, a);
  ASSERT_TRUE(testing_support::run_until(&r_, [&] { return accepted_.size() == 2; }));
  const int b = accepted_.back();
  ASSERT_EQ(b, a) << "the kernel gives the lowest free number";
  testing_support::write_all(ca, "stale");
  run_iterations(5);
  EXPECT_EQ(received_[static_cast<std::size_t>(b)], "");
  testing_support::write_all(cb, "fresh");
  ASSERT_TRUE(testing_support::run_until(
      &r_, [&] { return received_[static_cast<std::size_t>(b)].size() >= 5; }));
  EXPECT_EQ(received_[static_cast<std::size_t>(b)], "fresh");
  close(copy);
  close(ca);
  close(cb);
}

// Connections opened with their first input waiting, as a deferred-accept listener's are
// (TCP_DEFER_ACCEPT; open_accepted's input_waiting): their first on_data runs inside the
// accept, and the epoll set hears of them only if they outlive it. One that reads its request
// to the EOF behind it and writes nothing is due to close at the flush step, so it is never
// added to the set. Here the listener's on_data then writes it a response larger than the
// kernel takes, as any other fd's callback (or a posted write) may before the flush step.
class FirstInputTest : public testing_support::ServerFixture {
 protected:
  static constexpr int kSmallBuffer = 4096;
  static constexpr char kRequest[] = "GET / HTTP/1.0\r\n\r\n";

  void on_data(struct Reactor* r, int fd) override {
    if (fd != listener_.fd) {
      // Reads to the EOF and writes nothing. In pieces the size of the request: a read that
      // fills its buffer leaves the socket to be asked again, and the next read finds the EOF
      // (one cut short counts as having drained the socket: the EOF would wait for an edge).
      char buf[sizeof kRequest - 1];
      while (sock_read(fd, buf, sizeof buf) > 0) {}
      return;
    }
    int c;
    while ((c = engine::accept_connection(fd)) >= 0) {
      testing_support::set_sndbuf(c, kSmallBuffer);
      accepted_.push_back(c);
      EXPECT_EQ(engine::open_accepted(r, &c, 1, true), 1u);
      ASSERT_GE(sock_status(c), 0) << "still open, due to close at the flush step";
      EXPECT_EQ(sock_write(c, response_.data(), response_.size()), 0);
    }
  }
  void on_close(struct Reactor* r, int fd) override {
    ServerFixture::on_close(r, fd);
    reasons_.push_back(sock_close_reason());
  }

  // A client whose request and its end wait for the accept. Its receive buffer is small, so
  // the response cannot all be in flight in the kernel.
  int connect_with_request() {
    const int client = connect_client(listener_.port, kSmallBuffer);
    testing_support::write_all(client, kRequest);
    EXPECT_EQ(shutdown(client, SHUT_WR), 0);
    return client;
  }

  const std::string response_ = testing_support::pattern(1024 * 1024, 7);
  std::vector<SockCloseReason> reasons_;
  testing_support::FakeClock clock_;  // outlives the reactor (the fixture's TearDown stops it)
};

TEST_F(FirstInputTest, AResponseWrittenAfterTheFirstInputEndedArrivesWholeThenTheClose) {
  const int client = connect_with_request();
  std::string got;
  const bool closed = testing_support::run_until(
      &r_, [&] { return !testing_support::drain(client, &got); }, std::chrono::seconds(10));
  EXPECT_TRUE(closed) << got.size() << " of " << response_.size() << " bytes, then nothing";
  EXPECT_TRUE(got == response_);
  ASSERT_EQ(accepted_.size(), 1u);
  EXPECT_EQ(closed_, std::vector<int>{accepted_[0]});
  EXPECT_EQ(reasons_, std::vector<SockCloseReason>{SOCK_CLOSE_PEER});
  close(client);
}

TEST_F(FirstInputTest, TheIdleTimeoutStillBoundsItWhenThePeerStopsReading) {
  clock_.install(&r_);
  ReactorLimits limits{};
  limits.idle_timeout_ms = 1000;
  ASSERT_EQ(reactor_set_limits(&r_, &limits), 0);
  const int client = connect_with_request();  // and never reads
  ASSERT_TRUE(testing_support::run_until(&r_, [&] {
    return accepted_.size() == 1 &&
           (engine::fd_slot(accepted_[0])->flags & engine::kWriteBlocked) != 0;
  }));
  clock_.advance(std::chrono::seconds(2));
  EXPECT_TRUE(testing_support::run_until(&r_, [&] { return !closed_.empty(); },
                                         std::chrono::seconds(5)));
  EXPECT_EQ(closed_, std::vector<int>{accepted_[0]});
  EXPECT_EQ(reasons_, std::vector<SockCloseReason>{SOCK_CLOSE_TIMEOUT});
  close(client);
}

// A reactor driven by its own thread R, which echoes what its connections send; its on_open
// hook counts the fds opened on R's behalf and notes any that ran on another thread.
std::atomic<int> g_opened{0};
std::atomic<bool> g_opened_elsewhere{false};
std::thread::id g_r_thread;

void count_open(struct Reactor*, int) {
  if (std::this_thread::get_id() != g_r_thread) g_opened_elsewhere = true;
  ++g_opened;
}

void echo(struct Reactor*, int fd) {
  char buf[256];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) sock_write(fd, buf, static_cast<std::size_t>(n));
}

// R: started by the constructor (owner() is set once R runs), stopped and joined by the
// destructor, however the test ends (an ASSERT returns early). The stop closes every fd
// attached to R.
class ReactorThread {
 public:
  ReactorThread() {
    g_opened = 0;
    g_opened_elsewhere = false;
    api_.on_data = echo;
    thread_ = std::thread([this] {
      g_r_thread = std::this_thread::get_id();
      engine::Reactor* r = engine::Reactor::of(&api_, true);
      r->set_on_open(count_open);
      bool made = false;
      r->inbox(&made);  // made before R sleeps, so the test may read its counters from the start
      owner_ = r;
      while (r->run_once(-1) >= 0) {}  // -1 with errno 0: stopped (and r deleted)
    });
  }
  ~ReactorThread() {
    reactor_stop(&api_);
    thread_.join();
  }
  ReactorThread(const ReactorThread&) = delete;
  ReactorThread& operator=(const ReactorThread&) = delete;

  struct Reactor* api() { return &api_; }
  // Waits until R runs (nullptr if it never does).
  engine::Reactor* owner() {
    wait_for([&] { return owner_.load() != nullptr; });
    return owner_.load();
  }
  // Reactor::handed_over_taken(), read on R: posted after the calls this thread posted before,
  // so it counts them. -1 if R does not answer.
  int64_t handed_over_taken() {
    // Static: R may still answer it after a wait that gave up.
    static struct Query {
      std::atomic<engine::Reactor*> r;
      std::atomic<int64_t> taken;
    } q;
    q.r = owner();
    q.taken = -1;
    engine::RemoteCall call{.kind = engine::RemoteCall::Kind::kRun, .urgent = false,
                            .input_waiting = false, .target = 0, .data = nullptr, .length = 0,
                            .fn = [](void*) {
                              q.taken = static_cast<int64_t>(q.r.load()->handed_over_taken());
                            }};
    if (!q.r.load() || engine::post(*q.r.load(), call) < 0) return -1;
    wait_for([&] { return q.taken.load() >= 0; });
    return q.taken.load();
  }

 private:
  struct Reactor api_ = {};
  std::atomic<engine::Reactor*> owner_{nullptr};
  std::thread thread_;
};

TEST(AcceptBatchTest, ABatchForAReactorOnAnotherThreadTravelsInOnePostAndOpensThere) {
  constexpr int kBatch = 5;
  ReactorThread r;
  struct Reactor& api = *r.api();
  ASSERT_NE(r.owner(), nullptr);

  const Listener listener = listen_loopback();
  std::array<int, kBatch> clients{};
  std::array<int, kBatch> fds{};
  for (int i = 0; i < kBatch; ++i) {
    clients[i] = connect_client(listener.port);
    ASSERT_TRUE(wait_for([&] { return (fds[i] = engine::accept_connection(listener.fd)) >= 0; }));
  }
  bool made = false;
  const uint64_t posted = r.owner()->inbox(&made)->counters().posted;
  EXPECT_EQ(engine::open_accepted(&api, fds.data(), fds.size(), false),
            static_cast<std::size_t>(kBatch));
  EXPECT_EQ(r.owner()->inbox(&made)->counters().posted, posted + 1) << "one post for the batch";
  ASSERT_TRUE(wait_for([] { return g_opened.load() == kBatch; }));
  EXPECT_FALSE(g_opened_elsewhere.load());
  for (int i = 0; i < kBatch; ++i) {
    const std::string word = "conn" + std::to_string(i);
    testing_support::write_all(clients[i], word);
    std::string got;
    ASSERT_TRUE(wait_for([&] {
      testing_support::drain(clients[i], &got);
      return got.size() >= word.size();
    }));
    EXPECT_EQ(got, word) << "connection " << i << " is open and served on R";
  }
  for (const int c : clients) close(c);
  close(listener.fd);
}

// The count that least-loaded placement subtracts from what it handed (shards/server.cc): every
// fd handed over counts once R took it, also one whose open failed there (epoll refuses
// /dev/null: EPERM), and a sock_open made on another thread, which no acceptor counted as
// handed, does not count.
TEST(AcceptBatchTest, HandedOverFdsCountAsTakenWhetherTheyOpenOrNotAndOtherOpensDoNot) {
  ReactorThread r;
  ASSERT_NE(r.owner(), nullptr);
  const Listener listener = listen_loopback();
  const int client = connect_client(listener.port);
  int accepted = -1;
  ASSERT_TRUE(wait_for([&] { return (accepted = engine::accept_connection(listener.fd)) >= 0; }));
  int pair[2];  // made first: none of its numbers may be the one R frees by closing null_fd
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(null_fd, 0);
  const std::array<int, 2> handed{accepted, null_fd};
  EXPECT_EQ(engine::open_accepted(r.api(), handed.data(), handed.size(), false), handed.size());
  ASSERT_EQ(sock_open(r.api(), pair[0]), 0);  // posted: this thread is not R
  EXPECT_EQ(r.handed_over_taken(), 2);
  EXPECT_EQ(g_opened.load(), 2) << "the accepted fd and the sock_open; /dev/null failed";
  EXPECT_EQ(fcntl(null_fd, F_GETFD), -1) << "the fd that failed to open is closed";
  EXPECT_FALSE(g_opened_elsewhere.load());
  close(pair[1]);
  close(client);
  close(listener.fd);
}

}  // namespace
