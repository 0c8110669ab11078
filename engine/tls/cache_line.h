// File: engine/tls/cache_line.h
// The cache line that engine/tls lays its shared structures out by (config.h's reference
// count, stats.cc's per-thread counter blocks). engine/tls builds on the public libsock API
// only and cannot see engine/ or alloc/ internals, so it keeps its own copy of the value: it
// must equal theirs (x86-64's 64 bytes). Not std::hardware_destructive_interference_size, for
// the reason engine/inbox.h gives: GCC warns that it may differ between compilers.
#ifndef ENGINE_TLS_CACHE_LINE_H_
#define ENGINE_TLS_CACHE_LINE_H_

#include <cstddef>

namespace tls {

inline constexpr std::size_t kCacheLineBytes = 64;

}  // namespace tls

#endif  // ENGINE_TLS_CACHE_LINE_H_
