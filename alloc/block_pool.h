// alloc::BlockPool: fixed-size blocks carved from large chunks of a private jemalloc arena.
//
// Why not one jemalloc allocation per block: jemalloc rounds a request up to its size class, and
// for packet-sized blocks the rounding is large (a 17440-byte packet takes a 20480-byte class, 17%
// waste). A chunk whose size is a power of two is an exact jemalloc class, and cutting it into
// equal blocks wastes only the tail that no whole block fits in, plus the chunk header.
//
// Chunk layout (one jemalloc allocation, `chunk_bytes` long):
//
//   +--------+-----+---------+-----+---------+-- ... --+-----+-----------+------+
//   | Chunk  | tag | block 0 | tag | block 1 |         | tag | block n-1 | tail |
//   | header |     |         |     |         |         |     |           |      |
//   +--------+-----+---------+-----+---------+-- ... --+-----+-----------+------+
//   |<- A -->|<--- stride -->|
//
//   A = kChunkHeaderBytes; stride = stride_bytes(block_bytes) = kBlockTagBytes + block_bytes rounded
//   up to kBlockAlignBytes; n = blocks_per_chunk; the tail is too short for another block.
//
// The header holds where blocks go back (the owning pool and its remote returns, on a line of
// their own, read by other threads) and, on the next line, a 64-bit free mask (bit i set = block i
// free) and the list links. Each block is preceded by a tag naming its chunk and index, which is
// how the static
// `give_back(block)` finds the owning pool without knowing any pool's geometry. (Aligning chunks to
// their size and masking the block address would need the chunk size, which differs between
// pools, and guessing it would read memory that may belong to someone else.)
//
// Threads (see `Sharing`):
//   kOwnerThread: one owner thread (the constructing thread, or the last `bind_owner_thread()`
//     caller) checks out, drains and destroys. Any thread may `give_back`: on the owner thread the
//     block goes straight back to its chunk; elsewhere it is pushed on a lock-free stack that the
//     owner drains. The owner's path takes no lock and executes no atomic read-modify-write.
//   kLocked: any thread may do anything; one mutex serialises it.
// Memory: at most one empty chunk is kept (the spare); a second one goes back to jemalloc at once.
//   So a pool holds its peak of outstanding blocks rounded up to chunks plus one chunk, and an idle
//   pool holds one chunk. The price: a load that swings from zero to just past a chunk boundary and
//   back allocates and frees one chunk per swing.
//   Methods say "Thread:" where they differ from that.
// Ownership: the pool owns its chunks. A checked-out block belongs to the caller until it is given
//   back. A block still out when the pool is destroyed keeps its chunk alive forever (leaked on
//   purpose, reported on stderr and in `leaked_chunks_total()`), so a late user never touches freed
//   memory; giving such a block back after the pool is gone only links it (its first 8 bytes)
//   into a stack that the pool leaked with the chunks and no one drains.
// Errors: `checkout` returns nullptr with errno == ENOMEM when jemalloc fails. Programming errors
//   (invalid geometry, a block given back twice, a pointer that is not a block) and failure to
//   create the arena (out of memory) abort with a message on stderr.
#ifndef ALLOC_BLOCK_POOL_H_
#define ALLOC_BLOCK_POOL_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "alloc/cache_line.h"
#include "alloc/jemalloc_arena.h"
#include "alloc/owner_counter.h"

