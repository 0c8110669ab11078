// File: engine/metrics.h
// What the packet pool profiler exports: every reactor's counters (pool, write path,
// connections), its pool's jemalloc arena, and, while profiling, its histograms and top
// connections, as Prometheus text exposition (format 0.0.4) or JSON, a series per reactor
// labelled shard="i" (its position in the list). sock_stats, sock_metrics and
// sock_server_metrics (libsock.h, shards/server.h) are built on this.
//
// Names: the prefix libsock_, unit suffixes (_bytes, _seconds, _packets), _total on counters.
// Per shard, checkouts_total - returns_total == outstanding_packets holds in every snapshot
// taken on the owner thread; elsewhere the three are read one after another and may be a few
// packets apart under load.
// Threads: any; the reactors must outlive the call (a server's shards do until it stops).
// One call refreshes jemalloc's statistics once (mallctl "epoch"), whatever the shard count.
#ifndef ENGINE_METRICS_H_
#define ENGINE_METRICS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "alloc/block_pool.h"
#include "alloc/jemalloc_arena.h"

namespace engine {

class Reactor;
class Profile;

// One reactor's always-on figures (nullptr reactor: zeros).
struct ReactorStats {
  alloc::PoolCounters pool;
  uint64_t packet_bytes = 0;  // what one packet really costs (chunk size / packets per chunk)
  uint64_t queued_bytes = 0;
  uint64_t connections = 0;
  uint64_t writes_direct = 0;
  uint64_t writes_queued = 0;
  uint64_t writev_calls = 0;
  uint64_t writev_packets = 0;
  uint64_t sendfile_calls = 0;
  uint64_t trims = 0;
  uint64_t loop_iterations = 0;       // LoopCounters (reactor.h)
  uint64_t loop_busy_us = 0;          // their work in all
  uint64_t loop_longest_busy_us = 0;  // the longest one's
};
ReactorStats reactor_stats(const Reactor* reactor);

enum class MetricsFormat { kPrometheus, kJson };

// Appends the exposition of `reactors[0..count)` to *out. Prometheus: only the families whose
// name starts with `prefix` (nullptr or "": all). JSON: one object (the prefix is ignored).
// Returns false, with errno ENOMEM, if *out could not grow.
bool write_metrics(const Reactor* const* reactors, std::size_t count, MetricsFormat format,
                   const char* prefix, std::string* out);

// The process's resident set (VmRSS), from /proc/self/statm; 0 if it cannot be read.
uint64_t process_resident_bytes();

}  // namespace engine

#endif  // ENGINE_METRICS_H_
