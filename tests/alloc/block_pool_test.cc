#include "alloc/block_pool.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "gtest/gtest.h"

namespace alloc {
namespace {

// The engine's default packet: two link words, a 17 KB payload (16 KiB of data plus 1 KiB of
// transport headroom) and 16 bytes of metadata.
constexpr size_t kPayloadBytes = 16 * 1024 + 1024;
constexpr size_t kPacketBytes = 8 + 8 + kPayloadBytes + 16;
static_assert(kPacketBytes == 17440);
// The requirement: memory per packet within 5% of the 17 KB payload.
constexpr size_t kPacketBudgetBytes = kPayloadBytes * (100 + kWasteBudgetPercent) / 100;

using PacketGeometry = ChunkGeometry<kPacketBytes>;

// --- Geometry -----------------------------------------------------------------------------------

static_assert(PacketGeometry::kBytesPerBlock <= kPacketBudgetBytes);
static_assert(PacketGeometry::kWithinWasteBudget);
static_assert(ChunkGeometry<4096>::kWithinWasteBudget);
static_assert(ChunkGeometry<65536 + 16>::kWithinWasteBudget);
static_assert(ChunkGeometry<65536 + 16>::kChunkBytes == kMaxChunkBytes);
// A 5-byte block still gets a geometry (64 to a minimum chunk), but not one within budget.
static_assert(ChunkGeometry<5>::kChunkBytes == kMinChunkBytes);
static_assert(ChunkGeometry<5>::kBlocksPerChunk == kMaxBlocksPerChunk);
static_assert(!ChunkGeometry<5>::kWithinWasteBudget);

TEST(ChunkGeometryTest, PacketCostsWithinFivePercentOf17KiBByNallocx) {
  const size_t per_block = BlockPool::bytes_per_block(PacketGeometry::kChunkBytes, PacketGeometry::kBlocksPerChunk);
  std::printf("packet %zu B: %zu per %zu-byte chunk, %zu B per block by nallocx (budget %zu)\n", kPacketBytes,
              PacketGeometry::kBlocksPerChunk, PacketGeometry::kChunkBytes, per_block, kPacketBudgetBytes);
  testing::Test::RecordProperty("packet_bytes_per_block_nallocx", std::to_string(per_block));
  EXPECT_EQ(per_block, PacketGeometry::kBytesPerBlock);
  EXPECT_LE(per_block, kPacketBudgetBytes);
}

TEST(ChunkGeometryTest, StaticGeometryMatchesRuntimeForSeveralSizes) {
  auto check = [](auto geometry_type) {
    using G = decltype(geometry_type);
    const Geometry g = chunk_geometry(G::kGeometry.block_bytes);
    EXPECT_EQ(g.chunk_bytes, G::kChunkBytes);
    EXPECT_EQ(g.blocks_per_chunk, G::kBlocksPerChunk);
    EXPECT_EQ(g.bytes_per_block, G::kBytesPerBlock);
    // The chunk is an exact jemalloc size class, so nallocx agrees with the compile-time number.
    EXPECT_EQ(BlockPool::bytes_per_block(G::kChunkBytes, G::kBlocksPerChunk), G::kBytesPerBlock);
  };
  check(ChunkGeometry<5>{});
  check(ChunkGeometry<4096>{});
  check(ChunkGeometry<kPacketBytes>{});
  check(ChunkGeometry<65536 + 16>{});
}

TEST(ChunkGeometryTest, EveryBlockSizeFrom1KiBTo192KiBMeetsTheWasteBudget) {
  for (size_t block = 1024; block <= 192 * 1024; ++block) {
    const Geometry g = chunk_geometry(block);
    ASSERT_TRUE(g.within_waste_budget()) << block << " bytes: " << g.bytes_per_block << " per block";
  }
}

TEST(ChunkGeometryTest, BlocksAlwaysFitTheChunkAndTheMask) {
  for (size_t block = 1; block <= 2 * 1024 * 1024; block += 7) {
    const Geometry g = chunk_geometry(block);
    ASSERT_GE(g.blocks_per_chunk, 1u) << block;
    ASSERT_LE(g.blocks_per_chunk, kMaxBlocksPerChunk) << block;
    ASSERT_LE(kChunkHeaderBytes + g.blocks_per_chunk * stride_bytes(block), g.chunk_bytes) << block;
  }
}

// --- Memory accounting --------------------------------------------------------------------------

// A new chunk's pages are resident at once, not faulted in one by one as blocks are first
// written (which made a server's RSS creep up for minutes under bench/soak.sh).
TEST(BlockPoolTest, ANewChunkIsResidentBeforeItsBlocksAreWritten) {
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  void* block = pool->checkout();
  ASSERT_NE(block, nullptr);
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  // The block's own pages, none written yet (the tag after the block is, by the pool).
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(block) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(block) + kPacketBytes) & ~(page - 1);
  ASSERT_GT(end, begin);
  std::vector<unsigned char> resident((end - begin) / page);
  ASSERT_EQ(mincore(reinterpret_cast<void*>(begin), end - begin, resident.data()), 0);
  for (std::size_t i = 0; i < resident.size(); ++i) EXPECT_TRUE(resident[i] & 1) << "page " << i;
  BlockPool::give_back(block);
}

TEST(BlockPoolTest, OneHundredFiftyPacketsCostWithinFivePercentByJemallocStats) {
  constexpr size_t kPackets = 150;
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  const size_t allocated_before = *pool->arena().allocated_bytes();
  const size_t active_before = *pool->arena().active_bytes();

  std::vector<void*> blocks;
  for (size_t i = 0; i < kPackets; ++i) blocks.push_back(pool->checkout());

  const size_t allocated_per = (*pool->arena().allocated_bytes() - allocated_before) / kPackets;
  const size_t active_per = (*pool->arena().active_bytes() - active_before) / kPackets;
  std::printf("%zu packets: %zu B each by stats.arenas.<i>.large.allocated, %zu B each by pactive (budget %zu)\n",
              kPackets, allocated_per, active_per, kPacketBudgetBytes);
  testing::Test::RecordProperty("packet_bytes_per_block_allocated", std::to_string(allocated_per));
  testing::Test::RecordProperty("packet_bytes_per_block_active", std::to_string(active_per));
  EXPECT_LE(allocated_per, kPacketBudgetBytes);
  EXPECT_LE(active_per, kPacketBudgetBytes);

  for (void* block : blocks) BlockPool::give_back(block);
}

TEST(BlockPoolTest, ReturningEverythingLeavesOnlyOneSpareChunkInJemalloc) {
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  const size_t before = *pool->arena().allocated_bytes();
  std::vector<void*> blocks;
  for (int i = 0; i < 150; ++i) blocks.push_back(pool->checkout());
  for (void* block : blocks) BlockPool::give_back(block);

  const PoolCounters c = pool->counters();
  EXPECT_EQ(c.chunks, 1u);
  EXPECT_EQ(*pool->arena().allocated_bytes() - before, c.chunk_bytes);
  EXPECT_EQ(c.chunk_bytes, PacketGeometry::kChunkBytes);
}

// --- Counters and hysteresis --------------------------------------------------------------------

TEST(BlockPoolTest, CountersTrackCheckoutsReturnsHitsAndMisses) {
  constexpr size_t kPerChunk = PacketGeometry::kBlocksPerChunk;
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  std::vector<void*> blocks;
  for (size_t i = 0; i < kPerChunk + 1; ++i) {
    blocks.push_back(pool->checkout());
    const PoolCounters c = pool->counters();
    ASSERT_EQ(c.outstanding, c.checkouts - c.returns);
  }
  PoolCounters c = pool->counters();
  EXPECT_EQ(c.checkouts, kPerChunk + 1);
  EXPECT_EQ(c.misses, 2u);  // the first block of each chunk
  EXPECT_EQ(c.hits, kPerChunk - 1);
  EXPECT_EQ(c.chunks, 2u);
  EXPECT_EQ(c.outstanding, kPerChunk + 1);

  BlockPool::give_back(blocks.back());
  blocks.pop_back();
  c = pool->counters();
  EXPECT_EQ(c.returns, 1u);
  EXPECT_EQ(c.outstanding, kPerChunk);
  EXPECT_EQ(c.outstanding, c.checkouts - c.returns);
  EXPECT_EQ(c.high_water, kPerChunk + 1);

  for (void* block : blocks) BlockPool::give_back(block);
  c = pool->counters();
  EXPECT_EQ(c.returns, c.checkouts);
  EXPECT_EQ(c.outstanding, 0u);
  EXPECT_EQ(c.high_water, kPerChunk + 1);
}

TEST(BlockPoolTest, EmptyChunkIsKeptAsSpareAndReusedWithoutJemalloc) {
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  void* first = pool->checkout();
  BlockPool::give_back(first);
  EXPECT_EQ(pool->counters().chunks, 1u);  // empty, but kept

  void* again = pool->checkout();
  const PoolCounters c = pool->counters();
  EXPECT_EQ(c.misses, 1u);
  EXPECT_EQ(c.hits, 1u);
  EXPECT_EQ(again, first);  // lowest free block of the same chunk
  BlockPool::give_back(again);
}

TEST(BlockPoolTest, SecondEmptyChunkIsFreedToJemalloc) {
  constexpr size_t kPerChunk = PacketGeometry::kBlocksPerChunk;
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  const size_t before = *pool->arena().allocated_bytes();
  std::vector<void*> blocks;
  for (size_t i = 0; i < 2 * kPerChunk; ++i) blocks.push_back(pool->checkout());
  EXPECT_EQ(pool->counters().chunks, 2u);

  for (size_t i = 0; i < kPerChunk; ++i) BlockPool::give_back(blocks[i]);
  EXPECT_EQ(pool->counters().chunks, 2u);  // the first empty chunk becomes the spare
  for (size_t i = kPerChunk; i < 2 * kPerChunk; ++i) BlockPool::give_back(blocks[i]);
  EXPECT_EQ(pool->counters().chunks, 1u);  // the second one goes back
  EXPECT_EQ(*pool->arena().allocated_bytes() - before, pool->counters().chunk_bytes);
}

TEST(BlockPoolTest, MemoryIsBoundedByPeakOutstandingPlusOneChunk) {
  constexpr size_t kPerChunk = PacketGeometry::kBlocksPerChunk;
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  std::vector<void*> blocks;
  // Oscillate around a chunk boundary many times: the spare absorbs it, no chunk churns.
  for (size_t i = 0; i < kPerChunk; ++i) blocks.push_back(pool->checkout());
  for (int round = 0; round < 100; ++round) {
    void* extra = pool->checkout();
    BlockPool::give_back(extra);
  }
  const PoolCounters c = pool->counters();
  EXPECT_EQ(c.misses, 2u);
  EXPECT_LE(c.chunks, (c.high_water + kPerChunk - 1) / kPerChunk + 1);
  for (void* block : blocks) BlockPool::give_back(block);
}

// --- Blocks -------------------------------------------------------------------------------------

void expect_blocks_usable(BlockPool& pool, size_t count) {
  std::vector<void*> blocks;
  for (size_t i = 0; i < count; ++i) {
    void* block = pool.checkout();
    ASSERT_NE(block, nullptr);
    ASSERT_EQ(reinterpret_cast<uintptr_t>(block) % kBlockAlignBytes, 0u);
    std::memset(block, static_cast<int>(i & 0xff), pool.block_bytes());
    blocks.push_back(block);
  }
  for (size_t i = 0; i < count; ++i) {
    const auto* bytes = static_cast<const unsigned char*>(blocks[i]);
    ASSERT_TRUE(std::all_of(bytes, bytes + pool.block_bytes(), [&](unsigned char b) { return b == (i & 0xff); }))
        << "block " << i << " was overwritten";
  }
  std::vector<void*> sorted = blocks;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 1; i < sorted.size(); ++i) {
    ASSERT_GE(static_cast<char*>(sorted[i]) - static_cast<char*>(sorted[i - 1]),
              static_cast<std::ptrdiff_t>(pool.block_bytes()))
        << "blocks overlap";
  }
  for (void* block : blocks) BlockPool::give_back(block);
}

