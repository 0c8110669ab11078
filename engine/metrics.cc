#include "engine/metrics.h"

#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "engine/profile.h"
#include "engine/reactor.h"

namespace engine {
namespace {

struct Shard {
  ReactorStats stats;
  alloc::JemallocArena::Stats arena;
  const LoopCounters* loop = nullptr;  // nullptr for a null reactor
  const Profile* profile = nullptr;
};

// The always-on families, one series per shard.
struct Family {
  const char* name;
  const char* type;
  const char* help;
  uint64_t (*value)(const Shard&);
};

#define STAT(expr) [](const Shard& s) -> uint64_t { return expr; }
constexpr Family kFamilies[] = {
    {"libsock_pool_checkouts_total", "counter", "Packets checked out of the shard's pool.",
     STAT(s.stats.pool.checkouts)},
    {"libsock_pool_returns_total", "counter", "Packets returned to the shard's pool.",
     STAT(s.stats.pool.returns)},
    {"libsock_pool_remote_returns_total", "counter",
     "Packets returned to the shard's pool by other threads.", STAT(s.stats.pool.remote_returns)},
    {"libsock_pool_hits_total", "counter", "Checkouts served from memory the pool held.",
     STAT(s.stats.pool.hits)},
    {"libsock_pool_misses_total", "counter", "Checkouts that took a new chunk from jemalloc.",
     STAT(s.stats.pool.misses)},
    {"libsock_pool_chunks_freed_total", "counter", "Chunks the pool gave back to jemalloc.",
     STAT(s.stats.pool.chunks_freed)},
    {"libsock_pool_refusals_total", "counter",
     "Checkouts refused with ENOBUFS by the shard's memory budget.", STAT(s.stats.pool.refusals)},
    {"libsock_pool_alloc_failures_total", "counter",
     "Checkouts refused with ENOMEM (jemalloc had no memory).", STAT(s.stats.pool.alloc_failures)},
    {"libsock_pool_outstanding_packets", "gauge", "Packets checked out now.",
     STAT(s.stats.pool.outstanding)},
    {"libsock_pool_high_water_packets", "gauge", "Most packets checked out at once.",
     STAT(s.stats.pool.high_water)},
    {"libsock_pool_chunks", "gauge", "Chunks the pool holds, its spare included.",
     STAT(s.stats.pool.chunks)},
    {"libsock_pool_chunk_bytes", "gauge", "Bytes of the chunks the pool holds.",
     STAT(s.stats.pool.chunk_bytes)},
    {"libsock_pool_packet_bytes", "gauge", "Bytes one packet really costs (chunk / packets).",
     STAT(s.stats.packet_bytes)},
    {"libsock_queued_bytes", "gauge", "Bytes queued on the shard's connections.",
     STAT(s.stats.queued_bytes)},
    {"libsock_connections", "gauge",
     "Fds attached to the shard: its connections (and a shard's own listener and accept-pause "
     "timer in SOCK_ACCEPT_REUSEPORT mode).",
     STAT(s.stats.connections)},
    {"libsock_writes_direct_total", "counter",
     "Writes that tried the kernel at once (what it did not take queued).",
     STAT(s.stats.writes_direct)},
    {"libsock_writes_queued_total", "counter", "Writes that queued all or part of their bytes.",
     STAT(s.stats.writes_queued)},
    {"libsock_writev_calls_total", "counter",
     "sendmsg calls of the flush step (those that found the socket full included).",
     STAT(s.stats.writev_calls)},
    {"libsock_writev_packets_total", "counter",
     "Packets gathered by those sendmsg calls (a packet sent in parts counts each time).",
     STAT(s.stats.writev_packets)},
    {"libsock_sendfile_calls_total", "counter",
     "sendfile calls (those that found the socket full included).", STAT(s.stats.sendfile_calls)},
    {"libsock_trims_total", "counter",
     "Times the shard dropped closed connections' timers and gave freed memory back.",
     STAT(s.stats.trims)},
    {"libsock_jemalloc_active_bytes", "gauge", "Pages of live allocations in the pool's arena.",
     STAT(s.arena.active)},
    {"libsock_jemalloc_dirty_bytes", "gauge",
     "Freed pages the pool's arena keeps resident for reuse.", STAT(s.arena.dirty)},
    {"libsock_jemalloc_muzzy_bytes", "gauge",
     "Pages the pool's arena gave back lazily (MADV_FREE).", STAT(s.arena.muzzy)},
    {"libsock_jemalloc_resident_bytes", "gauge", "Resident bytes of the pool's arena.",
     STAT(s.arena.resident)},
    {"libsock_jemalloc_mapped_bytes", "gauge", "Mapped bytes of the pool's arena.",
     STAT(s.arena.mapped)},
    {"libsock_jemalloc_retained_bytes", "gauge",
     "Address space the pool's arena keeps unmapped for reuse.", STAT(s.arena.retained)},
};
#undef STAT

// The loop's always-on figures (LoopCounters, reactor.h): microseconds, exported as seconds.
constexpr const char* kLoopHistogram = "libsock_loop_iteration_seconds";
constexpr const char* kLoopHistogramHelp =
    "Time each loop iteration worked, from the wait's return to its end (callbacks, posted "
    "calls, flushes, timers; the wait excluded). Every connection of the shard waited that long.";
constexpr const char* kLoopLongest = "libsock_loop_iteration_longest_seconds";
constexpr const char* kLoopLongestHelp = "The longest loop iteration of the shard so far.";

// The opt-in histograms (profile.h), and whether each records microseconds (exported as
// seconds) or plain counts (bytes, packets).
constexpr const char* kHistogramNames[] = {
    "libsock_packet_lifetime_seconds", "libsock_queue_time_seconds", "libsock_write_size_bytes",
    "libsock_flush_packets", "libsock_connection_peak_queued_bytes"};
constexpr const char* kHistogramHelp[] = {
    "Packet lifetime, checkout to return (on the shard's loop clock).",
    "Time a connection's write queue stayed non-empty, first byte queued to all sent.",
    "Bytes per sock_write call accepted (a file's: the bytes it sends).",
    "Packets gathered per sendmsg call of the flush step.",
    "A connection's largest queued bytes, observed at its close."};
constexpr bool kHistogramMicros[] = {true, true, false, false, false};
constexpr int kHistograms = 5;

// Calls fn(histogram) with the histogram `which` of p (the types differ in their octaves).
template <typename Fn>
void with_histogram(const Profile& p, int which, Fn&& fn) {
  switch (which) {
    case 0: return fn(p.packet_lifetime_us);
    case 1: return fn(p.queue_time_us);
    case 2: return fn(p.write_size_bytes);
    case 3: return fn(p.flush_packets);
    default: return fn(p.peak_queued_bytes);
  }
}

class Writer {
 public:
  explicit Writer(std::string* out) : out_(out) {}
  void text(const char* s) { out_->append(s); }
  void u64(uint64_t v) { printf("%" PRIu64, v); }
  // A histogram value, exactly: microseconds as decimal seconds ("0.000003"), counts as
  // integers (a double would round bounds and sums past 2^53, and %g far sooner).
  void value(uint64_t v, bool micros) {
    if (micros) {
      printf("%" PRIu64 ".%06" PRIu64, v / 1000000, v % 1000000);
    } else {
      u64(v);
    }
  }
  template <typename... Args>
  void printf(const char* format, Args... args) {
    char buf[256];
    const int n = std::snprintf(buf, sizeof buf, format, args...);
    if (n < 0) return;
    if (static_cast<std::size_t>(n) < sizeof buf) {
      out_->append(buf, static_cast<std::size_t>(n));
      return;
    }
    const std::size_t at = out_->size();  // longer than buf: format again, in place
    out_->resize(at + static_cast<std::size_t>(n) + 1);
    std::snprintf(out_->data() + at, static_cast<std::size_t>(n) + 1, format, args...);
    out_->resize(at + static_cast<std::size_t>(n));
  }

