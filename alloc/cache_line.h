// alloc::kCacheLineBytes: the one definition of the cache line size the layouts assume.
//
// Data written by one thread and read (or written) by another sits on a line of its own, so the
// writer does not steal the line from readers of its neighbours (false sharing): the inbox's
// handshake line, a pool's remote-free stack, an fd's slot, a shard's load card.
//
// Not std::hardware_destructive_interference_size: GCC warns (-Winterference-size) that its value
// may differ between compilers and tuning flags, which makes it unfit for a layout in a header
// shared by separately compiled code. 64 is the line on x86-64 and on the usual AArch64 cores;
// where the hardware line is larger the layouts stay correct, only less isolated.
// Threads, ownership, errors: none; a constant.
#ifndef ALLOC_CACHE_LINE_H_
#define ALLOC_CACHE_LINE_H_

#include <cstddef>

namespace alloc {

inline constexpr std::size_t kCacheLineBytes = 64;
static_assert((kCacheLineBytes & (kCacheLineBytes - 1)) == 0, "alignas needs a power of two");

}  // namespace alloc

#endif  // ALLOC_CACHE_LINE_H_
