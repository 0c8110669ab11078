// Many TLS connections through their whole life (connect, handshake, one request, close with
// close_notify) leave nothing behind: fds, pool packets, TLS layers and memory are back where
// they were. The server is the engine's, on the test thread's reactor, kConcurrent
// connections at a time. A tenth of the connections come from the engine's client (full
// handshakes, both ends counted); the rest from OpenSSL's client resuming the session of the
// connection before, half with TLS 1.3, half with TLS 1.2. Why: a full ECDSA handshake costs
// about 1.3 ms of CPU for both ends here (10,000 would take most of the suite's budget), a
// resumed one 0.3 (TLS 1.2) to 0.8 ms (1.3, which still runs ECDHE), and goes through the same
// layer code with the ticket callback added. TLS_HANDSHAKES=N in the environment sets the
// number of connections.
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "engine/libsock.h"
#include "engine/tls/sock_tls.h"
#include "tests/engine/tls/tls_fixture.h"
#include "tests/testing/run_until.h"
#include "tests/testing/tls_client.h"

namespace {

using testing_support::run_until;
using testing_support::TlsClient;
using testing_support::TlsClientConfig;
using testing_support::TlsFixture;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr uint64_t kDefaultConnections = 1000;
constexpr uint64_t kWarmup = 50;
constexpr bool kMeasureRss = false;  // ASan's quarantine and TSan's shadow hold freed memory
#else
constexpr uint64_t kDefaultConnections = 10000;
// Connections of each kind run before the baseline is taken: OpenSSL's tables and error
// strings, the pool's chunks, the fd table's pages and the threads' scratch buffers are
// allocated once.
constexpr uint64_t kWarmup = 200;
constexpr bool kMeasureRss = true;
#endif
// Connections in flight at once.
constexpr uint64_t kConcurrent = 16;
// One connection in kFullEvery comes from the engine's client.
constexpr uint64_t kFullEvery = 10;
// Bound on RSS growth over the measured connections: measured here, 0 to 184 KiB over 10,000
// (the allocators reuse what the warm-up freed). 2 MiB leaves room for allocator noise and still
// catches a leak of 210 bytes per connection; a leaked SSL object (several KB) would show
// tens of MB.
constexpr std::size_t kRssBound = std::size_t{2} << 20;
constexpr char kRequest[] = "ping";
constexpr std::size_t kRequestLength = sizeof kRequest - 1;

uint64_t connections() {
  const char* v = std::getenv("TLS_HANDSHAKES");
  return v ? std::strtoull(v, nullptr, 10) : kDefaultConnections;
}

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

std::size_t rss_bytes() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  const int n = std::fscanf(f, "%ld %ld", &pages, &resident);
  std::fclose(f);
  return n == 2 ? static_cast<std::size_t>(resident) * static_cast<std::size_t>(getpagesize()) : 0;
}

class HandshakeChurnTest : public TlsFixture {
 protected:
  void on_connection_data(int fd) override {
    TlsFixture::on_connection_data(fd);
    const testing_support::TlsConn& c = conns_[fd];
    if (clients_.count(fd) && c.got.size() >= kRequestLength && !closing_.count(fd)) {
      EXPECT_EQ(c.got, kRequest);
      ++answered_;
      closing_.insert(fd);
      sock_close(&r_, fd);  // close_notify; the server reads it as EOF and closes too
    }
  }

  void on_close(struct Reactor* r, int fd) override {
    TlsFixture::on_close(r, fd);
    const SockCloseReason reason = sock_close_reason();
    if (reason != SOCK_CLOSE_LOCAL && reason != SOCK_CLOSE_PEER && ++bad_closes_ <= 3) {
      ADD_FAILURE() << "fd " << fd << " closed with reason " << reason << ": " << sock_tls_error();
    }
    clients_.erase(fd);
    closing_.erase(fd);
    ++closes_;
  }

  // Runs `count` connections from the engine's client, kConcurrent at a time, to completion on
  // both ends.
  void churn_full(uint64_t count) {
    const uint64_t closes_before = closes_, answered_before = answered_;
    uint64_t started = 0;
    const bool done = run_until(
        &r_,
        [&] {
          while (started < count && clients_.size() < kConcurrent) {
            const int fd = connect_tls();
            if (fd < 0) return true;  // a failure was reported
            clients_.insert(fd);
            EXPECT_EQ(sock_write(fd, kRequest, kRequestLength), 0);  // held until established
            ++started;
          }
          return started == count && closes_ - closes_before == 2 * count;
        },
        std::chrono::minutes(5));
    EXPECT_TRUE(done) << "started " << started << ", answered " << answered_ - answered_before
                      << ", closes " << closes_ - closes_before;
    EXPECT_EQ(answered_ - answered_before, count);
  }

  // OpenSSL's client for one protocol version, and the session its next connection resumes.
  struct Resuming {
    explicit Resuming(int version) : config(testing_support::test_pki().ca, "", version) {}
    TlsClientConfig config;
    testing_support::Session session;
  };

