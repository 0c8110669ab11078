// engine/tls/stats.cc: sock_tls_stats and sock_tls_metrics (the buffer rules of snprintf, the
// families, a histogram consistent with the handshake counter) following real handshakes, and
// the per-thread blocks they sum (counted directly through stats.h).
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "engine/tls/sock_tls.h"
#include "engine/tls/stats.h"
#include "tests/engine/tls/tls_fixture.h"
#include "tests/testing/loopback.h"
#include "tests/testing/metrics_text.h"
#include "tests/testing/run_until.h"
#include "tests/testing/tls_client.h"

namespace {

using testing_support::run_until;
using testing_support::series_value;
using testing_support::test_pki;
using testing_support::TlsClient;
using testing_support::TlsClientConfig;
using testing_support::TlsFixture;

std::string metrics_text() {
  const ssize_t n = sock_tls_metrics(nullptr, 0);
  EXPECT_GT(n, 0);
  std::string text(static_cast<std::size_t>(n) + 1, '\0');
  EXPECT_EQ(sock_tls_metrics(text.data(), text.size()), n);
  text.resize(static_cast<std::size_t>(n));
  return text;
}

TEST(StatsTest, MetricsFollowSnprintfBufferRules) {
  errno = 0;
  EXPECT_EQ(sock_tls_stats(nullptr), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  char one;
  EXPECT_EQ(sock_tls_metrics(nullptr, 1), -1);
  EXPECT_EQ(errno, EINVAL);

  const std::string text = metrics_text();
  const auto n = static_cast<ssize_t>(text.size());
  // Exactly the text's length: too small for its NUL, so nothing is written.
  std::string exact(text.size(), '#');
  EXPECT_EQ(sock_tls_metrics(exact.data(), exact.size()), n);
  EXPECT_EQ(exact, std::string(text.size(), '#'));
  EXPECT_EQ(sock_tls_metrics(&one, 0), n);
  // Room for the NUL: the whole text, terminated.
  std::string room(text.size() + 1, '#');
  EXPECT_EQ(sock_tls_metrics(room.data(), room.size()), n);
  EXPECT_EQ(room, text + '\0');
}

TEST(StatsTest, MetricsHaveEveryFamily) {
  const std::string text = metrics_text();
  for (const char* line : {"# TYPE libsock_tls_handshakes_total counter\n",
                           "# TYPE libsock_tls_handshake_failures_total counter\n",
                           "# TYPE libsock_tls_handshake_seconds histogram\n",
                           "# TYPE libsock_tls_record_failures_total counter\n",
                           "# TYPE libsock_tls_connections gauge\n",
                           "\nlibsock_tls_handshake_failures_total{reason=\"protocol\"} ",
                           "\nlibsock_tls_handshake_failures_total{reason=\"certificate\"} ",
                           "\nlibsock_tls_handshake_failures_total{reason=\"timeout\"} ",
                           "\nlibsock_tls_handshake_failures_total{reason=\"closed\"} "}) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "in\n" << text;
  }
}

SockTLSStats stats_now() {
  SockTLSStats s{};
  EXPECT_EQ(sock_tls_stats(&s), 0);
  return s;
}

// Two threads count into blocks of their own. The sums are exact while both threads live,
// and after they exit: a connection opened on one thread and cleared on the other nets to
// zero (the second block's share of `open` is -1), and the histogram sums the blocks too.
TEST(StatsTest, CountsFromTwoThreadsSumExactlyAndSurviveTheirExit) {
  constexpr uint64_t kPerThread = 1000;
  constexpr uint64_t kMicros = 100;  // in the first bucket, le="0.00025"
  const SockTLSStats before = stats_now();
  const std::string bucket = "libsock_tls_handshake_seconds_bucket{le=\"0.00025\"}";
  const double bucket_before = series_value(metrics_text(), bucket);
  std::latch counted(2), read(1);
  auto work = [&](int opened) {
    for (uint64_t i = 0; i < kPerThread; ++i) {
      tls::count_handshake(i % 2 == 0, kMicros);
      tls::count_failure(SOCK_TLS_FAIL_TIMEOUT);
      tls::count_record_failure();
    }
    for (int i = 0; i < opened; ++i) tls::count_open(1);
    if (opened == 0) tls::count_open(-1);  // one of the other thread's connections
    counted.count_down();
    read.wait();  // the block stays live until the test has read it
  };
  std::thread a(work, 2), b(work, 0);

  const auto expect_sums = [&](const char* when) {
    SCOPED_TRACE(when);
    const SockTLSStats s = stats_now();
    EXPECT_EQ(s.handshakes - before.handshakes, 2 * kPerThread);
    EXPECT_EQ(s.resumed - before.resumed, kPerThread);
    EXPECT_EQ(s.handshake_us_sum - before.handshake_us_sum, 2 * kPerThread * kMicros);
    EXPECT_EQ(s.failures[SOCK_TLS_FAIL_TIMEOUT] - before.failures[SOCK_TLS_FAIL_TIMEOUT],
              2 * kPerThread);
    EXPECT_EQ(s.records_failed - before.records_failed, 2 * kPerThread);
    EXPECT_EQ(s.open, before.open + 1);
    EXPECT_EQ(series_value(metrics_text(), bucket) - bucket_before,
              static_cast<double>(2 * kPerThread));
  };
  counted.wait();
  expect_sums("both threads live");
  read.count_down();
  a.join();
  b.join();
  expect_sums("both threads exited");
  tls::count_open(-1);  // the last of thread a's connections, cleared here
  EXPECT_EQ(stats_now().open, before.open);
}

// The histogram's figures and the handshake counters as one scrape shows them.
struct Exposition {
  double full = 0, resumed = 0, count = 0, inf = 0;
  std::vector<double> buckets;  // the finite ones, cumulative, in order
};

// One sock_tls_metrics call, into room to spare: the text may grow between two calls while
// another thread counts (a count gaining a digit).
Exposition scrape() {
  std::string text(1 << 16, '\0');
  const ssize_t n = sock_tls_metrics(text.data(), text.size());
  EXPECT_GT(n, 0);
  EXPECT_LT(n, static_cast<ssize_t>(text.size()));
  text.resize(static_cast<std::size_t>(std::max<ssize_t>(n, 0)));
  Exposition e;
  e.full = series_value(text, "libsock_tls_handshakes_total{kind=\"full\"}");
  e.resumed = series_value(text, "libsock_tls_handshakes_total{kind=\"resumed\"}");
  e.count = series_value(text, "libsock_tls_handshake_seconds_count");
  e.inf = series_value(text, "libsock_tls_handshake_seconds_bucket{le=\"+Inf\"}");
  const std::string prefix = "\nlibsock_tls_handshake_seconds_bucket{le=\"";
  for (std::size_t at = 0; (at = text.find(prefix, at)) != std::string::npos; ++at) {
    if (text.compare(at + prefix.size(), 4, "+Inf") == 0) continue;
    e.buckets.push_back(std::stod(text.substr(text.find("} ", at) + 2)));
  }
  return e;
}

// Whether one scrape's histogram agrees with itself: cumulative buckets up to +Inf, which is
// the count. Empty if so, else what disagrees.
std::string disagreement(const Exposition& e) {
  double previous = 0;
  for (const double b : e.buckets) {
    if (b < previous) return "a bucket below the one before it";
    previous = b;
  }
  if (e.inf < previous) return "the +Inf bucket below a finite one";
  if (e.count != e.inf) return "_count is not the +Inf bucket";
  return "";
}

// A handshake slower than the last finite bucket (1 s) is in +Inf and _count only, and a
// quiet scrape's figures agree: +Inf and _count are the full and resumed handshakes.
TEST(StatsTest, HistogramCountsEveryHandshakeSlowOnesInInfOnly) {
  const Exposition before = scrape();
  tls::count_handshake(false, 5'000'000);
  tls::count_handshake(true, 100);
  const Exposition after = scrape();
  EXPECT_EQ(disagreement(after), "");
  ASSERT_EQ(after.buckets.size(), before.buckets.size());
  ASSERT_FALSE(after.buckets.empty());
  EXPECT_EQ(after.buckets.back() - before.buckets.back(), 1);
  EXPECT_EQ(after.inf - before.inf, 2);
  EXPECT_EQ(after.full - before.full, 1);
  EXPECT_EQ(after.resumed - before.resumed, 1);
  EXPECT_EQ(after.inf, after.full + after.resumed);
}

// Scrapes while another thread counts handshakes: every scrape's histogram agrees with itself
// (no bucket above +Inf, _count equal to +Inf), and no counter goes down from one scrape to
// the next. The figures are derived from the same reads, each from counters that only grow,
// so no interleaving can break this; before, +Inf and _count were the handshake counter,
// read before the buckets, and kind="full" was the handshakes less the resumed ones, read
// one after the other, so a handshake counted between two reads broke either.
// A race, so a scrape catches a count half made only now and then (the scrapes go on for a
// second): the structure, not this test, is what rules it out.
TEST(StatsTest, ScrapesWhileHandshakesAreCountedAgreeAndNeverGoDown) {
  constexpr int kScrapes = 100000;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  std::atomic<bool> stop{false};
  std::atomic<bool> counting{false};
  std::thread counter([&] {
    // Alternately full and resumed, in finite buckets only: their sum is then the +Inf
    // bucket, which a slow handshake's count would leave room above.
    constexpr uint64_t kMicros[] = {100, 800, 20000, 900'000};
    for (uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
      tls::count_handshake(i % 2 == 1, kMicros[i % 4]);
      counting.store(true, std::memory_order_relaxed);
    }
  });
  while (!counting.load(std::memory_order_relaxed)) std::this_thread::yield();
  Exposition previous = scrape();
  std::string problem;
  int i = 0;
  for (; i < kScrapes && problem.empty() && std::chrono::steady_clock::now() < end; ++i) {
    const Exposition now = scrape();
    problem = disagreement(now);
    if (problem.empty() && (now.full < previous.full || now.resumed < previous.resumed ||
                            now.inf < previous.inf)) {
      problem = "a counter went down";
    }
    if (!problem.empty()) problem += " at scrape " + std::to_string(i);
    previous = now;
  }
  stop.store(true, std::memory_order_relaxed);
  counter.join();
  EXPECT_EQ(problem, "") << "after " << i << " scrapes";
}

class StatsFixture : public TlsFixture {
 protected:
  // The change of every failure counter since `before`: handshake failures by reason, then
  // records_failed.
  static std::string failures_since(const SockTLSStats& before) {
    const SockTLSStats now = tls_stats();
    std::string moved;
    for (int i = 0; i < SOCK_TLS_FAIL_REASONS; ++i) {
      moved += std::to_string(now.failures[i] - before.failures[i]) + " ";
    }
    return moved + std::to_string(now.records_failed - before.records_failed);
  }
};

// A full handshake on both ends: two handshakes, two connections while open, the histogram's
// count and +Inf bucket equal to the counter, its buckets cumulative.
TEST_F(StatsFixture, CountersFollowHandshakes) {
  const SockTLSStats before = tls_stats();
  int server = -1;
  const int client = connect_pair(&server);
  EXPECT_EQ(tls_stats().open, before.open + 2);
  ASSERT_TRUE(run_until_established(client, server));
  const SockTLSStats after = tls_stats();
  EXPECT_EQ(after.handshakes, before.handshakes + 2);
  EXPECT_EQ(after.resumed, before.resumed);
  EXPECT_GT(after.handshake_us_sum, before.handshake_us_sum);

  const std::string text = metrics_text();
  const double full = series_value(text, "libsock_tls_handshakes_total{kind=\"full\"}");
  const double resumed = series_value(text, "libsock_tls_handshakes_total{kind=\"resumed\"}");
  EXPECT_EQ(full, static_cast<double>(after.handshakes - after.resumed));
  EXPECT_EQ(resumed, static_cast<double>(after.resumed));
  EXPECT_EQ(series_value(text, "libsock_tls_handshake_seconds_count"), full + resumed);
  EXPECT_EQ(series_value(text, "libsock_tls_handshake_seconds_bucket{le=\"+Inf\"}"),
            full + resumed);
  EXPECT_NEAR(series_value(text, "libsock_tls_handshake_seconds_sum"),
              static_cast<double>(after.handshake_us_sum) / 1e6, 1e-6);
  EXPECT_EQ(series_value(text, "libsock_tls_connections"), static_cast<double>(after.open));
  double previous = 0;
  for (std::size_t at = 0;
       (at = text.find("\nlibsock_tls_handshake_seconds_bucket{", at)) != std::string::npos; ++at) {
    const double v = std::stod(text.substr(text.find("} ", at) + 2));
    EXPECT_GE(v, previous) << text;
    previous = v;
  }
  sock_close(&r_, client);
  ASSERT_TRUE(testing_support::run_until(
      &r_, [&] { return conns_[client].closed && conns_[server].closed; }));
  EXPECT_EQ(tls_stats().open, before.open);
}

// A handshake that completes in OpenSSL but whose last flight cannot be queued (here a TLS 1.3
// server's session ticket, past the reactor's memory budget) failed the handshake: one
// handshake failure, no completed handshake and no record failure.
TEST_F(StatsFixture, AHandshakeThatCannotQueueItsLastFlightIsOneHandshakeFailure) {
  TlsClientConfig config(test_pki().ca, "", TLS1_3_VERSION);
  TlsClient peer(config, listener_.port, "localhost");
  ASSERT_TRUE(peer.pump());  // the ClientHello; the client is pumped again only below
  ASSERT_TRUE(run_until(&r_, [&] {
    pollfd p = {peer.fd(), POLLIN, 0};
    return poll(&p, 1, 0) == 1;  // the server's first flight came
  }));
  ASSERT_FALSE(peer.established()) << peer.error();
  ASSERT_EQ(accepted_.size(), 1u);
  const int server = accepted_[0];
  ASSERT_EQ(sock_tls_established(server), 0);
  // One held write takes the one packet the budget allows: nothing else can be queued.
  ASSERT_EQ(sock_write(server, "x", 1), 0);
  ReactorLimits limits{};
  limits.memory_budget = sizeof(Packet);
  ASSERT_EQ(reactor_set_limits(&r_, &limits), 0);
  const SockTLSStats before = tls_stats();
  ASSERT_TRUE(run_until(&r_, [&] {
    peer.pump();
    return conns_[server].closed;
  }));
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_ERROR);
  EXPECT_EQ(failures_since(before), "1 0 0 0 0") << conns_[server].tls_error;
  EXPECT_EQ(tls_stats().handshakes, before.handshakes) << "the server counted its handshake";
}

// A peer's close_notify before the handshake completed (here a TLS 1.2 client's, after the
// server's first flight) is the peer leaving, as its EOF would be: the connection ends as
// closed by the peer and counts as closed mid-handshake, not as a protocol failure.
TEST_F(StatsFixture, CloseNotifyDuringTheHandshakeCountsAsClosed) {
  TlsClientConfig config(test_pki().ca, "", TLS1_2_VERSION);
  TlsClient peer(config, listener_.port, "localhost");
  ASSERT_TRUE(peer.pump());  // the ClientHello; the client is not pumped again
  ASSERT_TRUE(run_until(&r_, [&] {
    pollfd p = {peer.fd(), POLLIN, 0};
    return poll(&p, 1, 0) == 1;  // the server's first flight came
  }));
  ASSERT_EQ(accepted_.size(), 1u);
  const int server = accepted_[0];
  const SockTLSStats before = tls_stats();
  // A plaintext alert record (no keys yet in TLS 1.2): warning (1), close_notify (0).
  testing_support::write_all(peer.fd(), std::string("\x15\x03\x03\x00\x02\x01\x00", 7));
  ASSERT_TRUE(run_until(&r_, [&] { return conns_[server].closed; }));
  EXPECT_EQ(conns_[server].reason, SOCK_CLOSE_PEER) << conns_[server].tls_error;
  EXPECT_EQ(failures_since(before), "0 0 0 1 0") << conns_[server].tls_error;
  EXPECT_EQ(tls_stats().handshakes, before.handshakes);
  EXPECT_TRUE(log_.empty()) << log_.front();
}

}  // namespace