namespace alloc {

// --- Geometry -----------------------------------------------------------------------------------

// Blocks are aligned for any object (max_align_t is 16 on x86-64 and AArch64) and for 16-byte SIMD.
inline constexpr size_t kBlockAlignBytes = 16;
static_assert(kBlockAlignBytes >= alignof(std::max_align_t));
// The free mask is one uint64_t, so a chunk holds at most 64 blocks.
inline constexpr size_t kMaxBlocksPerChunk = 64;
// The smallest chunk that holds 64 blocks of 1 KiB; blocks much smaller than that cannot fill a
// chunk under the 64-block mask anyway, so smaller chunks would only add headers.
inline constexpr size_t kMinChunkBytes = 64 * 1024;
// An idle pool may keep one whole chunk as a spare; 4 MiB bounds that per pool.
inline constexpr size_t kMaxChunkBytes = 4 * 1024 * 1024;
// The chunk header fills two cache lines: where blocks go back (the pool and its remote returns,
// which every give_back reads) alone on the first, the owner's free mask and list links on the
// second (written per block), and block 0 starts on a line of its own.
inline constexpr size_t kChunkHeaderBytes = 2 * kCacheLineBytes;
// The tag before each block: chunk pointer plus index and check word, padded to keep blocks aligned.
inline constexpr size_t kBlockTagBytes = 16;
// Memory per block may exceed the block size by at most this much (the packet-memory requirement).
inline constexpr size_t kWasteBudgetPercent = 5;

static_assert((kMinChunkBytes & (kMinChunkBytes - 1)) == 0 && (kMaxChunkBytes & (kMaxChunkBytes - 1)) == 0,
              "chunk sizes are powers of two: those are exact jemalloc size classes");
static_assert(kChunkHeaderBytes % kCacheLineBytes == 0, "block 0's tag starts a line of its own");
static_assert(kChunkHeaderBytes % kBlockAlignBytes == 0 && kBlockTagBytes % kBlockAlignBytes == 0,
              "header and tag sizes keep every block aligned");

constexpr size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// Distance from one block to the next: its tag plus the block, rounded up to the block alignment.
constexpr size_t stride_bytes(size_t block_bytes) { return round_up(kBlockTagBytes + block_bytes, kBlockAlignBytes); }

// How `block_bytes`-sized blocks are laid out in chunks. blocks_per_chunk == 0 means no chunk up to
// kMaxChunkBytes holds even one block.
struct Geometry {
  size_t block_bytes = 0;
  size_t chunk_bytes = 0;
  size_t blocks_per_chunk = 0;
  // chunk_bytes / blocks_per_chunk, rounded up: the memory each block really costs.
  size_t bytes_per_block = 0;

  constexpr bool within_waste_budget() const {
    return blocks_per_chunk != 0 && bytes_per_block * 100 <= block_bytes * (100 + kWasteBudgetPercent);
  }
};

// The power-of-two chunk size in [kMinChunkBytes, kMaxChunkBytes] with the least memory per block,
// header and tags included; ties go to the smaller chunk (less memory idles in a spare or partly
// used chunk). Usable at compile time (ChunkGeometry) and at run time (tests sweep every size).
constexpr Geometry chunk_geometry(size_t block_bytes) {
  Geometry best;
  best.block_bytes = block_bytes;
  const size_t stride = stride_bytes(block_bytes);
  for (size_t chunk = kMinChunkBytes; chunk <= kMaxChunkBytes; chunk *= 2) {
    size_t blocks = (chunk - kChunkHeaderBytes) / stride;
    if (blocks > kMaxBlocksPerChunk) blocks = kMaxBlocksPerChunk;
    if (blocks == 0) continue;
    const size_t per_block = (chunk + blocks - 1) / blocks;
    if (best.blocks_per_chunk == 0 || per_block < best.bytes_per_block) {
      best.chunk_bytes = chunk;
      best.blocks_per_chunk = blocks;
      best.bytes_per_block = per_block;
    }
  }
  return best;
}

// Compile-time geometry for one block size. The waste budget is not asserted here, because it cannot
// hold for every size: below about 1 KiB the 64-bit mask leaves most of a 64 KiB chunk empty, and
// above about 195 KiB fewer than 20 blocks fit in 4 MiB, so the tail costs more than 5%.
// BlockPool::create<N>() asserts it for the sizes it is used with.
template <size_t kBlockBytes>
struct ChunkGeometry {
  static constexpr Geometry kGeometry = chunk_geometry(kBlockBytes);
  static constexpr size_t kStrideBytes = stride_bytes(kBlockBytes);
  static constexpr size_t kChunkBytes = kGeometry.chunk_bytes;
  static constexpr size_t kBlocksPerChunk = kGeometry.blocks_per_chunk;
  static constexpr size_t kBytesPerBlock = kGeometry.bytes_per_block;
  static constexpr bool kWithinWasteBudget = kGeometry.within_waste_budget();

