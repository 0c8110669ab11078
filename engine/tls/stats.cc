#include "engine/tls/stats.h"

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "alloc/cache_line.h"

namespace tls {
namespace {

// Handshake-time buckets (upper bounds in microseconds) of libsock_tls_handshake_seconds:
// from a loopback handshake's cost to a far client's round trips. One more bucket counts
// the handshakes slower than the last bound (the text's +Inf is the sum of all).
constexpr uint64_t kBucketUs[] = {250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 1000000};
constexpr std::size_t kBuckets = sizeof kBucketUs / sizeof kBucketUs[0];
constexpr std::size_t kOverflowBucket = kBuckets;

// A counter with one writer at a time (its block's thread, or the registry mutex's holder):
// a relaxed load and store, plain moves without a locked instruction, and any thread reads a
// whole value. As alloc::OwnerCounter, which //alloc:block_pool's visibility keeps from
// engine/tls. Unsigned arithmetic wraps, so a block's share of `open` may go below zero and
// the sum is still exact.
class Counter {
 public:
  void add(uint64_t n) {
    value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  uint64_t get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// One thread's counts, on cache lines of its own. A reader sums them while their threads
// count, one counter after another, so it may see a handshake in one counter and not yet in
// the next: every figure shown is therefore a counter of its own or a sum of counters read
// together (never a difference, which a count between two reads could take below an
// earlier scrape's), so each grows from one scrape to the next.
struct alignas(alloc::kCacheLineBytes) Block {
  Counter full, resumed, handshake_us, records_failed;  // handshakes: full + resumed
  Counter open;  // +1 per start, -1 per clear: two's complement in a Counter
  Counter failures[SOCK_TLS_FAIL_REASONS];
  Counter buckets[kBuckets + 1];  // not cumulative (the text sums them); then the overflow
};
static_assert(alignof(Block) == alloc::kCacheLineBytes &&
                  sizeof(Block) % alloc::kCacheLineBytes == 0,
              "a thread's block shares no cache line with another's");

// The blocks summed (each value relaxed, read under the registry's mutex): not one instant's
// snapshot while threads count (see Block).
struct Totals {
  uint64_t full = 0, resumed = 0, handshake_us = 0, records_failed = 0, open = 0;
  uint64_t failures[SOCK_TLS_FAIL_REASONS] = {};
  uint64_t buckets[kBuckets + 1] = {};

  void add(const Block& b) {
    full += b.full.get();
    resumed += b.resumed.get();
    handshake_us += b.handshake_us.get();
    records_failed += b.records_failed.get();
    open += b.open.get();
    for (int i = 0; i < SOCK_TLS_FAIL_REASONS; ++i) failures[i] += b.failures[i].get();
    for (std::size_t i = 0; i <= kBuckets; ++i) buckets[i] += b.buckets[i].get();
  }
};

// The live threads' blocks and what exited threads counted.
class Registry {
 public:
  // A block for the calling thread, listed; nullptr without memory.
  Block* enlist() {
    auto* b = new (std::nothrow) Block;
    if (!b) return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    live_.push_back(b);
    return b;
  }
  // The exiting thread's block, folded into the retired counts and freed.
  void retire(Block* b) {
    std::lock_guard<std::mutex> lock(mutex_);
    fold(*b);
    for (Block*& slot : live_) {
      if (slot == b) {
        slot = live_.back();
        live_.pop_back();
        break;
      }
    }
    delete b;
  }
  // Counts into the retired block: a thread without a block of its own (none after its
  // exit began, or no memory for one).
  template <typename Count>
  void count_retired(Count count) {
    std::lock_guard<std::mutex> lock(mutex_);
    count(retired_);
  }
  Totals sum() {
    std::lock_guard<std::mutex> lock(mutex_);
    Totals t;
    t.add(retired_);
    for (const Block* b : live_) t.add(*b);
    return t;
  }

 private:
  // The mutex holder is retired_'s one writer.
  void fold(const Block& b) {
    retired_.full.add(b.full.get());
    retired_.resumed.add(b.resumed.get());
    retired_.handshake_us.add(b.handshake_us.get());
    retired_.records_failed.add(b.records_failed.get());
    retired_.open.add(b.open.get());
    for (int i = 0; i < SOCK_TLS_FAIL_REASONS; ++i) retired_.failures[i].add(b.failures[i].get());
    for (std::size_t i = 0; i <= kBuckets; ++i) retired_.buckets[i].add(b.buckets[i].get());
  }

  std::mutex mutex_;
  std::vector<Block*> live_;
  Block retired_;
};

// Never destroyed: threads that exit after static destructors ran still fold into it.
Registry& registry() {
  static auto* r = new Registry;
  return *r;
}

// The calling thread's block (trivially destructible: counting is one thread-local load and
// plain stores), and whether the thread's exit has retired it.
thread_local Block* t_block = nullptr;
thread_local bool t_retired = false;

struct Retirer {
  ~Retirer() {
    if (t_block) registry().retire(t_block);
    t_block = nullptr;
    t_retired = true;
  }
};

// The thread's first count: lists its block and registers the fold at its exit. nullptr after
// that exit began (a connection cleared by a thread-local destructor) or without memory.
Block* first_block() {
  if (t_retired) return nullptr;
  thread_local Retirer retirer;  // constructed once per thread; destroyed at its exit
  t_block = registry().enlist();
  return t_block;
}

template <typename Count>
void count(Count c) {
  Block* b = t_block;
  if (!b) b = first_block();
  if (b) {
    c(*b);
  } else {
    registry().count_retired(c);
  }
}

constexpr const char* kFailureLabels[SOCK_TLS_FAIL_REASONS] = {"protocol", "certificate",
                                                               "timeout", "closed"};

}  // namespace

void count_open(int delta) {
  count([delta](Block& b) { b.open.add(static_cast<uint64_t>(static_cast<int64_t>(delta))); });
}

void count_handshake(bool resumed, uint64_t micros) {
  std::size_t i = 0;
  while (i < kOverflowBucket && micros > kBucketUs[i]) ++i;
  count([&](Block& b) {
    (resumed ? b.resumed : b.full).add(1);
    b.handshake_us.add(micros);
    b.buckets[i].add(1);
  });
}

void count_failure(SockTLSFailure reason) {
  count([reason](Block& b) { b.failures[reason].add(1); });
}

void count_record_failure() {
  count([](Block& b) { b.records_failed.add(1); });
}

namespace {

SockTLSStats stats_of(const Totals& t) {
  SockTLSStats stats{};
  stats.handshakes = t.full + t.resumed;
  stats.resumed = t.resumed;
  for (int i = 0; i < SOCK_TLS_FAIL_REASONS; ++i) stats.failures[i] = t.failures[i];
  stats.handshake_us_sum = t.handshake_us;
  stats.records_failed = t.records_failed;
  // Below zero only in a snapshot that saw a close but not its open (another thread's block).
  const auto open = static_cast<int64_t>(t.open);
  stats.open = open > 0 ? static_cast<uint64_t>(open) : 0;
  return stats;
}

}  // namespace
}  // namespace tls

extern "C" {

int sock_tls_stats(struct SockTLSStats* stats) {
  if (!stats) {
    errno = EINVAL;
    return -1;
  }
  *stats = tls::stats_of(tls::registry().sum());
  return 0;
}

ssize_t sock_tls_metrics(char* buf, size_t size) {
  if (!buf && size) {
    errno = EINVAL;
    return -1;
  }
  // One sum of the blocks, not one instant's snapshot (stats.cc's Block): the histogram's
  // +Inf bucket and count are its buckets' sum as read, so they agree with every bucket
  // shown; kind="full" and kind="resumed" are counters of their own.
  const tls::Totals totals = tls::registry().sum();
  const SockTLSStats s = tls::stats_of(totals);
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
  add("libsock_tls_handshakes_total{kind=\"full\"} %" PRIu64 "\n", totals.full);
  add("libsock_tls_handshakes_total{kind=\"resumed\"} %" PRIu64 "\n", totals.resumed);
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
    cumulative += totals.buckets[i];
    add("libsock_tls_handshake_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
        static_cast<double>(tls::kBucketUs[i]) / 1e6, cumulative);
  }
  cumulative += totals.buckets[tls::kOverflowBucket];
  add("libsock_tls_handshake_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", cumulative);
  add("libsock_tls_handshake_seconds_sum %.6f\n", static_cast<double>(s.handshake_us_sum) / 1e6);
  add("libsock_tls_handshake_seconds_count %" PRIu64 "\n", cumulative);
  add("# HELP libsock_tls_record_failures_total Established TLS connections failed on a "
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
