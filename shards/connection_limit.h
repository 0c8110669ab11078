// File: shards/connection_limit.h
// SockServerSettings.max_connections: how the limit is split and how the acceptor waits at it.
// A shard that accepts on its own listener (SO_REUSEPORT, or a lone shard) keeps to a share of
// the limit with no shared state: it counts its own connections. With the acceptor thread, the
// acceptor sums what the shards publish on their load cards (shard.h) before each accept
// batch, detaches its listener at the limit (AcceptPause::hold) and waits for a shard to
// publish a close: LimitWaiter below is the only state shared for that, and the wakeup goes
// through the acceptor reactor's own eventfd (Reactor::wake, the door its inbox rings too).
#ifndef SHARDS_CONNECTION_LIMIT_H_
#define SHARDS_CONNECTION_LIMIT_H_

#include <atomic>
#include <cstdint>

#include "alloc/cache_line.h"
#include "engine/reactor.h"

namespace shards {

// Shard `index`'s part of `max` connections when `shards` shards accept on their own
// listeners: max / shards, one more for the first max % shards, so that the parts add up to
// max; but at least 1, since the kernel keeps handing connections to every listener and one
// held for good would leave its backlog unserved (with fewer connections than shards the
// server then holds one per shard). 0 for max 0: no limit. Any thread.
constexpr uint64_t connection_share(uint64_t max, uint64_t shards, uint64_t index) {
  if (max == 0) return 0;
  const uint64_t share = max / shards + (index < max % shards ? 1 : 0);
  return share ? share : 1;
}

// The acceptor held at the limit, and the shards that may end the wait. A Dekker handshake,
// so that no close is missed and a close costs the shards no wakeup while the acceptor is
// not waiting: the acceptor stores `waiting_` = true, then loads each shard's `held` figure
// (Shard::held); a shard stores a lower `held`, then loads `waiting_`; all four seq_cst
// (not fences, which GCC's ThreadSanitizer refuses). Of the two stores one comes first in
// the single seq_cst order, so either the acceptor reads the new figure or the shard reads
// the flag and wakes it.
// Ownership: the server's, outliving the shards and the acceptor; the acceptor's reactor lives
// until the acceptor is destroyed, after every shard joined (a shard may wake it during its
// stop's drain, after the acceptor's own stop).
class alignas(alloc::kCacheLineBytes) LimitWaiter {
 public:
  // Controlling thread, before any shard starts (the thread start publishes it).
  void set_acceptor(engine::Reactor* acceptor) { acceptor_ = acceptor; }
  // Acceptor thread, with its listener just held: read the shards' `held` after this.
  void wait() { waiting_.store(true, std::memory_order_seq_cst); }
  // Acceptor thread, releasing its listener. Relaxed: a shard that still reads true costs
  // the acceptor one spurious wakeup.
  void stop_waiting() { waiting_.store(false, std::memory_order_relaxed); }
  // Shard thread, after storing a lower `held` (a close, or a handed-over fd that failed to
  // open): one load of a line that only the acceptor's hold and release write; a wakeup
  // only while it waits.
  void closed_some() const {
    if (waiting_.load(std::memory_order_seq_cst)) acceptor_->wake();
  }

 private:
  std::atomic<bool> waiting_{false};
  engine::Reactor* acceptor_ = nullptr;
};
static_assert(sizeof(LimitWaiter) == alloc::kCacheLineBytes, "the waiter is one cache line");

}  // namespace shards

#endif  // SHARDS_CONNECTION_LIMIT_H_