  static_assert(kBlockBytes > 0, "a block holds at least one byte");
  static_assert(kBlocksPerChunk >= 1, "block does not fit in the largest chunk");
  static_assert(kBlocksPerChunk <= kMaxBlocksPerChunk, "free mask is one uint64_t");
  static_assert(kChunkHeaderBytes + kBlocksPerChunk * kStrideBytes <= kChunkBytes, "blocks overflow the chunk");
  static_assert(kBytesPerBlock * kBlocksPerChunk >= kChunkBytes, "bytes_per_block rounds up");
};

// --- Pool ---------------------------------------------------------------------------------------

struct PoolCounters {
  uint64_t checkouts = 0;       // successful checkout() calls
  uint64_t returns = 0;         // blocks back in their chunk (a remote give_back counts once drained)
  uint64_t remote_returns = 0;  // of those, given back by other threads and drained (kOwnerThread)
  uint64_t hits = 0;            // checkouts served without asking jemalloc
  uint64_t misses = 0;          // checkouts that allocated a chunk
  uint64_t chunks_freed = 0;    // chunks given back to jemalloc
  uint64_t refusals = 0;        // checkouts refused with ENOBUFS (the set_limit() cap)
  uint64_t alloc_failures = 0;  // checkouts refused with ENOMEM (jemalloc had no memory)
  uint64_t outstanding = 0;     // checkouts - returns, exactly, on the owner thread
  uint64_t high_water = 0;      // largest `outstanding` seen
  uint64_t chunks = 0;          // chunks held now, the spare included
  uint64_t chunk_bytes = 0;     // chunks * usable size of one chunk (jemalloc's size class)
};

enum class Sharing {
  kOwnerThread,  // one owner thread; other threads only give blocks back (lock-free)
  kLocked,       // any thread, behind one mutex
};

namespace internal {
struct Chunk;
struct RemoteReturns;
}  // namespace internal

class BlockPool {
 public:
  // A pool of `block_bytes`-byte blocks, `blocks_per_chunk` to a chunk of `chunk_bytes`. Aborts if
  // the blocks do not fit (kChunkHeaderBytes + blocks_per_chunk * stride_bytes(block_bytes) must
  // not exceed chunk_bytes, and blocks_per_chunk must be in [1, kMaxBlocksPerChunk]) or if jemalloc
  // cannot create an arena. Prefer create<N>(), which derives the geometry. The calling thread
  // becomes the owner.
  BlockPool(size_t block_bytes, size_t chunk_bytes, size_t blocks_per_chunk, Sharing sharing);

  // A pool for blocks of kBlockBytes with the geometry ChunkGeometry derives; fails to compile if
  // that geometry exceeds the waste budget. Never nullptr (failures abort, as in the constructor).
  template <size_t kBlockBytes>
  static std::unique_ptr<BlockPool> create(Sharing sharing) {
    using G = ChunkGeometry<kBlockBytes>;
    static_assert(G::kWithinWasteBudget, "memory per block exceeds kWasteBudgetPercent for this block size");
    return std::make_unique<BlockPool>(kBlockBytes, G::kChunkBytes, G::kBlocksPerChunk, sharing);
  }

  // Frees every chunk whose blocks are all back, and destroys the arena if that was all of them.
  // Chunks with blocks still out are leaked on purpose (see the top of the file).
  // Thread: owner (kLocked: any), with no other call on this pool running or to come, except
  // give_back: kOwnerThread, from any thread, before, during or after this (a block still out
  // then stays with its leaked chunk); kLocked, only ordered before or after this.
  ~BlockPool();

  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // A block of block_bytes() bytes, aligned to kBlockAlignBytes, contents undefined; nullptr with
  // errno == ENOMEM when jemalloc has no memory. Thread: owner (kLocked: any).
  void* checkout();

  // Returns `block` (from checkout() of any pool) to its pool; nullptr is ignored. Thread: any.
  // Giving a block back twice aborts when the second return reaches the owner (once the pool
  // is gone, none does).
  static void give_back(void* block);

  // Moves blocks given back by other threads into their chunks, so they can be reused and empty
  // chunks released. checkout() does this by itself when it runs out of free blocks; an owner that
  // idles should call it now and then. Thread: owner. kLocked: nothing to do.
  void drain_remote();

  // For an owner going idle: drains remote give-backs (freeing the chunks they empty, the
  // spare aside) and returns the arena's unused pages to the kernel (JemallocArena::purge).
  // Thread: owner (kLocked: any).
  void trim();