 private:
  std::string* out_;
};

// One shard's series of a histogram family: cumulative buckets, +Inf, sum and count.
template <typename H>
void write_histogram(Writer& w, const char* name, std::size_t shard, const H& hist,
                     bool micros) {
  uint64_t cumulative = 0;
  for (std::size_t b = 0; b < H::kBuckets; ++b) {
    cumulative += hist.count(b);
    w.printf("%s_bucket{shard=\"%zu\",le=\"", name, shard);
    w.value(log_linear_bound(b), micros);
    w.text("\"} ");
    w.u64(cumulative);
    w.text("\n");
  }
  cumulative += hist.count(H::kBuckets);
  w.printf("%s_bucket{shard=\"%zu\",le=\"+Inf\"} ", name, shard);
  w.u64(cumulative);
  w.printf("\n%s_sum{shard=\"%zu\"} ", name, shard);
  w.value(hist.sum(), micros);
  w.printf("\n%s_count{shard=\"%zu\"} ", name, shard);
  w.u64(cumulative);
  w.text("\n");
}

// A histogram as JSON: {"buckets":[[upper bound, count], ...],"sum":S,"count":N}, its
// non-empty buckets only, the one above the last bound as null.
template <typename H>
void write_json_histogram(Writer& w, const H& hist, bool micros) {
  w.text("{\"buckets\":[");
  uint64_t count = 0;
  bool first = true;
  for (std::size_t b = 0; b <= H::kBuckets; ++b) {
    const uint64_t c = hist.count(b);
    count += c;
    if (!c) continue;
    w.text(first ? "[" : ",[");
    first = false;
    if (b == H::kBuckets) {
      w.text("null");
    } else {
      w.value(log_linear_bound(b), micros);
    }
    w.text(",");
    w.u64(c);
    w.text("]");
  }
  w.text("],\"sum\":");
  w.value(hist.sum(), micros);
  w.text(",\"count\":");
  w.u64(count);
  w.text("}");
}

bool wanted(const char* name, const char* prefix) {
  return !prefix || std::strncmp(name, prefix, std::strlen(prefix)) == 0;
}

void write_prometheus(const std::vector<Shard>& shards, const char* prefix, Writer& w) {
  for (const Family& f : kFamilies) {
    if (!wanted(f.name, prefix)) continue;
    w.printf("# HELP %s %s\n# TYPE %s %s\n", f.name, f.help, f.name, f.type);
    for (std::size_t i = 0; i < shards.size(); ++i) {
      w.printf("%s{shard=\"%zu\"} ", f.name, i);
      w.u64(f.value(shards[i]));
      w.text("\n");
    }
  }
  if (wanted("libsock_profiling", prefix)) {
    w.printf("# HELP libsock_profiling Whether the profiler's histograms are recording (1) or "
             "not (0).\n# TYPE libsock_profiling gauge\nlibsock_profiling %d\n",
             profiling_on() ? 1 : 0);
  }
  if (wanted("libsock_process_resident_bytes", prefix)) {
    w.text("# HELP libsock_process_resident_bytes The process's resident set (VmRSS).\n"
           "# TYPE libsock_process_resident_bytes gauge\nlibsock_process_resident_bytes ");
    w.u64(process_resident_bytes());
    w.text("\n");
  }
  if (wanted(kLoopHistogram, prefix)) {
    w.printf("# HELP %s %s\n# TYPE %s histogram\n", kLoopHistogram, kLoopHistogramHelp,
             kLoopHistogram);
    for (std::size_t i = 0; i < shards.size(); ++i) {
      if (shards[i].loop) write_histogram(w, kLoopHistogram, i, shards[i].loop->busy_us, true);
    }
  }
  if (wanted(kLoopLongest, prefix)) {
    w.printf("# HELP %s %s\n# TYPE %s gauge\n", kLoopLongest, kLoopLongestHelp, kLoopLongest);
    for (std::size_t i = 0; i < shards.size(); ++i) {
      w.printf("%s{shard=\"%zu\"} ", kLoopLongest, i);
      w.value(shards[i].stats.loop_longest_busy_us, true);
      w.text("\n");
    }
  }
  if (!profiling_on()) return;
  for (int h = 0; h < kHistograms; ++h) {
    const char* name = kHistogramNames[h];
    if (!wanted(name, prefix)) continue;
    w.printf("# HELP %s %s\n# TYPE %s histogram\n", name, kHistogramHelp[h], name);
    for (std::size_t i = 0; i < shards.size(); ++i) {
      if (!shards[i].profile) continue;
      with_histogram(*shards[i].profile, h, [&](const auto& hist) {
        write_histogram(w, name, i, hist, kHistogramMicros[h]);
      });
    }
  }
}

void write_json(const std::vector<Shard>& shards, Writer& w) {
  w.printf("{\"profiling\":%s,\"process_resident_bytes\":", profiling_on() ? "true" : "false");
  w.u64(process_resident_bytes());
  w.text(",\"shards\":[");
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const Shard& s = shards[i];
    w.printf("%s{\"shard\":%zu", i ? "," : "", i);
    for (const Family& f : kFamilies) {
      w.printf(",\"%s\":", f.name + std::strlen("libsock_"));
      w.u64(f.value(s));
    }
    w.printf(",\"%s\":", kLoopLongest + std::strlen("libsock_"));
    w.value(s.stats.loop_longest_busy_us, true);
    if (s.loop) {
      w.printf(",\"%s\":", kLoopHistogram + std::strlen("libsock_"));
      write_json_histogram(w, s.loop->busy_us, true);
    }
    if (s.profile && profiling_on()) {  // as in the Prometheus text
      TopConnection top[kTopConnections];
      const std::size_t n = s.profile->top(top, kTopConnections);
      w.text(",\"top_connections\":[");
      for (std::size_t t = 0; t < n; ++t) {
        w.printf("%s{\"uuid\":%" PRIdPTR ",\"queued_bytes\":", t ? "," : "", top[t].uuid);
        w.u64(top[t].queued_bytes);
        w.text(",\"packets\":");
        w.u64(top[t].packets);
        w.text(",\"age_ms\":");
        w.u64(top[t].age_ms);
        w.text("}");
      }
      w.text("],\"histograms\":{");
      for (int h = 0; h < kHistograms; ++h) {
        w.printf("%s\"%s\":", h ? "," : "", kHistogramNames[h] + std::strlen("libsock_"));
        with_histogram(*s.profile, h, [&](const auto& hist) {
          write_json_histogram(w, hist, kHistogramMicros[h]);
        });
      }
      w.text("}");
    }
    w.text("}");
  }
  w.text("]}\n");
}

}  // namespace

