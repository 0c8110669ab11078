#include "engine/tls/stats.h"

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <string>

namespace tls {
namespace {

// Handshake-time buckets (upper bounds in microseconds) of libsock_tls_handshake_seconds:
// from a loopback handshake's cost to a far client's round trips.
constexpr uint64_t kBucketUs[] = {250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 1000000};
constexpr std::size_t kBuckets = sizeof kBucketUs / sizeof kBucketUs[0];

struct Counters {
  std::atomic<uint64_t> handshakes{0}, resumed{0}, handshake_us{0}, records_failed{0};
  std::atomic<int64_t> open{0};
  std::atomic<uint64_t> failures[SOCK_TLS_FAIL_REASONS] = {};
  std::atomic<uint64_t> buckets[kBuckets] = {};  // not cumulative; the text sums them
};

Counters& counters() {
  static Counters c;
  return c;
}

constexpr const char* kFailureLabels[SOCK_TLS_FAIL_REASONS] = {"protocol", "certificate",
                                                               "timeout", "closed"};

uint64_t get(const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); }

}  // namespace

void count_open(int delta) { counters().open.fetch_add(delta, std::memory_order_relaxed); }

void count_handshake(bool resumed, uint64_t micros) {
  Counters& c = counters();
  c.handshakes.fetch_add(1, std::memory_order_relaxed);
  if (resumed) c.resumed.fetch_add(1, std::memory_order_relaxed);
  c.handshake_us.fetch_add(micros, std::memory_order_relaxed);
  std::size_t i = 0;
  while (i < kBuckets && micros > kBucketUs[i]) ++i;
  if (i < kBuckets) c.buckets[i].fetch_add(1, std::memory_order_relaxed);
}

void count_failure(SockTLSFailure reason) {
  counters().failures[reason].fetch_add(1, std::memory_order_relaxed);
}

void count_record_failure() {
  counters().records_failed.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace tls

extern "C" {

int sock_tls_stats(struct SockTLSStats* stats) {
  if (!stats) {
    errno = EINVAL;
    return -1;
  }
  const tls::Counters& c = tls::counters();
  *stats = SockTLSStats{};
  stats->handshakes = tls::get(c.handshakes);
  stats->resumed = tls::get(c.resumed);
  for (int i = 0; i < SOCK_TLS_FAIL_REASONS; ++i) stats->failures[i] = tls::get(c.failures[i]);
  stats->handshake_us_sum = tls::get(c.handshake_us);
  stats->records_failed = tls::get(c.records_failed);
  const int64_t open = c.open.load(std::memory_order_relaxed);
  stats->open = open > 0 ? static_cast<uint64_t>(open) : 0;
  return 0;
}

ssize_t sock_tls_metrics(char* buf, size_t size) {
  if (!buf && size) {
    errno = EINVAL;
    return -1;
  }
  SockTLSStats s;
  sock_tls_stats(&s);
  std::string text;
  char line[256];
  auto add = [&](const char* fmt, auto... args) {
    if constexpr (sizeof...(args) == 0) {
      text += fmt;  // no conversions (clang's -Wformat-security refuses a format without them)
    } else {
      std::snprintf(line, sizeof line, fmt, args...);
      text += line;
    }
  };
  add("# HELP libsock_tls_handshakes_total TLS handshakes completed.\n"
      "# TYPE libsock_tls_handshakes_total counter\n");
  add("libsock_tls_handshakes_total{kind=\"full\"} %" PRIu64 "\n", s.handshakes - s.resumed);
  add("libsock_tls_handshakes_total{kind=\"resumed\"} %" PRIu64 "\n", s.resumed);
  add("# HELP libsock_tls_handshake_failures_total TLS handshakes that failed, by reason.\n"
      "# TYPE libsock_tls_handshake_failures_total counter\n");
  for (int i = 0; i < SOCK_TLS_FAIL_REASONS; ++i) {
    add("libsock_tls_handshake_failures_total{reason=\"%s\"} %" PRIu64 "\n",
        tls::kFailureLabels[i], s.failures[i]);
  }
  add("# HELP libsock_tls_handshake_seconds Time from a connection's TLS start to its "
      "completed handshake.\n# TYPE libsock_tls_handshake_seconds histogram\n");
  uint64_t cumulative = 0;
  for (std::size_t i = 0; i < tls::kBuckets; ++i) {
    cumulative += tls::get(tls::counters().buckets[i]);
    add("libsock_tls_handshake_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
        static_cast<double>(tls::kBucketUs[i]) / 1e6, cumulative);
  }
  add("libsock_tls_handshake_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", s.handshakes);
  add("libsock_tls_handshake_seconds_sum %.6f\n", static_cast<double>(s.handshake_us_sum) / 1e6);
  add("libsock_tls_handshake_seconds_count %" PRIu64 "\n", s.handshakes);
  add("# HELP libsock_tls_record_failures_total Established TLS connections failed by a bad "
      "record.\n# TYPE libsock_tls_record_failures_total counter\n");
  add("libsock_tls_record_failures_total %" PRIu64 "\n", s.records_failed);
  add("# HELP libsock_tls_connections Connections with the TLS layer now.\n"
      "# TYPE libsock_tls_connections gauge\n");
  add("libsock_tls_connections %" PRIu64 "\n", s.open);
  if (text.size() < size) {
    text.copy(buf, text.size());
    buf[text.size()] = '\0';
  }
  return static_cast<ssize_t>(text.size());
}

}  // extern "C"
