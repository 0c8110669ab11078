// File: engine/profile.h
// The packet pool profiler's opt-in half: histograms and the top connections by queued
// memory, per reactor, switched on and off at run time for the whole process
// (sock_profile(), or LIBSOCK_PROFILE=1 in the environment at start). The always-on counters
// are the pool's (alloc::PoolCounters) and the reactor's (EngineCounters, reactor.h); what
// reads them all is metrics.h.
//
// Cost: off, every hook is one relaxed load of the switch and a branch. On, a reactor makes
// its Profile on first need (kept until the reactor is destroyed, so readers never race with
// a free). Its hooks take the time the loop read at the start of the iteration (for the
// callbacks), and read CLOCK_MONOTONIC once more per iteration at most (for the flush step,
// only when a hook needs the time; a stop's on_shutdown calls read it afresh too), stamping packets with that cached time: no clock read per
// packet (a connection's open and the once-a-second top list read it once each).
// Threads: set_profiling/profiling_on any thread. A Profile is written by its reactor's owner
// thread only; the histograms and top() are readable from any thread (relaxed snapshots, and
// a mutex around the top list, taken once a second by the owner).
// Memory: the histograms (~2.6 KiB), and a side table of 24 bytes per fd number up to the
// highest this reactor has served while profiling (up to twice that while it grows).
#ifndef ENGINE_PROFILE_H_
#define ENGINE_PROFILE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "alloc/cache_line.h"
#include "engine/histogram.h"

namespace engine {

class Reactor;

namespace internal {
// Read by every reactor per request, written only when profiling is switched: one cache line
// of their own, so no neighbouring global written by some other thread can take it away from
// the readers (in .bss the linker may put anything beside them).
struct alignas(alloc::kCacheLineBytes) ProfilingSwitch {
  std::atomic<bool> on{false};
  std::atomic<uint32_t> epoch{0};
};
static_assert(sizeof(ProfilingSwitch) == alloc::kCacheLineBytes);
extern ProfilingSwitch g_profiling;
}  // namespace internal

// The process-wide switch. Relaxed: a hook that sees the old value for a moment records one
// observation more or less, nothing else depends on it.
inline bool profiling_on() { return internal::g_profiling.on.load(std::memory_order_relaxed); }
// Counts the times profiling was switched on: a Profile made in an earlier epoch forgets its
// per-connection state (connections opened, queued and closed while nobody recorded them).
inline uint32_t profiling_epoch() {
  return internal::g_profiling.epoch.load(std::memory_order_relaxed);
}
void set_profiling(bool on);

// How many connections top() lists, and how often the owner refreshes that list.
inline constexpr std::size_t kTopConnections = 10;
inline constexpr int kTopRefreshMs = 1000;
// The most packets counted in a listed connection's queue. Counting walks the queue, a cache
// miss a packet (1 GiB queued is 61,000 packets), once a second on the shard's thread: it
// stops here, at the most one flush's sendmsg gathers (IOV_MAX), so a queue that needs more
// than one flush to leave reads as this many.
inline constexpr uint64_t kTopPacketsCounted = 1024;

struct TopConnection {
  intptr_t uuid = -1;  // sock_fd2uuid's handle
  uint64_t queued_bytes = 0;
  uint64_t packets = 0;  // up to kTopPacketsCounted: that value means as many or more
  // Since the connection was opened, or since profiling first saw it (opened earlier).
  uint64_t age_ms = 0;
};

class Profile {
 public:
  explicit Profile(uint32_t epoch) : epoch_(epoch) {}
  uint32_t epoch() const { return epoch_; }
  // Profiling was switched off and on again: forget every connection (the histograms, which
  // are cumulative, stay).
  void restart(uint32_t epoch);

  // Microseconds: 1 us to 2^26 us (67 s); bytes: 1 B to 1 GiB (write sizes) and 64 GiB
  // (queues); packets: 1 to 1024 (IOV_MAX).
  using TimeHistogram = LogLinearHistogram<26>;
  using SizeHistogram = LogLinearHistogram<30>;
  using QueueHistogram = LogLinearHistogram<36>;
  using PacketHistogram = LogLinearHistogram<10>;

  TimeHistogram packet_lifetime_us;  // checkout -> return, packets returned on this reactor
  TimeHistogram queue_time_us;       // a connection's queue: first byte queued -> all sent
  SizeHistogram write_size_bytes;    // each sock_write accepted (write_path.cc)
  PacketHistogram flush_packets;     // packets per writev (one connection's flush)
  QueueHistogram peak_queued_bytes;  // per connection, at close

  // Owner thread. `now_us`/`now_ms`: the reactor's cached profile clock.
  void opened(int fd, int64_t now_ms);
  // After bytes were queued on fd: its peak, and when its queue started (was empty).
  void queued(int fd, uint64_t queued_bytes, int64_t now_us);
  // fd's queue is empty again.
  void drained(int fd, int64_t now_us);
  // fd leaves this reactor (closed or moved): its peak is observed.
  void closed(int fd);
  // Recomputes the top list from the connections `self` (this profile's reactor) holds.
  void refresh_top(const Reactor* self, int64_t now_ms);

  // Any thread: the last list, largest first; returns how many entries were filled.
  std::size_t top(TopConnection* out, std::size_t max) const;

 private:
  struct Conn {
    uint64_t peak = 0;
    int64_t queued_since_us = -1;  // -1: nothing queued
    int64_t opened_ms = -1;        // -1: not held (closed, or never seen)
  };
  Conn* conn(int fd);  // grows the table; nullptr on ENOMEM or fd < 0

  uint32_t epoch_;
  std::vector<Conn> conns_;
  mutable std::mutex top_mutex_;
  TopConnection top_[kTopConnections];
  std::size_t top_count_ = 0;
};

}  // namespace engine

#endif  // ENGINE_PROFILE_H_