  // Runs `count` connections from OpenSSL's client, kConcurrent at a time, each resuming the
  // session of the last one that finished (once there is one), to completion on both ends.
  void churn_resumed(uint64_t count, Resuming* client) {
    struct Slot {
      std::unique_ptr<TlsClient> peer;
      bool resuming = false;
    };
    std::vector<Slot> slots(kConcurrent);
    const uint64_t closes_before = closes_;
    uint64_t started = 0, answered = 0;
    const bool done = run_until(
        &r_,
        [&] {
          for (Slot& slot : slots) {
            if (!slot.peer && started < count) {
              slot.resuming = client->session != nullptr;
              slot.peer = std::make_unique<TlsClient>(client->config, listener_.port, "localhost",
                                                      client->session.get());
              slot.peer->send(kRequest);
              ++started;
            }
            if (!slot.peer) continue;
            if (!slot.peer->pump() && slot.peer->failed()) {
              ADD_FAILURE() << slot.peer->error();
              return true;
            }
            if (slot.peer->received().size() < kRequestLength) continue;
            EXPECT_EQ(slot.peer->received(), kRequest);
            EXPECT_EQ(slot.peer->resumed(), slot.resuming);
            client->session = slot.peer->session();
            slot.peer->shutdown();  // close_notify, then the socket closes
            slot.peer.reset();
            ++answered;
          }
          return started == count && answered == count && closes_ - closes_before == count;
        },
        std::chrono::minutes(5));
    EXPECT_TRUE(done) << "started " << started << ", answered " << answered << ", closes "
                      << closes_ - closes_before;
  }

  std::set<int> clients_;
  std::set<int> closing_;
  uint64_t answered_ = 0;
  uint64_t closes_ = 0;
  uint64_t bad_closes_ = 0;
};

TEST_F(HandshakeChurnTest, ManyHandshakesLeaveNothingBehind) {
  Resuming tls13(TLS1_3_VERSION), tls12(TLS1_2_VERSION);
  ASSERT_NO_FATAL_FAILURE(churn_full(kWarmup));
  ASSERT_NO_FATAL_FAILURE(churn_resumed(kWarmup, &tls13));
  ASSERT_NO_FATAL_FAILURE(churn_resumed(kWarmup, &tls12));
  const std::size_t fds = open_fds();
  const uint64_t outstanding = pool_stats().outstanding;
  const std::size_t rss = rss_bytes();
  const SockTLSStats before = tls_stats();

  const uint64_t n = connections();
  const uint64_t full = n / kFullEvery;
  const uint64_t resumed13 = (n - full) / 2, resumed12 = n - full - resumed13;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_NO_FATAL_FAILURE(churn_full(full));
  const auto t1 = std::chrono::steady_clock::now();
  ASSERT_NO_FATAL_FAILURE(churn_resumed(resumed13, &tls13));
  const auto t2 = std::chrono::steady_clock::now();
  ASSERT_NO_FATAL_FAILURE(churn_resumed(resumed12, &tls12));
  const auto t3 = std::chrono::steady_clock::now();
  const auto us_each = [](auto from, auto to, uint64_t count) {
    return std::chrono::duration<double, std::micro>(to - from).count() /
           static_cast<double>(count ? count : 1);
  };
  std::printf(
      "wall time per connection: %llu full %.0f us, %llu resumed TLS 1.3 %.0f us, "
      "%llu resumed TLS 1.2 %.0f us\n",
      static_cast<unsigned long long>(full), us_each(t0, t1, full),
      static_cast<unsigned long long>(resumed13), us_each(t1, t2, resumed13),
      static_cast<unsigned long long>(resumed12), us_each(t2, t3, resumed12));

  const SockTLSStats after = tls_stats();
  EXPECT_EQ(after.handshakes - before.handshakes, 2 * full + (n - full));  // full: both ends
  EXPECT_EQ(after.resumed - before.resumed, n - full);
  for (int i = 0; i < SOCK_TLS_FAIL_REASONS; ++i) {
    EXPECT_EQ(after.failures[i], before.failures[i]) << "reason " << i;
  }
  EXPECT_EQ(after.records_failed, before.records_failed);
  EXPECT_TRUE(log_.empty()) << log_.size() << " failures logged, the first: " << log_.front();
  EXPECT_EQ(after.open, before.open);
  EXPECT_EQ(open_fds(), fds);
  EXPECT_EQ(pool_stats().outstanding, outstanding);
  if (kMeasureRss) {
    const std::size_t now = rss_bytes();
    const std::size_t grown = now > rss ? now - rss : 0;
    std::printf("RSS %zu KiB after the warm-up, grown by %zu KiB since\n", rss / 1024,
                grown / 1024);
    EXPECT_LT(grown, kRssBound) << "RSS grew by " << grown << " bytes";
  }
}

}  // namespace
