// alloc::JemallocArena: one private jemalloc arena, and the only door to jemalloc in alloc/.
//
// Why a private arena: memory a pool takes and gives back stays in that pool's arena, so its
// fragmentation and its statistics are its own (`allocated_bytes()` measures one pool, not the
// process), and two shards never contend on one arena's lock.
//
// Threads: thread-safe (jemalloc locks the arena itself), except `destroy`, which must not run
// concurrently with anything else on the same arena.
// Ownership: the object names the arena; it does not free it. Destroying an arena frees every
// allocation still in it, so it is never done implicitly: the owner calls `destroy()` once it knows
// the arena is empty, and otherwise leaves the arena (and its memory) alive for the process lifetime.
// Errors: allocation failure returns nullptr with errno == ENOMEM; `create` and `destroy` report
// failure the same way (nullopt / false, errno set). Nothing here throws.
#ifndef ALLOC_JEMALLOC_ARENA_H_
#define ALLOC_JEMALLOC_ARENA_H_

#include <cstddef>
#include <optional>

namespace alloc {

// The calling thread's share of the process's malloc memory, back to the kernel: flushes its
// thread cache ("thread.tcache.flush") and purges the arena it allocates from ("thread.arena":
// an automatic one, or the one bind_calling_thread() gave it; then "arena.<i>.purge"). For a thread going idle after freeing a lot: jemalloc
// without background threads purges an arena only while it is used. false with errno set if
// jemalloc refused a step.
bool release_thread_memory();

// The arena the calling thread's malloc calls use (mallctl "thread.arena"): an automatic one
// that jemalloc picked, or one bound with bind_calling_thread(). nullopt with errno set if
// jemalloc refused.
std::optional<unsigned> calling_thread_arena();

class JemallocArena {
 public:
  // Creates a fresh arena (mallctl "arenas.create"). nullopt with errno set when jemalloc cannot:
  // out of memory, or its limit of arenas per process (4095) is reached. Indices of destroyed arenas
  // are recycled, so a program that destroys what it creates never reaches the limit.
  static std::optional<JemallocArena> create();

  JemallocArena(JemallocArena&& other) noexcept;
  JemallocArena& operator=(JemallocArena&& other) noexcept;
  JemallocArena(const JemallocArena&) = delete;
  JemallocArena& operator=(const JemallocArena&) = delete;
  // Does not destroy the arena (see the ownership note at the top).
  ~JemallocArena() = default;

  // jemalloc's arena index, for mallctl names such as "stats.arenas.<i>.*".
  unsigned index() const { return index_; }

  // `size` bytes aligned to `align` (a power of two), from this arena only, bypassing the thread
  // cache so that a chunk freed here goes back to this arena at once and the statistics stay exact.
  // nullptr with errno == ENOMEM on failure.
  void* allocate(size_t size, size_t align);
  // Frees what `allocate(size, align)` returned; `size` and `align` must be the same values
  // (sized deallocation trusts them to find the size class).
  void deallocate(void* p, size_t size, size_t align);

  // Bytes of live allocations in this arena as jemalloc counts them (usable sizes, i.e. what
  // `usable_size` returns for each), after refreshing jemalloc's statistics (mallctl "epoch").
  // nullopt if jemalloc was built without statistics.
  std::optional<size_t> allocated_bytes() const;
  // Bytes of pages this arena has handed out ("pactive" times the page size). Larger than
  // allocated_bytes(): jemalloc reserves one extra page per large allocation (cache-oblivious
  // padding), which allocated_bytes() does not count. nullopt without statistics.
  std::optional<size_t> active_bytes() const;

  // The arena's page accounting, in bytes, as of the last refresh_stats() (jemalloc merges
  // its per-thread counters only then: one refresh serves every arena of a scrape).
  //   active: pages holding live allocations; dirty: freed pages not yet given back (still
  //   resident); muzzy: given back lazily (MADV_FREE; resident until the kernel wants them);
  //   resident: what the arena has in RAM, metadata included; mapped: what it has mapped;
  //   retained: address space kept unmapped for reuse (not resident).
  struct Stats {
    size_t active = 0, dirty = 0, muzzy = 0, resident = 0, mapped = 0, retained = 0;
  };
  // false with errno ENOTSUP when jemalloc was built without statistics. Thread: any.
  bool stats(Stats* out) const;
  // Makes every arena's statistics current (mallctl "epoch"). Thread: any; jemalloc locks.
  static bool refresh_stats();

  // Returns this arena's unused (dirty and muzzy) pages to the kernel at once (mallctl
  // "arena.<i>.purge"), instead of when decay next runs: decay only runs when the arena is
  // used, so an idle arena would keep them. false with errno set if jemalloc refused.
  bool purge() const;

  // From now on the calling thread's malloc, new and free use this arena (mallctl
  // "thread.arena"; its thread cache stays as configured): a thread that allocates on every
  // request (a shard) then never takes an arena lock another such thread takes, whatever
  // jemalloc's automatic assignment would have done. Memory allocated before stays where it
  // is. Thread: the thread to bind; the arena must never be destroyed while a thread uses it.
  // false with errno set if jemalloc refused.
  bool bind_calling_thread() const;

  // What an allocation of `size` bytes aligned to `align` really takes (nallocx): the size class.
  static size_t usable_size(size_t size, size_t align);

  // Destroys the arena (mallctl "arena.<i>.destroy"). Every allocation still in it is freed, so the
  // caller must know it holds none. Thread: no other call on this arena may run concurrently.
  // Afterwards the object names no arena. false with errno set if jemalloc refused.
  bool destroy();

 private:
  // No arena: the moved-from or destroyed state.
  static constexpr unsigned kNoArena = ~0u;

  explicit JemallocArena(unsigned index) : index_(index) {}

  unsigned index_;
};

}  // namespace alloc

#endif  // ALLOC_JEMALLOC_ARENA_H_
