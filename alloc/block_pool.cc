#include "alloc/block_pool.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cassert>
#include <cerrno>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>
#include <utility>

#if defined(__SANITIZE_ADDRESS__)
#define ALLOC_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ALLOC_ASAN 1
#endif
#endif
#if defined(ALLOC_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/lsan_interface.h>
#endif

namespace alloc {
namespace internal {

// What a give_back on a thread other than the owner's touches: the owner's id and the stack of
// blocks given back. Allocated apart from the pool, and leaked with the chunks when a pool is
// destroyed with blocks still out: a give_back that races the destruction (its block still out,
// so its chunk leaked) pushes into live memory that no one drains, not into a freed pool. It is
// freed with the pool only when no block is out, and so no give_back can be in flight.
struct alignas(kCacheLineBytes) RemoteReturns {
  explicit RemoteReturns(Sharing s) : sharing(s), owner(std::this_thread::get_id()) {}
  const Sharing sharing;
  std::atomic<std::thread::id> owner;  // no thread's (id()) once the pool is gone
  // Blocks given back by non-owner threads, linked through each block's first 8 bytes. Pushers
  // CAS the head with release ordering, so the link they wrote (and any writes of theirs into
  // the block) are visible to the owner, which takes the whole stack with exchange(nullptr,
  // acquire). The owner never pops a single node, so there is no ABA: a pusher's CAS only ever
  // races with other pushes or with the exchange, and either way it retries against the current
  // head. On its own cache line: pushers hammer it, and the owner check above should not bounce.
  alignas(kCacheLineBytes) std::atomic<void*> head{nullptr};
};

// The chunk header. Everything but `returns` and `pool` belongs to the owner thread (kLocked: to
// mutex_). `returns` is written when the chunk is made. `pool` is written then and when a
// destroyed pool leaks the chunk; only the owner thread and kLocked give_backs read it, which
// the destructor's contract orders before or after that second write.
struct alignas(kCacheLineBytes) Chunk {
  RemoteReturns* returns;
  BlockPool* pool;  // nullptr once the pool is gone and the chunk is leaked
  // The owner's line: written per block checked out or returned, so a thread giving a block
  // back (which reads `returns`) does not find its line taken away by the owner's writes.
  alignas(kCacheLineBytes) uint64_t free_mask;  // bit i set: block i is free
  Chunk* prev;         // BlockPool::available_ list; both nullptr when not on it
  Chunk* next;
  Chunk* all_prev;  // BlockPool::all_chunks_ list
  Chunk* all_next;
};

// Written once when the chunk is made, then only read (by any thread), so no synchronisation
// beyond the hand-off of the block itself is needed to read it.
struct BlockTag {
  Chunk* chunk;
  uint32_t index;
  uint32_t check;  // kTagCheck ^ index: catches pointers that are not blocks, and underruns
};

}  // namespace internal

namespace {

using internal::BlockTag;
using internal::Chunk;
using internal::RemoteReturns;

static_assert(sizeof(Chunk) == kChunkHeaderBytes, "header must fill exactly what the geometry reserves");
static_assert(sizeof(BlockTag) == kBlockTagBytes, "tag must fill exactly what the geometry reserves");
static_assert(std::atomic<std::thread::id>::is_always_lock_free, "owner check must be a plain load");

static_assert(offsetof(Chunk, free_mask) == kCacheLineBytes, "the pointers have their line alone");

// Chunks are aligned for their header, which then sits on whole cache lines.
constexpr size_t kChunkAlignBytes = alignof(Chunk);
// A remotely returned block carries the stack link in its first bytes.
constexpr size_t kLinkBytes = sizeof(void*);
constexpr uint32_t kTagCheck = 0xB10C'7A65;

std::atomic<uint64_t> g_leaked_chunks{0};

[[noreturn]] void die(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::fputs("alloc::BlockPool: ", stderr);
  std::vfprintf(stderr, format, args);
  std::fputc('\n', stderr);
  va_end(args);
  std::abort();
}

BlockTag* tag_of(void* block) { return reinterpret_cast<BlockTag*>(static_cast<char*>(block) - kBlockTagBytes); }

// Under ASan, free blocks are poisoned so that a use after give_back is reported at the faulting
// access. Elsewhere these compile to nothing.
void poison(void* p, size_t n) {
#if defined(ALLOC_ASAN)
  ASAN_POISON_MEMORY_REGION(p, n);
#else
  (void)p;
  (void)n;
#endif
}

void unpoison(void* p, size_t n) {
#if defined(ALLOC_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
  (void)p;
  (void)n;
#endif
}

// Runs first in the constructor's initialiser list, so nothing is derived from bad arguments.
size_t checked_block_bytes(size_t block_bytes, size_t chunk_bytes, size_t blocks_per_chunk) {
  if (block_bytes == 0 || blocks_per_chunk == 0 || blocks_per_chunk > kMaxBlocksPerChunk ||
      kChunkHeaderBytes + blocks_per_chunk * stride_bytes(block_bytes) > chunk_bytes) {
    die("%zu blocks of %zu bytes do not fit a %zu-byte chunk (at most %zu blocks, %zu-byte header, %zu-byte tags)",
        blocks_per_chunk, block_bytes, chunk_bytes, kMaxBlocksPerChunk, kChunkHeaderBytes, kBlockTagBytes);
  }
  return block_bytes;
}

JemallocArena make_arena() {
  std::optional<JemallocArena> arena = JemallocArena::create();
  if (!arena) die("cannot create a jemalloc arena: %s", std::strerror(errno));
  return std::move(*arena);
}

RemoteReturns* make_remote_returns(Sharing sharing) {
  auto* returns = new (std::nothrow) RemoteReturns(sharing);
  if (returns == nullptr) die("cannot allocate a pool's remote returns: out of memory");
  return returns;
}

}  // namespace

BlockPool::BlockPool(size_t block_bytes, size_t chunk_bytes, size_t blocks_per_chunk, Sharing sharing)
    : block_bytes_(checked_block_bytes(block_bytes, chunk_bytes, blocks_per_chunk)),
      stride_(stride_bytes(block_bytes)),
      chunk_bytes_(chunk_bytes),
      chunk_usable_bytes_(JemallocArena::usable_size(chunk_bytes, kChunkAlignBytes)),
      blocks_per_chunk_(blocks_per_chunk),
      full_mask_(blocks_per_chunk == 64 ? ~uint64_t{0} : (uint64_t{1} << blocks_per_chunk) - 1),
      sharing_(sharing),
      arena_(make_arena()),
      owner_(std::this_thread::get_id()),
      remote_(make_remote_returns(sharing)) {}

BlockPool::~BlockPool() {
  assert((sharing_ == Sharing::kLocked || is_owner_thread()) && "BlockPool destroyed off the owner thread");
  drain_remote_blocks();
  if (spare_ != nullptr) free_chunk(std::exchange(spare_, nullptr));
  // Every empty chunk has now been freed, so whatever is left has blocks out.
  uint64_t leaked = 0;
  for (Chunk* chunk = all_chunks_; chunk != nullptr; chunk = chunk->all_next) {
    chunk->pool = nullptr;
    ++leaked;
  }
  // No thread is the owner now: a later give_back on this thread pushes too (RemoteReturns).
  remote_->owner.store(std::thread::id(), std::memory_order_relaxed);
  if (leaked == 0) {
    delete remote_;  // no block out: no give_back in flight
    // Only now is destroying the arena safe: it frees whatever is still in it.
    if (!arena_.destroy()) std::fprintf(stderr, "alloc::BlockPool: arena not destroyed: %s\n", std::strerror(errno));
    return;
  }
  g_leaked_chunks.fetch_add(leaked, std::memory_order_relaxed);
#if defined(ALLOC_ASAN)
  // Leaked on purpose, with the chunks: only they point at it, from jemalloc's memory, which
  // LeakSanitizer does not scan.
  __lsan_ignore_object(remote_);
#endif
  std::fprintf(stderr,
               "alloc::BlockPool: destroyed with %llu blocks checked out; leaking %llu chunks (%llu bytes) and "
               "arena %u so that those blocks stay valid\n",
               static_cast<unsigned long long>(outstanding_.get()), static_cast<unsigned long long>(leaked),
               static_cast<unsigned long long>(leaked * chunk_usable_bytes_), arena_.index());
}

void* BlockPool::checkout() {
  if (sharing_ == Sharing::kLocked) {
    std::lock_guard<std::mutex> lock(mutex_);
    return take_block();
  }
  assert(is_owner_thread() && "BlockPool::checkout off the owner thread");
  // Out of local free blocks: take back what other threads returned before using the spare or
  // jemalloc. The relaxed peek is the one atomic on this path (a plain load on x86 and ARM); the
  // exchange behind it runs only when there is something to drain.
  if (available_ == nullptr) drain_remote_blocks();
  if (limit_ != 0 && outstanding_.get() >= limit_) {
    drain_remote_blocks();  // blocks given back elsewhere still count until drained
    if (outstanding_.get() >= limit_) {
      refusals_.add(1);
      errno = ENOBUFS;
      return nullptr;
    }
  }
  return take_block();
}

void BlockPool::give_back(void* block) {
  if (block == nullptr) return;
  const BlockTag* tag = tag_of(block);
  if (tag->index >= kMaxBlocksPerChunk || tag->check != (kTagCheck ^ tag->index)) {
    die("give_back(%p): not a block from a BlockPool, or the bytes before it were overwritten", block);
  }
  Chunk* chunk = tag->chunk;
  RemoteReturns& returns = *chunk->returns;
  if (returns.sharing == Sharing::kLocked) {
    BlockPool* pool = chunk->pool;
    if (pool == nullptr) return;  // Its pool is gone and the chunk leaked; the block stays with it.
    std::lock_guard<std::mutex> lock(pool->mutex_);
    pool->put_block(chunk, tag->index);
  } else if (returns.owner.load(std::memory_order_relaxed) == std::this_thread::get_id()) {
    chunk->pool->put_block(chunk, tag->index);  // alive: its destructor ends the ownership
  } else {
    push_remote(returns, block);
  }
}

void BlockPool::drain_remote() {
  if (sharing_ == Sharing::kLocked) return;
  assert(is_owner_thread() && "BlockPool::drain_remote off the owner thread");
  drain_remote_blocks();
}

void BlockPool::trim() {
  if (sharing_ == Sharing::kOwnerThread) {  // a kLocked pool has no remote returns to drain
    assert(is_owner_thread() && "BlockPool::trim off the owner thread");
    drain_remote_blocks();
  }
  arena_.purge();  // jemalloc locks the arena itself
}

void BlockPool::bind_owner_thread() {
  owner_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  remote_->owner.store(std::this_thread::get_id(), std::memory_order_relaxed);
}

void BlockPool::release_owner_thread() {
  owner_.store(std::thread::id(), std::memory_order_relaxed);
  remote_->owner.store(std::thread::id(), std::memory_order_relaxed);
}

bool BlockPool::is_owner_thread() const {
  // Relaxed is enough: the owner changes only under a happens-before edge the caller provides.
  return owner_.load(std::memory_order_relaxed) == std::this_thread::get_id();
}

PoolCounters BlockPool::counters() const {
  std::unique_lock<std::mutex> lock(mutex_, std::defer_lock);
  if (sharing_ == Sharing::kLocked) lock.lock();
  PoolCounters c;
  c.checkouts = checkouts_.get();
  c.returns = returns_.get();
  c.remote_returns = remote_returns_.get();
  c.hits = hits_.get();
  c.misses = misses_.get();
  c.chunks_freed = chunks_freed_.get();
  c.refusals = refusals_.get();
  c.alloc_failures = alloc_failures_.get();
  c.outstanding = outstanding_.get();
  c.high_water = high_water_.get();
  c.chunks = chunks_.get();
  c.chunk_bytes = c.chunks * chunk_usable_bytes_;
  return c;
}

size_t BlockPool::bytes_per_block(size_t chunk_bytes, size_t blocks_per_chunk) {
  assert(blocks_per_chunk != 0);
  const size_t usable = JemallocArena::usable_size(chunk_bytes, kChunkAlignBytes);
  return (usable + blocks_per_chunk - 1) / blocks_per_chunk;
}

uint64_t BlockPool::leaked_chunks_total() { return g_leaked_chunks.load(std::memory_order_relaxed); }

// --- Owner side (kLocked: under mutex_) ---------------------------------------------------------

void* BlockPool::take_block() {
  Chunk* chunk = available_;
  bool miss = false;
  if (chunk == nullptr) {
    if (spare_ != nullptr) {
      chunk = std::exchange(spare_, nullptr);
    } else {
      chunk = new_chunk();
      if (chunk == nullptr) {
        alloc_failures_.add(1);
        return nullptr;  // errno == ENOMEM, set by the arena
      }
      miss = true;
    }
    push_available(chunk);
  }
  (miss ? misses_ : hits_).add(1);

  const unsigned index = static_cast<unsigned>(std::countr_zero(chunk->free_mask));
  chunk->free_mask &= chunk->free_mask - 1;  // clears the lowest set bit, i.e. `index`
  if (chunk->free_mask == 0) unlink_available(chunk);

  checkouts_.add(1);
  outstanding_.add(1);
  if (outstanding_.get() > high_water_.get()) high_water_.set(outstanding_.get());

  void* block = block_at(chunk, index);
  // At least kLinkBytes, so that a remote give_back may write its link even into a tiny block.
  unpoison(block, std::max(block_bytes_, kLinkBytes));
  return block;
}

void BlockPool::put_block(Chunk* chunk, unsigned index) {
  const uint64_t bit = uint64_t{1} << index;
  if ((chunk->free_mask & bit) != 0) die("block %p given back twice", block_at(chunk, index));
  const bool was_full = chunk->free_mask == 0;
  chunk->free_mask |= bit;
  poison(block_at(chunk, index), stride_ - kBlockTagBytes);

  returns_.add(1);
  outstanding_.sub(1);

  if (chunk->free_mask == full_mask_) {
    if (!was_full) unlink_available(chunk);
    retire_empty(chunk);
  } else if (was_full) {
    push_available(chunk);
  }
}

// Hysteresis: keep one empty chunk so that a pool hovering around a chunk boundary does not call
// jemalloc on every checkout and return; free any further one so that idle memory goes back and the
// pool never holds more than its peak of outstanding blocks rounded up to chunks, plus one chunk.
void BlockPool::retire_empty(Chunk* chunk) {
  if (spare_ == nullptr) {
    spare_ = chunk;
  } else {
    free_chunk(chunk);
  }
}

void BlockPool::push_remote(RemoteReturns& returns, void* block) {
  // Release: the link written here, and whatever the giving thread wrote into the block before,
  // happen-before the owner's acquire exchange in drain_remote_blocks() and its reuse of the block.
  // The successful CAS is the last touch of `returns`: once the owner has drained the block, it
  // may free them (~BlockPool).
  void* head = returns.head.load(std::memory_order_relaxed);
  do {
    std::memcpy(block, &head, kLinkBytes);
  } while (!returns.head.compare_exchange_weak(head, block, std::memory_order_release,
                                               std::memory_order_relaxed));
}

void BlockPool::drain_remote_blocks() {
  if (remote_->head.load(std::memory_order_relaxed) == nullptr) return;
  // Acquire pairs with the pushers' release. Taking the whole stack at once is what rules out ABA.
  void* block = remote_->head.exchange(nullptr, std::memory_order_acquire);
  uint64_t drained = 0;
  while (block != nullptr) {
    ++drained;
    void* next;
    std::memcpy(&next, block, kLinkBytes);  // before put_block poisons the block
    const BlockTag* tag = tag_of(block);
    put_block(tag->chunk, tag->index);
    block = next;
  }
  remote_returns_.add(drained);
}

// Not in Debian 12's headers; Linux 5.14 and later (older kernels say EINVAL, ignored).
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

BlockPool::Chunk* BlockPool::new_chunk() {
  void* memory = arena_.allocate(chunk_bytes_, kChunkAlignBytes);
  if (memory == nullptr) return nullptr;
  // All of the chunk's pages resident now, in one call: else blocks fault their pages in one
  // by one as writes first reach them, and under a varied load the process's RSS creeps up
  // for minutes while the pool holds no more memory than before (bench/soak.sh measured
  // +2%/min). The pool's memory is then what its chunk counters say. Best effort, on the
  // whole pages inside the chunk (jemalloc's large allocations are page-aligned anyway).
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(memory) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(memory) + chunk_bytes_) & ~(page - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
  Chunk* chunk =
      new (memory) Chunk{remote_, this, full_mask_, nullptr, nullptr, nullptr, all_chunks_};
  if (all_chunks_ != nullptr) all_chunks_->all_prev = chunk;
  all_chunks_ = chunk;
  for (unsigned i = 0; i < blocks_per_chunk_; ++i) {
    void* block = block_at(chunk, i);
    new (tag_of(block)) BlockTag{chunk, i, kTagCheck ^ i};
    poison(block, stride_ - kBlockTagBytes);
  }
  chunks_.add(1);
  return chunk;
}

void BlockPool::free_chunk(Chunk* chunk) {
  if (chunk->all_prev != nullptr) {
    chunk->all_prev->all_next = chunk->all_next;
  } else {
    all_chunks_ = chunk->all_next;
  }
  if (chunk->all_next != nullptr) chunk->all_next->all_prev = chunk->all_prev;
  // jemalloc may hand this memory to the next chunk, whose header and tags must be writable.
  unpoison(chunk, chunk_bytes_);
  arena_.deallocate(chunk, chunk_bytes_, kChunkAlignBytes);
  chunks_.sub(1);
  chunks_freed_.add(1);
}

void BlockPool::push_available(Chunk* chunk) {
  chunk->prev = nullptr;
  chunk->next = available_;
  if (available_ != nullptr) available_->prev = chunk;
  available_ = chunk;
}

void BlockPool::unlink_available(Chunk* chunk) {
  if (chunk->prev != nullptr) {
    chunk->prev->next = chunk->next;
  } else {
    available_ = chunk->next;
  }
  if (chunk->next != nullptr) chunk->next->prev = chunk->prev;
  chunk->prev = nullptr;
  chunk->next = nullptr;
}

void* BlockPool::block_at(Chunk* chunk, unsigned index) const {
  return reinterpret_cast<char*>(chunk) + kChunkHeaderBytes + index * stride_ + kBlockTagBytes;
}

}  // namespace alloc