ReactorStats reactor_stats(const Reactor* r) {
  ReactorStats s;
  if (!r) return s;
  const alloc::BlockPool& pool = r->pool();
  s.pool = pool.counters();
  s.packet_bytes = alloc::BlockPool::bytes_per_block(pool.chunk_bytes(), pool.blocks_per_chunk());
  s.queued_bytes = r->queued_total();
  s.connections = r->attached();
  const WriteCounters& w = r->write_counters();
  s.writes_direct = w.direct.get();
  s.writes_queued = w.queued.get();
  s.writev_calls = w.writev_calls.get();
  s.writev_packets = w.writev_packets.get();
  s.sendfile_calls = w.sendfile_calls.get();
  s.trims = r->trims();
  const LoopCounters& loop = r->loop_counters();
  s.loop_iterations = loop.busy_us.total();
  s.loop_busy_us = loop.busy_us.sum();
  s.loop_longest_busy_us = loop.longest_busy_us.get();
  return s;
}

bool write_metrics(const Reactor* const* reactors, std::size_t count, MetricsFormat format,
                   const char* prefix, std::string* out) {
  try {
    std::vector<Shard> shards(count);
    alloc::JemallocArena::refresh_stats();
    for (std::size_t i = 0; i < count; ++i) {
      const Reactor* r = reactors[i];
      shards[i].stats = reactor_stats(r);
      if (!r) continue;
      r->pool().arena().stats(&shards[i].arena);  // zeros without jemalloc statistics
      shards[i].loop = &r->loop_counters();
      shards[i].profile = r->profile_snapshot();
    }
    Writer w(out);
    if (format == MetricsFormat::kJson) {
      write_json(shards, w);
    } else {
      write_prometheus(shards, prefix && *prefix ? prefix : nullptr, w);
    }
    return true;
  } catch (const std::bad_alloc&) {
    errno = ENOMEM;
    return false;
  }
}

uint64_t process_resident_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "re");
  if (!f) return 0;
  unsigned long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) : 0;
}

}  // namespace engine
