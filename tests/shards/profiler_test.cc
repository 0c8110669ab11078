// The packet pool profiler on a sharded server under load (engine/metrics.h): every shard's
// counters keep their identities while clients stream through it and another thread scrapes
// all shards (TSan checks that the scraping is race-free), the profiler's histograms count
// exactly what the counters count, and sock_server_metrics/sock_server_of reach every shard.
//   checkouts - returns == outstanding, exact on the shard's own thread at every callback;
//   after the load: nothing outstanding, no queued bytes, no connections;
//   writes_direct + writes_queued == the sock_write calls the shard made;
//   profiling on: write sizes counted == those calls, packets per writev counted == writev
//   calls, packet lifetimes counted == packets returned (none went back from another thread).
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "engine/libsock.h"
#include "shards/server.h"
#include "tests/testing/loopback.h"
#include "tests/testing/metrics_text.h"
#include "tests/testing/wait_for.h"

namespace {

using testing_support::wait_for;
constexpr auto series = testing_support::series_value;

constexpr int kShards = 2;
constexpr int kClients = 8;
// Per client: enough for queues to form behind small socket buffers (fewer bytes under
// sanitizers would also do; this runs in about a second either way).
constexpr std::size_t kBytesPerClient = 512 << 10;

std::atomic<uint64_t> g_writes[kShards];
std::atomic<int> g_identity_failures{0};
std::atomic<int> g_server_of_failures{0};
SockServer* g_server = nullptr;

int shard_index(struct Reactor* r) {
  for (int i = 0; i < kShards; ++i) {
    if (sock_server_shard(g_server, i) == r) return i;
  }
  return -1;
}

// Echoes in three writes per read (a 4-byte header, the bytes, a 1-byte trailer), so that
// writes queue behind one another and the flush gathers them. The identity is checked on the
// shard's own thread, where the counters are exact.
void on_data(struct Reactor* r, int fd) {
  if (sock_server_of(r) != g_server) g_server_of_failures.fetch_add(1);
  const int shard = shard_index(r);
  char buf[16384];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    const uint32_t len = static_cast<uint32_t>(n);
    sock_write(fd, &len, sizeof len);
    sock_write(fd, buf, static_cast<std::size_t>(n));
    sock_write(fd, "\n", 1);
    g_writes[shard].fetch_add(3, std::memory_order_relaxed);
    SockStats s{};
    s.size = sizeof s;
    if (sock_stats(r, &s) != 0 || s.checkouts - s.returns != s.outstanding) {
      g_identity_failures.fetch_add(1);
    }
  }
}

