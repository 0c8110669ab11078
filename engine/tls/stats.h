// File: engine/tls/stats.h
// The process-wide TLS counters behind sock_tls_stats() and sock_tls_metrics(). Each thread
// counts into a block of its own (its own cache lines, one writer, no locked instruction), so
// connections on different shards write no shared line. A registry mutex is taken at a
// thread's first count (to list its block), at its exit (to fold the block into the retired
// totals) and by each read, which sums the blocks.
// Threads: the count_ calls on any thread, for the connection it runs; the sums on any
// thread. Errors: none (a thread that cannot get a block counts under the mutex instead).
#ifndef ENGINE_TLS_STATS_H_
#define ENGINE_TLS_STATS_H_

#include <cstdint>

#include "engine/tls/sock_tls.h"

namespace tls {

// delta: +1 when a connection gets the layer, -1 when it is cleared (on whichever thread
// then owns it: a thread's share may be negative, the sum is exact).
void count_open(int delta);
void count_handshake(bool resumed, uint64_t micros);
void count_failure(SockTLSFailure reason);
void count_record_failure();

}  // namespace tls

#endif  // ENGINE_TLS_STATS_H_