  // Makes the calling thread the owner. The previous owner's last use of the pool must
  // happen-before this (e.g. build on one thread, then start the thread that drives the pool).
  // Blocks pushed remotely meanwhile stay queued for the new owner.
  void bind_owner_thread();
  // Makes no thread the owner until the next bind_owner_thread(): for an owner thread about to
  // end, whose id the system may give to a new thread, which would pass is_owner_thread() and
  // give blocks back unsynchronised. Thread: owner.
  void release_owner_thread();
  // Thread: any.
  bool is_owner_thread() const;

  // Thread: any. Exact on the owner thread (kLocked: always exact); a relaxed snapshot elsewhere.
  PoolCounters counters() const;
  // counters().chunks_freed alone, without the lock: for an owner polling it. Thread: any.
  uint64_t counters_chunks_freed() const { return chunks_freed_.get(); }

  // Caps the blocks out at once (0: no cap, the default): beyond it checkout() returns nullptr
  // with errno ENOBUFS, which bounds a shard's memory whatever its connections do.
  // Thread: owner (kOwnerThread pools only).
  void set_limit(uint64_t max_outstanding) { limit_ = max_outstanding; }
  // Whether `blocks` more checkouts fit under the cap (always without one). Conservative:
  // blocks given back by other threads count until a checkout drains them. Thread: owner.
  bool has_room(uint64_t blocks) const { return limit_ == 0 || outstanding_.get() + blocks <= limit_; }

  // What jemalloc reserves per block for this geometry: nallocx(chunk_bytes) / blocks_per_chunk,
  // rounded up. (jemalloc also reserves one padding page per chunk that nallocx does not report;
  // JemallocArena::active_bytes() counts it.) Thread: any.
  static size_t bytes_per_block(size_t chunk_bytes, size_t blocks_per_chunk);

  // Chunks leaked by destroyed pools, process-wide. Thread: any.
  static uint64_t leaked_chunks_total();

  size_t block_bytes() const { return block_bytes_; }
  size_t chunk_bytes() const { return chunk_bytes_; }
  size_t blocks_per_chunk() const { return blocks_per_chunk_; }
  Sharing sharing() const { return sharing_; }
  // The pool's private arena, for its statistics. Thread: any.
  const JemallocArena& arena() const { return arena_; }

 private:
  using Chunk = internal::Chunk;
  using RemoteReturns = internal::RemoteReturns;

  void* take_block();
  void put_block(Chunk* chunk, unsigned index);
  static void push_remote(RemoteReturns& returns, void* block);
  void drain_remote_blocks();
  Chunk* new_chunk();
  void free_chunk(Chunk* chunk);
  void retire_empty(Chunk* chunk);
  void push_available(Chunk* chunk);
  void unlink_available(Chunk* chunk);
  void* block_at(Chunk* chunk, unsigned index) const;

  // Geometry, fixed at construction and read by any thread.
  const size_t block_bytes_;
  const size_t stride_;
  const size_t chunk_bytes_;
  const size_t chunk_usable_bytes_;  // nallocx(chunk_bytes_)
  const size_t blocks_per_chunk_;
  const uint64_t full_mask_;  // free_mask of a chunk whose blocks are all free
  const Sharing sharing_;

  JemallocArena arena_;
  // The owner's id, for is_owner_thread() (routing asks per cross-thread call): one load from
  // the pool. remote_ keeps the copy give_back reads, which outlives the pool.
  std::atomic<std::thread::id> owner_;
  // The owner's id and the blocks other threads gave back (block_pool.cc): every chunk points
  // at them, and a pool destroyed with blocks out leaks them with its chunks.
  RemoteReturns* const remote_;
  // Taken by every call in kLocked mode; unused in kOwnerThread mode.
  mutable std::mutex mutex_;

  // Owner state (kLocked: guarded by mutex_). From a new cache line: the fields above are read
  // by any thread (counters(), the geometry), and the owner writes these per packet.
  alignas(kCacheLineBytes) Chunk* available_ = nullptr;  // chunks with some but not all blocks free; front is used first
  Chunk* spare_ = nullptr;      // at most one chunk with every block free (hysteresis)
  Chunk* all_chunks_ = nullptr;  // every chunk, for destruction

  // Written only by the owner (kLocked: under mutex_), read by counters() on any thread.
  OwnerCounter checkouts_, returns_, remote_returns_, hits_, misses_, chunks_freed_, refusals_,
      alloc_failures_, outstanding_, high_water_, chunks_;
  uint64_t limit_ = 0;  // owner thread
};

}  // namespace alloc

#endif  // ALLOC_BLOCK_POOL_H_
