// shards/ under SockServerSettings.max_connections (shards/connection_limit.h): at the limit
// the listeners are held (detached from their reactors), so connects wait in the kernel's
// backlog; a close lets the next one in. Every check is a count, never a time: what the
// server opened (on_open), the listeners' state (their fd slots' owner, as
// accept_pause_test reads it) and the kernel's backlog of each listener (TCP_INFO), so a
// client is known to be waiting before the test asserts that it was not let in.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <utility>
#include <vector>

#include "engine/fd_table.h"
#include "engine/libsock.h"
#include "shards/connection_limit.h"
#include "shards/server.h"
#include "tests/testing/loopback.h"
#include "tests/testing/wait_for.h"

namespace {

using testing_support::wait_for;

// What the server's callbacks saw (any shard's thread).
struct Seen {
  std::atomic<int> opened{0};
  std::atomic<int> open{0};
  std::atomic<int> most_open{0};  // the most connections open at once
};
Seen* g_seen = nullptr;

void count_open(struct Reactor*, int) {
  ++g_seen->opened;
  const int now = ++g_seen->open;
  int most = g_seen->most_open.load();
  while (now > most && !g_seen->most_open.compare_exchange_weak(most, now)) {}
}

// on_close runs after close(2), so a connection leaves `open` after it left the shard's
// count: a connection let in by that close is counted after it.
void count_close(struct Reactor*, int) { --g_seen->open; }

void echo(struct Reactor*, int fd) {
  char buf[256];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) sock_write(fd, buf, static_cast<size_t>(n));
}

struct Mode {
  const char* name;
  int threads;
  int accept_mode;
  int placement;
};

std::string mode_name(const ::testing::TestParamInfo<Mode>& info) { return info.param.name; }

SockServer* start(const Mode& mode, unsigned max_connections) {
  return sock_server_start(.address = "127.0.0.1", .port = "0", .threads = mode.threads,
                           .accept_mode = mode.accept_mode, .placement = mode.placement,
                           .on_data = echo, .on_close = count_close, .on_open = count_open,
                           .idle_timeout_ms = SOCK_NO_TIMEOUT,
                           .max_connections = max_connections);
}

// Every fd of this process that listens on 127.0.0.1:port (one per shard in SO_REUSEPORT
// mode, else one).
std::vector<int> listeners_of(int port) {
  std::vector<int> fds;
  for (int fd = 0; fd < 4096; ++fd) {
    int listening = 0;
    socklen_t len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening &&
        testing_support::local_port(fd) == port) {
      fds.push_back(fd);
    }
  }
  return fds;
}

// Connections the kernel completed into a listener's backlog, not accepted yet (for a
// listening socket TCP_INFO's tcpi_unacked is that queue's length).
int backlog(int listener) {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (getsockopt(listener, IPPROTO_TCP, TCP_INFO, &info, &len) < 0) return -1;
  return static_cast<int>(info.tcpi_unacked);
}

// Detached from its shard's or the acceptor's reactor: AcceptPause holds it.
bool held(int listener) { return engine::load_owner(*engine::fd_slot(listener)) == nullptr; }

// Connections waiting in the backlogs of held listeners: no accept takes them until a close.
int held_back(const std::vector<int>& listeners) {
  int n = 0;
  for (const int l : listeners) n += held(l) ? backlog(l) : 0;
  return n;
}

// A listener its shard (or the acceptor) watches, with nothing waiting: a client that lands
// there is let in.
bool any_idle(const std::vector<int>& listeners) {
  return std::any_of(listeners.begin(), listeners.end(),
                     [](int l) { return !held(l) && backlog(l) == 0; });
}

bool all_held(const std::vector<int>& listeners) {
  return std::all_of(listeners.begin(), listeners.end(), held);
}

// A client that sent one byte and counts whether the server echoed it.
struct Client {
  int fd = -1;
  bool echoed = false;
};

Client connect_and_send(int port) {
  Client c{testing_support::connect_client(port)};
  testing_support::write_all(c.fd, "x");
  return c;
}

// Reads what came to the clients still open; returns how many have had their echo.
int echoed(std::vector<Client>& clients) {
  int n = 0;
  for (Client& c : clients) {
    if (c.fd >= 0 && !c.echoed) {
      std::string got;
      testing_support::drain(c.fd, &got);
      c.echoed = !got.empty();
    }
    n += c.echoed ? 1 : 0;
  }
  return n;
}

// Stops the server on every way out of a test (a failed ASSERT returns early): its shards
// would otherwise run on after TearDown cleared g_seen, which their callbacks use.
struct ServerStopper {
  SockServer* server;
  ~ServerStopper() {
    if (server) sock_server_stop(server);
  }
  int stop() { return sock_server_stop(std::exchange(server, nullptr)); }
};

class MaxConnectionsTest : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override { g_seen = &seen_; }
  void TearDown() override { g_seen = nullptr; }
  Seen seen_;
};