TEST(BlockPoolTest, PacketBlocksAreAlignedDistinctAndWritableOverTheirFullSize) {
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  expect_blocks_usable(*pool, 4 * PacketGeometry::kBlocksPerChunk + 3);
}

TEST(BlockPoolTest, OddAndTinyBlocksAreAlignedDistinctAndWritable) {
  BlockPool odd(1001, 128 * 1024, 64, Sharing::kOwnerThread);
  expect_blocks_usable(odd, 200);
  BlockPool tiny(5, kMinChunkBytes, kMaxBlocksPerChunk, Sharing::kOwnerThread);
  expect_blocks_usable(tiny, 200);
}

TEST(BlockPoolTest, CheckoutReturnsNullWithEnomemWhenJemallocFails) {
  // A chunk larger than the address space: jemalloc cannot provide it.
  BlockPool pool(size_t{1} << 49, size_t{1} << 50, 1, Sharing::kOwnerThread);
  errno = 0;
  EXPECT_EQ(pool.checkout(), nullptr);
  EXPECT_EQ(errno, ENOMEM);
  EXPECT_EQ(pool.counters().checkouts, 0u);
}

TEST(BlockPoolTest, GiveBackOfNullIsIgnored) {
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  void* block = pool->checkout();
  ASSERT_NE(block, nullptr);
  BlockPool::give_back(nullptr);
  const PoolCounters c = pool->counters();
  EXPECT_EQ(c.returns, 0u);
  EXPECT_EQ(c.outstanding, 1u);
  BlockPool::give_back(block);
  EXPECT_EQ(pool->counters().outstanding, 0u);
}

