// File: engine/tls/stats.h
// The process-wide TLS counters behind sock_tls_stats() and sock_tls_metrics(): relaxed
// atomics, each written by the thread of the connection it counts, read by any thread.
#ifndef ENGINE_TLS_STATS_H_
#define ENGINE_TLS_STATS_H_

#include <cstdint>

#include "engine/tls/sock_tls.h"

namespace tls {

void count_open(int delta);
void count_handshake(bool resumed, uint64_t micros);
void count_failure(SockTLSFailure reason);
void count_record_failure();

}  // namespace tls

#endif  // ENGINE_TLS_STATS_H_
