// BlockPool checkout + give_back of a 17440-byte packet, against the allocators it replaces.
//
// Each benchmark checks out `batch` blocks, then gives them all back, so batch 1 measures the
// hottest path and larger batches walk several chunks (and, for the pool, the chunk list and the
// spare). Items processed = blocks, so the reported rate is checkout+return pairs per second.
//
//   BM_PoolCheckoutReturn            BlockPool, owner thread: no lock, no atomic read-modify-write
//   BM_PoolLockedCheckoutReturn      BlockPool in kLocked mode, uncontended mutex
//   BM_MallocxSdallocx               jemalloc with its thread cache (the 20 KiB size class)
//   BM_MallocxSdallocxArenaNoTcache  jemalloc from a private arena without thread cache, as the
//                                    pool's own chunks are allocated
//   BM_GlibcMallocFree               glibc, reached through __libc_malloc because jemalloc
//                                    replaces malloc in this binary
#include <jemalloc/jemalloc.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "alloc/block_pool.h"
#include "alloc/jemalloc_arena.h"
#include "benchmark/benchmark.h"

extern "C" {
void* __libc_malloc(size_t size);
void __libc_free(void* p);
}

namespace {

constexpr size_t kPacketBytes = 17440;
constexpr size_t kBlockAlign = alloc::kBlockAlignBytes;

template <typename Allocate, typename Free>
void run_batches(benchmark::State& state, Allocate allocate, Free release) {
  const size_t batch = static_cast<size_t>(state.range(0));
  std::vector<void*> blocks(batch);
  for (auto _ : state) {
    for (void*& block : blocks) {
      block = allocate();
      benchmark::DoNotOptimize(block);
    }
    for (void* block : blocks) release(block);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * batch));
}

// Chunks taken from jemalloc per iteration. With at most one spare chunk, a batch that ends just
// past a chunk boundary (16 = one chunk of 15 plus one) frees and re-allocates a chunk every time.
void report_chunk_misses(benchmark::State& state, const alloc::BlockPool& pool) {
  state.counters["chunk_misses_per_iter"] =
      static_cast<double>(pool.counters().misses) / static_cast<double>(std::max<int64_t>(state.iterations(), 1));
}

void BM_PoolCheckoutReturn(benchmark::State& state) {
  std::unique_ptr<alloc::BlockPool> pool = alloc::BlockPool::create<kPacketBytes>(alloc::Sharing::kOwnerThread);
  run_batches(state, [&] { return pool->checkout(); }, [](void* p) { alloc::BlockPool::give_back(p); });
  report_chunk_misses(state, *pool);
}

void BM_PoolLockedCheckoutReturn(benchmark::State& state) {
  std::unique_ptr<alloc::BlockPool> pool = alloc::BlockPool::create<kPacketBytes>(alloc::Sharing::kLocked);
  run_batches(state, [&] { return pool->checkout(); }, [](void* p) { alloc::BlockPool::give_back(p); });
  report_chunk_misses(state, *pool);
}

void BM_MallocxSdallocx(benchmark::State& state) {
  run_batches(state, [] { return mallocx(kPacketBytes, 0); }, [](void* p) { sdallocx(p, kPacketBytes, 0); });
}

void BM_MallocxSdallocxArenaNoTcache(benchmark::State& state) {
  std::optional<alloc::JemallocArena> arena = alloc::JemallocArena::create();
  if (!arena) {
    state.SkipWithError("arenas.create failed");
    return;
  }
  run_batches(state, [&] { return arena->allocate(kPacketBytes, kBlockAlign); },
              [&](void* p) { arena->deallocate(p, kPacketBytes, kBlockAlign); });
  arena->destroy();
}

void BM_GlibcMallocFree(benchmark::State& state) {
  run_batches(state, [] { return __libc_malloc(kPacketBytes); }, [](void* p) { __libc_free(p); });
}

BENCHMARK(BM_PoolCheckoutReturn)->Arg(1)->Arg(15)->Arg(16)->Arg(256);
BENCHMARK(BM_PoolLockedCheckoutReturn)->Arg(1)->Arg(16)->Arg(256);
BENCHMARK(BM_MallocxSdallocx)->Arg(1)->Arg(16)->Arg(256);
BENCHMARK(BM_MallocxSdallocxArenaNoTcache)->Arg(1)->Arg(16)->Arg(256);
BENCHMARK(BM_GlibcMallocFree)->Arg(1)->Arg(16)->Arg(256);

}  // namespace
