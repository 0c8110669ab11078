// File: engine/tls/testing_hooks.h
// What engine/tls counts for its tests only: figures no API reports, which a test needs to
// tell linear work from quadratic. Defined in layer.cc; visible to tests/engine/tls only.
// Threads: each count is the calling thread's (thread_local), read on that thread.
#ifndef ENGINE_TLS_TESTING_HOOKS_H_
#define ENGINE_TLS_TESTING_HOOKS_H_

#include <cstdint>

namespace tls {

// Bytes of received TLS 1.3 records this thread copied because a record was not whole yet
// (kept across reads): a record trickling in must cost work linear in its size.
uint64_t partial_record_bytes_copied();

}  // namespace tls

#endif  // ENGINE_TLS_TESTING_HOOKS_H_