// --- Destruction --------------------------------------------------------------------------------

TEST(BlockPoolTest, DestroyingPoolWithBlocksOutLeaksTheirChunkInsteadOfFreeingIt) {
  const uint64_t leaked_before = BlockPool::leaked_chunks_total();
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  void* kept = pool->checkout();
  void* returned = pool->checkout();
  BlockPool::give_back(returned);
  pool.reset();
  EXPECT_EQ(BlockPool::leaked_chunks_total(), leaked_before + 1);
  // The block is still memory the caller may use, and giving it back now does nothing.
  std::memset(kept, 0x5a, kPacketBytes);
  BlockPool::give_back(kept);
}

// A block given back on another thread while its pool is being destroyed (libsock.h's
// sock_free_packet, from any thread, while a shard stops): the give_back touches only what the
// destruction leaks with the block's chunk, never the freed pool (before: TSan reported the
// race on the chunk's pool pointer, and the push could land in the freed pool).
TEST(BlockPoolTest, GiveBackOnAnotherThreadDuringTheDestructionTouchesNoFreedMemory) {
  constexpr int kRounds = 50;  // a late give_back leaks its chunk and arena: a few MiB in all
  for (int i = 0; i < kRounds; ++i) {
    std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
    void* block = pool->checkout();
    ASSERT_NE(block, nullptr);
    std::atomic<bool> go{false};
    std::thread giver([&] {
      while (!go) {}
      BlockPool::give_back(block);
    });
    go = true;
    pool.reset();
    giver.join();
  }
}

