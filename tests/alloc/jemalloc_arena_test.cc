#include "alloc/jemalloc_arena.h"

#include <jemalloc/jemalloc.h>

#include <cerrno>
#include <cstdint>
#include <optional>
#include <thread>
#include <utility>

#include "gtest/gtest.h"

namespace alloc {
namespace {

constexpr size_t kChunkBytes = 256 * 1024;
constexpr size_t kChunkAlign = 64;

JemallocArena make_arena() {
  std::optional<JemallocArena> arena = JemallocArena::create();
  EXPECT_TRUE(arena.has_value());
  return std::move(*arena);
}

// The arena jemalloc itself says `p` belongs to.
unsigned arena_of(void* p) {
  unsigned index = ~0u;
  size_t index_len = sizeof(index);
  EXPECT_EQ(mallctl("arenas.lookup", &index, &index_len, &p, sizeof(p)), 0);
  return index;
}

TEST(JemallocArenaTest, CreatesDistinctArenas) {
  JemallocArena a = make_arena();
  JemallocArena b = make_arena();
  EXPECT_NE(a.index(), b.index());
  EXPECT_TRUE(a.destroy());
  EXPECT_TRUE(b.destroy());
}

TEST(JemallocArenaTest, AllocationComesFromThisArenaAligned) {
  JemallocArena arena = make_arena();
  void* p = arena.allocate(kChunkBytes, kChunkAlign);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % kChunkAlign, 0u);
  EXPECT_EQ(arena_of(p), arena.index());
  arena.deallocate(p, kChunkBytes, kChunkAlign);
  EXPECT_TRUE(arena.destroy());
}

TEST(JemallocArenaTest, AllocatedBytesCountsOnlyThisArenasLiveAllocations) {
  JemallocArena arena = make_arena();
  JemallocArena other = make_arena();
  const size_t before = *arena.allocated_bytes();
  const size_t other_before = *other.allocated_bytes();

  void* p = arena.allocate(kChunkBytes, kChunkAlign);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*arena.allocated_bytes() - before, JemallocArena::usable_size(kChunkBytes, kChunkAlign));
  EXPECT_EQ(*other.allocated_bytes(), other_before);
  // Pages handed out include jemalloc's padding, so they are never fewer than the allocated bytes.
  EXPECT_GE(*arena.active_bytes(), *arena.allocated_bytes());

  arena.deallocate(p, kChunkBytes, kChunkAlign);
  EXPECT_EQ(*arena.allocated_bytes(), before);
  EXPECT_TRUE(arena.destroy());
  EXPECT_TRUE(other.destroy());
}

TEST(JemallocArenaTest, PowerOfTwoChunkIsAnExactSizeClassButAPacketIsNot) {
  EXPECT_EQ(JemallocArena::usable_size(kChunkBytes, kChunkAlign), kChunkBytes);
  // The reason BlockPool exists: a 17440-byte packet alone would take a 20 KiB class.
  EXPECT_EQ(JemallocArena::usable_size(17440, 16), 20480u);
}

TEST(JemallocArenaTest, FailedAllocationReturnsNullWithEnomem) {
  JemallocArena arena = make_arena();
  errno = 0;
  // More than a 47-bit address space can map.
  EXPECT_EQ(arena.allocate(size_t{1} << 50, kChunkAlign), nullptr);
  EXPECT_EQ(errno, ENOMEM);
  EXPECT_TRUE(arena.destroy());
}

TEST(JemallocArenaTest, DestroyedArenasAreRecycledSoTheLimitIsNeverReached) {
  // jemalloc allows 4095 arenas per process; this creates more than that, one at a time.
  for (int i = 0; i < 5000; ++i) {
    std::optional<JemallocArena> arena = JemallocArena::create();
    ASSERT_TRUE(arena.has_value()) << "arena " << i << ": errno " << errno;
    ASSERT_TRUE(arena->destroy());
  }
}

TEST(JemallocArenaTest, BoundThreadAllocatesFromTheArena) {
  JemallocArena arena = make_arena();
  const std::optional<unsigned> before = calling_thread_arena();
  ASSERT_TRUE(before.has_value());
  ASSERT_NE(*before, arena.index());
  // On a thread of its own: the test thread keeps its arena, and this one is never destroyed
  // (a thread that used it may have left memory in it).
  std::thread([&arena] {
    ASSERT_TRUE(arena.bind_calling_thread());
    EXPECT_EQ(calling_thread_arena(), arena.index());
    // jemalloc's own allocator, which the sanitizers do not replace as they do malloc.
    void* p = mallocx(64, MALLOCX_TCACHE_NONE);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(arena_of(p), arena.index());
    dallocx(p, MALLOCX_TCACHE_NONE);
  }).join();
  EXPECT_EQ(calling_thread_arena(), before);
}

TEST(JemallocArenaTest, MovedArenaKeepsItsIndex) {
  JemallocArena a = make_arena();
  const unsigned index = a.index();
  JemallocArena b = std::move(a);
  EXPECT_EQ(b.index(), index);
  EXPECT_TRUE(b.destroy());
}

}  // namespace
}  // namespace alloc
