// alloc::OwnerCounter: a statistics counter with one writer and any number of readers.
//
// Threads: one writer at a time (a pool's or a reactor's owner thread, or the holder of the
// lock that serialises writers); any thread may read. The increment is a relaxed load plus a
// relaxed store, which compiles to plain moves: the writer's path stays free of
// read-modify-write instructions (a `lock add` costs ~20 cycles on every packet), and readers
// on other threads still see a whole, if slightly stale, value instead of a data race.
#ifndef ALLOC_OWNER_COUNTER_H_
#define ALLOC_OWNER_COUNTER_H_

#include <atomic>
#include <cstdint>

namespace alloc {

class OwnerCounter {
 public:
  void add(uint64_t n) { value_.store(value_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  void sub(uint64_t n) { value_.store(value_.load(std::memory_order_relaxed) - n, std::memory_order_relaxed); }
  void set(uint64_t n) { value_.store(n, std::memory_order_relaxed); }
  uint64_t get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

}  // namespace alloc

#endif  // ALLOC_OWNER_COUNTER_H_