TEST(BlockPoolTest, CreatingAndDestroyingManyPoolsDoesNotExhaustJemallocArenas) {
  // More pools than jemalloc's 4095 arenas: each empty pool must destroy its arena, or
  // creating one (it needs an arena of its own) fails before the loop ends.
  const uint64_t leaked_before = BlockPool::leaked_chunks_total();
  for (int i = 0; i < 5000; ++i) {
    std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
    ASSERT_NE(pool, nullptr) << "pool " << i << ": " << std::strerror(errno);
    void* block = pool->checkout();
    ASSERT_NE(block, nullptr) << "pool " << i << ": " << std::strerror(errno);
    BlockPool::give_back(block);
    EXPECT_EQ(pool->counters().outstanding, 0u);
  }
  EXPECT_EQ(BlockPool::leaked_chunks_total(), leaked_before) << "an empty pool leaked its chunk";
}

TEST(BlockPoolDeathTest, GivingABlockBackTwiceAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  void* keep_chunk = pool->checkout();
  void* block = pool->checkout();
  BlockPool::give_back(block);
  EXPECT_DEATH(BlockPool::give_back(block), "given back twice");
  BlockPool::give_back(keep_chunk);
}

#if defined(__SANITIZE_ADDRESS__)
TEST(BlockPoolDeathTest, UseAfterGiveBackIsReportedByAddressSanitizer) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  void* keep_chunk = pool->checkout();
  auto* block = static_cast<volatile char*>(pool->checkout());
  BlockPool::give_back(const_cast<char*>(block));
  EXPECT_DEATH(block[100] = 1, "use-after-poison");
  BlockPool::give_back(keep_chunk);
}