TEST_P(MaxConnectionsTest, AtTheLimitConnectsWaitUnservedAndAClosedConnectionLetsTheNextIn) {
  constexpr int kMax = 2;
  constexpr std::size_t kMostClients = 64;  // the kernel's hash missing a free shard so often
  SockServer* server = start(GetParam(), kMax);
  ASSERT_NE(server, nullptr);
  ServerStopper stopper{server};
  const int port = sock_server_port(server);
  const std::vector<int> listeners = listeners_of(port);
  ASSERT_FALSE(listeners.empty());
  std::vector<Client> clients;
  // Each client is either let in (on_open) or waits in the backlog of a held listener: a
  // shard's at its share (in SO_REUSEPORT mode the kernel may hash a client to it while
  // another shard has room), or the acceptor's at the limit. No connection closes yet, so a
  // held listener stays held, and what waits there stays.
  const auto settled = [&] {
    return seen_.opened.load() + held_back(listeners) == static_cast<int>(clients.size());
  };
  while (seen_.opened.load() < kMax && clients.size() < kMostClients) {
    clients.push_back(connect_and_send(port));
    ASSERT_TRUE(wait_for(settled)) << seen_.opened.load() << " opened";
  }
  ASSERT_EQ(seen_.opened.load(), kMax);
  // Every shard at its share (or the acceptor at the limit) holds its listener.
  ASSERT_TRUE(wait_for([&] { return all_held(listeners); }));
  // One more, known to wait in a backlog: connect(2) returned, and the kernel counts it there.
  clients.push_back(connect_and_send(port));
  ASSERT_TRUE(wait_for(settled));
  ASSERT_TRUE(wait_for([&] { return echoed(clients) == kMax; }));
  EXPECT_GT(held_back(listeners), 0);
  EXPECT_EQ(seen_.opened.load(), kMax) << "a client was let in past the limit";
  EXPECT_EQ(seen_.open.load(), kMax);

  // One served client leaves: its shard (or the acceptor) watches its listener again and
  // takes the next client waiting there. In SO_REUSEPORT mode none may wait on that shard's
  // listener (the kernel's hash sent them all to the other): then new clients come while it
  // waits idle, until one lands there.
  const auto served = std::find_if(clients.begin(), clients.end(),
                                   [](const Client& c) { return c.echoed; });
  close(served->fd);
  served->fd = -1;
  ASSERT_TRUE(wait_for([&] {
    if (seen_.opened.load() > kMax) return true;
    if (any_idle(listeners) && clients.size() < kMostClients) {
      clients.push_back(connect_and_send(port));
    }
    return false;
  }));
  EXPECT_TRUE(wait_for([&] { return echoed(clients) == kMax + 1; }));
  EXPECT_TRUE(wait_for([&] { return all_held(listeners); }));
  EXPECT_EQ(seen_.opened.load(), kMax + 1);
  EXPECT_EQ(seen_.most_open.load(), kMax);

  // A stop while every listener is held closes them all the same.
  EXPECT_EQ(stopper.stop(), 0);
  EXPECT_TRUE(listeners_of(port).empty());
  for (const Client& c : clients) {
    if (c.fd >= 0) close(c.fd);
  }
}

TEST_P(MaxConnectionsTest, UnderChurnNoMoreThanTheLimitAreOpenAtOnceAndAllAreServed) {
  constexpr int kMax = 4;
  constexpr int kClients = 50;
  SockServer* server = start(GetParam(), kMax);
  ASSERT_NE(server, nullptr);
  ServerStopper stopper{server};
  const int port = sock_server_port(server);
  // All connected first (the backlog takes them), then each sends: served, it closes, and
  // its place goes to the next.
  std::vector<Client> clients;
  for (int i = 0; i < kClients; ++i) clients.push_back({testing_support::connect_client(port)});
  for (const Client& c : clients) testing_support::write_all(c.fd, "x");
  EXPECT_TRUE(wait_for([&] {
    const int n = echoed(clients);
    for (Client& c : clients) {
      if (c.echoed && c.fd >= 0) {
        close(c.fd);
        c.fd = -1;
      }
    }
    return n == kClients;
  })) << echoed(clients) << " of " << kClients << " served";
  EXPECT_LE(seen_.most_open.load(), kMax);
  EXPECT_EQ(seen_.opened.load(), kClients);
  EXPECT_EQ(stopper.stop(), 0);
  for (const Client& c : clients) {
    if (c.fd >= 0) close(c.fd);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AcceptModes, MaxConnectionsTest,
    ::testing::Values(
        Mode{"OneShard", 1, SOCK_ACCEPT_THREAD, SOCK_PLACE_ROUND_ROBIN},
        Mode{"TwoShardsAcceptorRoundRobin", 2, SOCK_ACCEPT_THREAD, SOCK_PLACE_ROUND_ROBIN},
        Mode{"TwoShardsAcceptorLeastLoaded", 2, SOCK_ACCEPT_THREAD, SOCK_PLACE_LEAST_LOADED},
        Mode{"OneShardReusePort", 1, SOCK_ACCEPT_REUSEPORT, SOCK_PLACE_ROUND_ROBIN},
        Mode{"TwoShardsReusePort", 2, SOCK_ACCEPT_REUSEPORT, SOCK_PLACE_ROUND_ROBIN}),
    mode_name);

// The shares of shards that accept on their own listeners add up to the limit, and none is
// empty: the kernel sends connections to every listener.
TEST(ConnectionShareTest, SharesAddUpToTheLimitAndNoShardIsLeftWithout) {
  EXPECT_EQ(shards::connection_share(0, 4, 0), 0u);  // no limit
  for (const uint64_t max : {1u, 3u, 4u, 7u, 100u}) {
    for (const uint64_t shards : {1u, 2u, 3u, 4u}) {
      uint64_t sum = 0;
      for (uint64_t i = 0; i < shards; ++i) {
        const uint64_t share = shards::connection_share(max, shards, i);
        EXPECT_GE(share, 1u);
        EXPECT_LE(share, max / shards + 1);
        sum += share;
      }
      EXPECT_EQ(sum, std::max(max, shards)) << max << " over " << shards;
    }
  }
}

}  // namespace
