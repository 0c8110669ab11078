#include "alloc/jemalloc_arena.h"

#include <jemalloc/jemalloc.h>

#include <cassert>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <utility>

namespace alloc {
namespace {

// Long enough for "stats.arenas.4294967295.large.allocated" and every other name used here.
constexpr size_t kMallctlNameBytes = 64;

// Every call names the arena and skips the thread cache: a cached chunk would neither return to
// the arena nor show up in its statistics.
int flags_for(unsigned arena, size_t align) {
  assert(align != 0 && (align & (align - 1)) == 0 && "alignment must be a power of two");
  return MALLOCX_ARENA(arena) | MALLOCX_ALIGN(align) | MALLOCX_TCACHE_NONE;
}

// Reads a size_t statistic of `arena`; `leaf` is the name after "stats.arenas.<i>.".
std::optional<size_t> read_arena_stat(unsigned arena, const char* leaf) {
  char name[kMallctlNameBytes];
  std::snprintf(name, sizeof(name), "stats.arenas.%u.%s", arena, leaf);
  size_t value = 0;
  size_t value_len = sizeof(value);
  if (mallctl(name, &value, &value_len, nullptr, 0) != 0) return std::nullopt;
  return value;
}

bool purge_arena(unsigned arena) {
  char name[kMallctlNameBytes];
  std::snprintf(name, sizeof(name), "arena.%u.purge", arena);
  const int rc = mallctl(name, nullptr, nullptr, nullptr, 0);
  if (rc != 0) errno = rc;
  return rc == 0;
}

std::optional<size_t> page_bytes() {
  size_t page = 0;
  size_t page_len = sizeof(page);
  if (mallctl("arenas.page", &page, &page_len, nullptr, 0) != 0) return std::nullopt;
  return page;
}

}  // namespace

// jemalloc merges per-arena counters into what mallctl reports only when "epoch" is written.
bool JemallocArena::refresh_stats() {
  uint64_t epoch = 1;
  size_t epoch_len = sizeof(epoch);
  return mallctl("epoch", &epoch, &epoch_len, &epoch, sizeof(epoch)) == 0;
}

bool JemallocArena::stats(Stats* out) const {
  assert(index_ != kNoArena);
  const std::optional<size_t> page = page_bytes();
  const std::optional<size_t> active = read_arena_stat(index_, "pactive");
  const std::optional<size_t> dirty = read_arena_stat(index_, "pdirty");
  const std::optional<size_t> muzzy = read_arena_stat(index_, "pmuzzy");
  const std::optional<size_t> resident = read_arena_stat(index_, "resident");
  const std::optional<size_t> mapped = read_arena_stat(index_, "mapped");
  const std::optional<size_t> retained = read_arena_stat(index_, "retained");
  if (!page || !active || !dirty || !muzzy || !resident || !mapped || !retained) {
    errno = ENOTSUP;
    return false;
  }
  *out = Stats{*active * *page, *dirty * *page, *muzzy * *page, *resident, *mapped, *retained};
  return true;
}

bool release_thread_memory() {
  bool ok = true;
  int rc = mallctl("thread.tcache.flush", nullptr, nullptr, nullptr, 0);
  if (rc != 0 && rc != EFAULT) {  // EFAULT: the thread has no cache (tcache disabled)
    errno = rc;
    ok = false;
  }
  const std::optional<unsigned> arena = calling_thread_arena();
  return arena && purge_arena(*arena) && ok;
}

std::optional<unsigned> calling_thread_arena() {
  unsigned arena = 0;
  size_t arena_len = sizeof(arena);
  const int rc = mallctl("thread.arena", &arena, &arena_len, nullptr, 0);
  if (rc != 0) {
    errno = rc;
    return std::nullopt;
  }
  return arena;
}

bool JemallocArena::bind_calling_thread() const {
  assert(index_ != kNoArena);
  unsigned arena = index_;
  const int rc = mallctl("thread.arena", nullptr, nullptr, &arena, sizeof(arena));
  if (rc != 0) {
    errno = rc;
    return false;
  }
  return true;
}

bool JemallocArena::purge() const {
  assert(index_ != kNoArena);
  return purge_arena(index_);
}

std::optional<JemallocArena> JemallocArena::create() {
  unsigned index = kNoArena;
  size_t index_len = sizeof(index);
  const int rc = mallctl("arenas.create", &index, &index_len, nullptr, 0);
  if (rc != 0) {
    errno = rc;  // mallctl returns the error number instead of setting errno.
    return std::nullopt;
  }
  return JemallocArena(index);
}

JemallocArena::JemallocArena(JemallocArena&& other) noexcept
    : index_(std::exchange(other.index_, kNoArena)) {}

JemallocArena& JemallocArena::operator=(JemallocArena&& other) noexcept {
  // The arena this object named is left alive, as the destructor would leave it.
  index_ = std::exchange(other.index_, kNoArena);
  return *this;
}

void* JemallocArena::allocate(size_t size, size_t align) {
  assert(index_ != kNoArena);
  void* p = mallocx(size, flags_for(index_, align));
  if (p == nullptr) errno = ENOMEM;  // mallocx does not promise to set it.
  return p;
}

void JemallocArena::deallocate(void* p, size_t size, size_t align) {
  assert(index_ != kNoArena);
  sdallocx(p, size, flags_for(index_, align));
}

std::optional<size_t> JemallocArena::allocated_bytes() const {
  assert(index_ != kNoArena);
  if (!refresh_stats()) return std::nullopt;
  const std::optional<size_t> large = read_arena_stat(index_, "large.allocated");
  const std::optional<size_t> small = read_arena_stat(index_, "small.allocated");
  if (!large || !small) return std::nullopt;
  return *large + *small;
}

std::optional<size_t> JemallocArena::active_bytes() const {
  assert(index_ != kNoArena);
  if (!refresh_stats()) return std::nullopt;
  const std::optional<size_t> page = page_bytes();
  const std::optional<size_t> pages = read_arena_stat(index_, "pactive");
  if (!page || !pages) return std::nullopt;
  return *pages * *page;
}

size_t JemallocArena::usable_size(size_t size, size_t align) {
  return nallocx(size, MALLOCX_ALIGN(align));
}

bool JemallocArena::destroy() {
  assert(index_ != kNoArena);
  char name[kMallctlNameBytes];
  std::snprintf(name, sizeof(name), "arena.%u.destroy", index_);
  const int rc = mallctl(name, nullptr, nullptr, nullptr, 0);
  if (rc != 0) {
    errno = rc;
    return false;
  }
  index_ = kNoArena;
  return true;
}

}  // namespace alloc