TEST(BlockPoolDeathTest, WritePastTheEndOfABlockIsReportedByAddressSanitizer) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  BlockPool pool(1001, 128 * 1024, 64, Sharing::kOwnerThread);
  auto* block = static_cast<volatile char*>(pool.checkout());
  // ASan calls it "unknown-crash" when the byte shares an 8-byte granule with the block's end.
  EXPECT_DEATH(block[1001] = 1, "AddressSanitizer");
  EXPECT_DEATH(block[1024] = 1, "use-after-poison");  // the next block, which is free
  BlockPool::give_back(const_cast<char*>(block));
}
#endif

// --- Other threads ------------------------------------------------------------------------------

TEST(BlockPoolTest, GiveBackFromAnotherThreadWaitsOnTheRemoteStackUntilDrained) {
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  void* block = pool->checkout();
  std::thread([block] { BlockPool::give_back(block); }).join();

  PoolCounters c = pool->counters();
  EXPECT_EQ(c.returns, 0u);  // not back in its chunk yet
  EXPECT_EQ(c.outstanding, 1u);

  pool->drain_remote();
  c = pool->counters();
  EXPECT_EQ(c.returns, 1u);
  EXPECT_EQ(c.outstanding, 0u);
  EXPECT_EQ(pool->checkout(), block);  // reused by the owner
  BlockPool::give_back(block);
}

TEST(BlockPoolTest, CheckoutDrainsRemoteBlocksBeforeAllocatingAChunk) {
  constexpr size_t kPerChunk = PacketGeometry::kBlocksPerChunk;
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  std::vector<void*> blocks;
  for (size_t i = 0; i < kPerChunk; ++i) blocks.push_back(pool->checkout());  // chunk now full
  void* remote = blocks[3];
  std::thread([remote] { BlockPool::give_back(remote); }).join();

  EXPECT_EQ(pool->checkout(), remote);
  EXPECT_EQ(pool->counters().misses, 1u);
  EXPECT_EQ(pool->counters().chunks, 1u);
  for (void* block : blocks) BlockPool::give_back(block);
}

TEST(BlockPoolTest, TinyBlocksCanBeGivenBackRemotely) {
  // The remote stack link is 8 bytes, more than the block itself.
  BlockPool pool(5, kMinChunkBytes, kMaxBlocksPerChunk, Sharing::kOwnerThread);
  void* block = pool.checkout();
  std::thread([block] { BlockPool::give_back(block); }).join();
  pool.drain_remote();
  EXPECT_EQ(pool.counters().outstanding, 0u);
}