std::string scrape(SockServer* server) {
  std::string text(256 << 10, '\0');
  const ssize_t n = sock_server_metrics(server, SOCK_METRICS_PROMETHEUS, nullptr, text.data(), text.size());
  EXPECT_GE(n, 0);
  EXPECT_LT(static_cast<std::size_t>(n), text.size());
  text.resize(static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
  return text;
}

TEST(ProfilerTest, CountersKeepTheirIdentitiesUnderLoadOnEveryShard) {
  sock_profile(1);
  SockServerSettings settings{};
  settings.address = "127.0.0.1";
  settings.port = "0";
  settings.threads = kShards;
  settings.on_data = on_data;
  g_server = sock_server_start_fn(settings);
  ASSERT_NE(g_server, nullptr);

  // Another thread scrapes every shard for as long as the load runs.
  std::atomic<bool> loading{true};
  std::atomic<int> scrapes{0};
  std::thread scraper([&] {
    while (loading.load()) {
      std::string text = scrape(g_server);
      if (text.find("libsock_pool_checkouts_total{shard=\"1\"}") != std::string::npos) scrapes++;
      char json[1 << 16];
      sock_server_metrics(g_server, SOCK_METRICS_JSON, nullptr, json, sizeof json);
    }
  });

  struct Client {
    int fd;
    std::string sent, got;
    std::size_t expected = 0;  // bytes of echo owed for what was sent
  };
  std::vector<Client> clients;
  for (int i = 0; i < kClients; ++i) {
    const int fd = testing_support::connect_client(sock_server_port(g_server), 8192);
    ASSERT_GE(fd, 0);
    clients.push_back({fd, testing_support::pattern(kBytesPerClient, static_cast<unsigned>(i)), {}});
  }
  std::vector<std::size_t> offsets(kClients, 0);
  std::size_t echo_payload[kClients] = {};
  ASSERT_TRUE(wait_for([&] {
    bool done = true;
    for (int i = 0; i < kClients; ++i) {
      Client& c = clients[static_cast<std::size_t>(i)];
      if (offsets[static_cast<std::size_t>(i)] < c.sent.size()) {
        const std::size_t chunk = std::min<std::size_t>(8192, c.sent.size() - offsets[static_cast<std::size_t>(i)]);
        const ssize_t w = send(c.fd, c.sent.data() + offsets[static_cast<std::size_t>(i)], chunk, MSG_DONTWAIT);
        if (w > 0) offsets[static_cast<std::size_t>(i)] += static_cast<std::size_t>(w);
      }
      testing_support::drain(c.fd, &c.got);
      // Unframe the echo: 4-byte length, the bytes, '\n'.
      std::size_t at = 0, payload = 0;
      while (at + 4 <= c.got.size()) {
        uint32_t len;
        std::memcpy(&len, c.got.data() + at, 4);
        if (at + 4 + len + 1 > c.got.size()) break;
        payload += len;
        at += 4 + len + 1;
      }
      echo_payload[i] = payload;
      if (payload < c.sent.size()) done = false;
    }
    return done;
  }));
  loading = false;
  scraper.join();
  EXPECT_GT(scrapes.load(), 0);
  for (Client& c : clients) close(c.fd);

  // Closed connections take their queues with them: wait for every shard to be empty.
  std::string text;
  ASSERT_TRUE(wait_for([&] {
    text = scrape(g_server);
    for (int i = 0; i < kShards; ++i) {
      const std::string shard = "{shard=\"" + std::to_string(i) + "\"}";
      if (series(text, "libsock_connections" + shard) != 0 ||
          series(text, "libsock_pool_outstanding_packets" + shard) != 0) {
        return false;
      }
    }
    return true;
  })) << text;
  EXPECT_EQ(g_identity_failures.load(), 0);
  EXPECT_EQ(g_server_of_failures.load(), 0);
  double checkouts = 0;
  for (int i = 0; i < kShards; ++i) {
    const std::string shard = "{shard=\"" + std::to_string(i) + "\"}";
    SockStats s{};
    s.size = sizeof s;
    ASSERT_EQ(sock_stats(sock_server_shard(g_server, i), &s), 0);
    checkouts += static_cast<double>(s.checkouts);
    EXPECT_EQ(s.checkouts, s.returns) << "shard " << i;
    EXPECT_EQ(s.remote_returns, 0u) << "shard " << i;
    EXPECT_EQ(s.queued_bytes, 0u) << "shard " << i;
    EXPECT_EQ(s.writes_direct + s.writes_queued, g_writes[i].load()) << "shard " << i;
    EXPECT_EQ(series(text, "libsock_write_size_bytes_count" + shard), static_cast<double>(g_writes[i].load()));
    EXPECT_EQ(series(text, "libsock_flush_packets_count" + shard), static_cast<double>(s.writev_calls));
    EXPECT_EQ(series(text, "libsock_packet_lifetime_seconds_count" + shard), static_cast<double>(s.returns));
    EXPECT_GT(g_writes[i].load(), 0u) << "no connection reached shard " << i;
  }
  EXPECT_GT(checkouts, 0) << "nothing ever queued: the load did not test the pools";
  EXPECT_EQ(sock_server_stop(g_server), 0);
  sock_profile(0);
}

}  // namespace

namespace {

std::atomic<int> g_shutdown_scrapes{0};

// Every connection's on_shutdown scrapes every shard while the shards stop side by side: a
// shard whose stop completed first must still be readable (its engine state lives until
// sock_server_stop has joined every shard; ASan would report the read otherwise).
void scrape_on_shutdown(struct Reactor* r, int) {
  std::string text(256 << 10, '\0');
  for (int i = 0; i < 20; ++i) {
    if (sock_server_metrics(sock_server_of(r), SOCK_METRICS_JSON, nullptr, text.data(),
                            text.size()) > 0) {
      g_shutdown_scrapes.fetch_add(1);
    }
  }
}

TEST(ProfilerTest, ScrapesDuringAStopReadEveryShardSafely) {
  SockServerSettings settings{};
  settings.address = "127.0.0.1";
  settings.port = "0";
  settings.threads = kShards;
  settings.on_shutdown = scrape_on_shutdown;
  SockServer* server = sock_server_start_fn(settings);
  ASSERT_NE(server, nullptr);
  std::vector<int> clients;
  for (int i = 0; i < 8; ++i) clients.push_back(testing_support::connect_client(sock_server_port(server)));
  // Connections reach both shards before the stop.
  ASSERT_TRUE(wait_for([&] {
    SockStats a{}, b{};
    a.size = b.size = sizeof a;
    sock_stats(sock_server_shard(server, 0), &a);
    sock_stats(sock_server_shard(server, 1), &b);
    return a.connections + b.connections >= clients.size() && a.connections && b.connections;
  }));
  EXPECT_EQ(sock_server_stop(server), 0);
  EXPECT_EQ(g_shutdown_scrapes.load(), 8 * 20);
  for (const int fd : clients) close(fd);
}

}  // namespace
