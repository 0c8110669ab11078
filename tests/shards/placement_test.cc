// shards/server.cc, least-loaded placement: the acceptor sends each connection to the shard with
// the fewest connections, counting those it handed that the shard has not taken off its inbox
// yet (ties go to the lower index). A handed connection whose open failed on its shard weighs
// nothing once taken, and connections a program opened on a shard from another thread count as
// that shard's connections, never against what is in flight to it.
//
// The test binary defines epoll_ctl ahead of libc's (as server_start_test does for its calls):
// an armed failure makes the next EPOLL_CTL_ADD fail with ENOMEM, as a shard's open of a handed
// fd does when the kernel is out of memory.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>
#include <vector>

#include "engine/reactor.h"
#include "engine/remote.h"
#include "engine/routing.h"
#include "shards/server.h"
#include "shards/shard.h"
#include "tests/testing/loopback.h"
#include "tests/testing/wait_for.h"

namespace {

using testing_support::wait_for;

// EPOLL_CTL_ADDs still to fail (0: none).
std::atomic<int> g_failing_adds{0};

constexpr int kShards = 2;
std::array<std::atomic<struct Reactor*>, kShards> g_shard_api;
std::array<std::atomic<int>, kShards> g_opened;  // on_open calls per shard

void count_open(struct Reactor* api, int) {
  for (int i = 0; i < kShards; ++i) {
    if (g_shard_api[i].load() == api) ++g_opened[i];
  }
}

// A call posted to shard 0 that holds its thread until released. Static: the shard may still
// be polling it when a failed test returns.
struct Hold {
  std::atomic<bool> holding{false};
  std::atomic<bool> release{false};
} g_hold;

// Whether the peer of `fd` closed it (EOF or a reset), without blocking.
bool peer_closed(int fd) {
  char c;
  const ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

// Two shards placed least-loaded by the acceptor thread; stopped, with the clients closed, at
// the end of the test.
class PlacementTest : public testing::Test {
 protected:
  void SetUp() override {
    for (auto& n : g_opened) n = 0;
    server_ = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = kShards,
                                .accept_mode = SOCK_ACCEPT_THREAD,
                                .placement = SOCK_PLACE_LEAST_LOADED, .on_open = count_open,
                                .idle_timeout_ms = SOCK_NO_TIMEOUT);
    ASSERT_NE(server_, nullptr);
    for (int i = 0; i < kShards; ++i) g_shard_api[i] = sock_server_shard(server_, i);
  }
  void TearDown() override {
    g_failing_adds = 0;
    if (server_) {
      EXPECT_EQ(sock_server_stop(server_), 0);
    }
    for (const int fd : clients_) close(fd);
  }

  shards::Shard::Load load(int i) { return shards::Shard::of(g_shard_api[i].load())->load(); }
  int connect() {
    clients_.push_back(testing_support::connect_client(sock_server_port(server_)));
    return clients_.back();
  }

  SockServer* server_ = nullptr;
  std::vector<int> clients_;
};

TEST_F(PlacementTest, AHandedConnectionWhoseOpenFailedWeighsNothingOnceTaken) {
  g_failing_adds = 1;
  const int lost = connect();  // to shard 0: nothing anywhere, and ties go to the lower index
  ASSERT_TRUE(wait_for([&] { return peer_closed(lost); })) << "its open failed: it is closed";
  EXPECT_EQ(g_failing_adds.load(), 0);
  ASSERT_TRUE(wait_for([&] { return load(0).taken == 1; }));
  EXPECT_EQ(load(0).connections, 0u);
  connect();
  ASSERT_TRUE(wait_for([] { return g_opened[0] + g_opened[1] == 1; }));
  EXPECT_EQ(g_opened[0].load(), 1) << "shard 0 holds nothing, and nothing is in flight to it";
}

TEST_F(PlacementTest, ConnectionsOpenedFromAnotherThreadDoNotHideOnesStillInFlight) {
  // Three connections this thread opens on shard 0 (each sock_open is posted there).
  constexpr uint64_t kOpenedHere = 3;
  std::vector<std::array<int, 2>> pairs(kOpenedHere);
  for (auto& p : pairs) {
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, p.data()), 0);
    clients_.push_back(p[1]);
    ASSERT_EQ(sock_open(g_shard_api[0].load(), p[0]), 0);
  }
  ASSERT_TRUE(wait_for([&] { return load(0).connections == kOpenedHere; }));
  EXPECT_EQ(load(0).taken, 0u) << "the acceptor handed none of them";

  // Shard 0 takes nothing more off its inbox while a posted call holds its thread.
  struct Release {
    ~Release() { g_hold.release = true; }  // however the test ends, before the server stops
  } release;
  engine::RemoteCall call{.kind = engine::RemoteCall::Kind::kRun, .urgent = false,
                          .input_waiting = false, .target = 0, .data = nullptr, .length = 0,
                          .fn = [](void*) {
                            g_hold.holding = true;
                            wait_for([] { return g_hold.release.load(); });
                          }};
  ASSERT_EQ(engine::post(*engine::Reactor::of(g_shard_api[0].load(), false), call), 0);
  ASSERT_TRUE(wait_for([] { return g_hold.holding.load(); }));

  // Shard 1 is emptier: it gets connections until it has as many as shard 0.
  for (uint64_t n = 1; n <= kOpenedHere; ++n) {
    connect();
    ASSERT_TRUE(wait_for([&] { return load(1).connections == n && load(1).taken == n; }));
  }
  // A tie: the next goes to shard 0 and waits in its inbox. Counted in flight, it makes shard 0
  // the fuller, so the one after goes to shard 1.
  connect();
  connect();
  ASSERT_TRUE(wait_for([] { return g_opened[1].load() == kOpenedHere + 1; }))
      << "the connection after the one in flight to shard 0 went to shard 0 too";
  g_hold.release = true;
  ASSERT_TRUE(wait_for([] { return g_opened[0].load() == kOpenedHere + 1; }));
  EXPECT_TRUE(wait_for([&] { return load(0).taken == 1; }));  // published after the iteration
}

}  // namespace

extern "C" int epoll_ctl(int epfd, int op, int fd, struct epoll_event* event) {
  using Ctl = int (*)(int, int, int, struct epoll_event*);
  static const auto next = reinterpret_cast<Ctl>(dlsym(RTLD_NEXT, "epoll_ctl"));
  if (op == EPOLL_CTL_ADD) {
    int left = g_failing_adds.load();
    while (left > 0 && !g_failing_adds.compare_exchange_weak(left, left - 1)) {}
    if (left > 0) {
      errno = ENOMEM;
      return -1;
    }
  }
  return next(epfd, op, fd, event);
}