TEST(BlockPoolTest, OwnerHandsBlocksToAnotherThreadWhichGivesThemAllBack) {
  constexpr uint64_t kBlocks = 100'000;
  constexpr size_t kMaxInFlight = 256;  // bounds memory; the test is about ordering, not speed
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);

  std::mutex mu;
  std::condition_variable changed;
  std::deque<void*> handoff;  // test-only channel; guarded by mu
  bool done = false;          // guarded by mu

  std::thread giver([&] {
    uint64_t expected = 0;
    for (;;) {
      void* block;
      {
        std::unique_lock<std::mutex> lock(mu);
        changed.wait(lock, [&] { return !handoff.empty() || done; });
        if (handoff.empty()) return;
        block = handoff.front();
        handoff.pop_front();
      }
      changed.notify_all();
      uint64_t seen;
      std::memcpy(&seen, static_cast<char*>(block) + kPacketBytes - sizeof(seen), sizeof(seen));
      EXPECT_EQ(seen, expected++);  // not ASSERT: returning early would leave the owner waiting
      BlockPool::give_back(block);
    }
  });

  for (uint64_t i = 0; i < kBlocks; ++i) {
    void* block = pool->checkout();
    ASSERT_NE(block, nullptr);
    std::memcpy(block, &i, sizeof(i));  // overwrites a stale remote link: the owner owns it now
    std::memcpy(static_cast<char*>(block) + kPacketBytes - sizeof(i), &i, sizeof(i));
    std::unique_lock<std::mutex> lock(mu);
    changed.wait(lock, [&] { return handoff.size() < kMaxInFlight; });
    handoff.push_back(block);
    lock.unlock();
    changed.notify_all();
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  changed.notify_all();
  giver.join();

  pool->drain_remote();
  const PoolCounters c = pool->counters();
  EXPECT_EQ(c.checkouts, kBlocks);
  EXPECT_EQ(c.returns, c.checkouts);
  EXPECT_EQ(c.outstanding, 0u);
  EXPECT_EQ(c.chunks, 1u);  // everything came back; only the spare remains
}

TEST(BlockPoolTest, ManyThreadsGiveBackConcurrently) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 1000;
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  std::vector<std::vector<void*>> shares(kThreads);
  for (auto& share : shares) {
    for (int i = 0; i < kPerThread; ++i) share.push_back(pool->checkout());
  }
  std::vector<std::thread> threads;
  for (auto& share : shares) {
    threads.emplace_back([&share] {
      for (void* block : share) BlockPool::give_back(block);
    });
  }
  for (std::thread& t : threads) t.join();

  EXPECT_EQ(pool->counters().returns, 0u);
  pool->drain_remote();
  const PoolCounters c = pool->counters();
  EXPECT_EQ(c.returns, uint64_t{kThreads * kPerThread});
  EXPECT_EQ(c.outstanding, 0u);
  EXPECT_EQ(c.chunks, 1u);
}

TEST(BlockPoolTest, BindOwnerThreadMovesTheLockFreePathToTheNewThread) {
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kOwnerThread);
  EXPECT_TRUE(pool->is_owner_thread());
  void* block = nullptr;
  std::thread([&] {
    pool->bind_owner_thread();
    EXPECT_TRUE(pool->is_owner_thread());
    block = pool->checkout();
    void* local = pool->checkout();
    BlockPool::give_back(local);  // on the owner: straight back to its chunk
    EXPECT_EQ(pool->counters().returns, 1u);
  }).join();

  EXPECT_FALSE(pool->is_owner_thread());
  BlockPool::give_back(block);  // no longer the owner: goes through the remote stack
  EXPECT_EQ(pool->counters().returns, 1u);
  pool->bind_owner_thread();
  pool->drain_remote();
  EXPECT_EQ(pool->counters().returns, 2u);
}

TEST(BlockPoolTest, LockedPoolServesTwoThreads) {
  constexpr int kThreads = 2;
  constexpr int kRounds = 10'000;
  constexpr int kHeld = 20;  // more than a chunk, so chunks are made and freed concurrently
  std::unique_ptr<BlockPool> pool = BlockPool::create<kPacketBytes>(Sharing::kLocked);

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&pool, t] {
      std::vector<void*> held;
      for (int round = 0; round < kRounds; ++round) {
        void* block = pool->checkout();
        ASSERT_NE(block, nullptr);
        std::memset(block, t, 64);
        held.push_back(block);
        if (held.size() == kHeld || round == kRounds - 1) {
          for (void* b : held) {
            ASSERT_EQ(static_cast<unsigned char*>(b)[63], t) << "block shared between threads";
            BlockPool::give_back(b);
          }
          held.clear();
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();

  const PoolCounters c = pool->counters();
  EXPECT_EQ(c.checkouts, uint64_t{kThreads * kRounds});
  EXPECT_EQ(c.returns, c.checkouts);
  EXPECT_EQ(c.outstanding, 0u);
  EXPECT_LE(c.high_water, uint64_t{kThreads * kHeld});
}

}  // namespace
}  // namespace alloc
