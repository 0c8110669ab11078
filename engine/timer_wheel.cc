#include "engine/timer_wheel.h"

#include <algorithm>
#include <bit>

namespace engine {

TimerWheel::TimerWheel(int64_t now_ms)
    : buckets_(kBuckets), now_ms_(now_ms), cursor_(tick_of(now_ms)) {}

void TimerWheel::schedule(uint64_t key, int64_t due_ms) {
  const Entry entry{key, due_ms};
  if (advancing_) {
    deferred_.push_back(entry);  // may throw bad_alloc: nothing changed yet
  } else {
    file(entry);
  }
  ++size_;
}

void TimerWheel::file(const Entry& entry) {
  const int64_t tick = tick_of(entry.due_ms);
  // A due at or before the cursor's tick goes under the cursor, which the next advance()
  // scans first; a later one under its own tick, modulo kBuckets.
  const std::size_t bucket = bucket_of(tick > cursor_ ? tick : cursor_);
  buckets_[bucket].push_back(entry);  // may throw bad_alloc: nothing changed yet
  mark(bucket);
  if (entry.due_ms <= now_ms_) overdue_ = true;
}

void TimerWheel::file_deferred() {
  // From the back, so an entry leaves deferred_ only once filed (file() may throw).
  while (!deferred_.empty()) {
    file(deferred_.back());
    deferred_.pop_back();
  }
}

int64_t TimerWheel::next_timeout_ms(int64_t now_ms) const {
  if (size_ == 0) return -1;
  if (overdue_ || !deferred_.empty()) return 0;
  // Entries in the bucket `ahead` ticks past the cursor are due no earlier than the start of
  // tick cursor_ + ahead (they were filed later than the cursor, at a congruent tick). The
  // cursor's own bucket may hold a due later in the current tick: wake at the next boundary.
  const std::size_t ahead = distance_to_next_nonempty();
  const int64_t wake_tick = cursor_ + static_cast<int64_t>(ahead == 0 ? 1 : ahead);
  return std::max<int64_t>(0, wake_tick * kTickMs - now_ms);
}

void TimerWheel::unmark_if_empty(std::size_t bucket) {
  if (buckets_[bucket].empty()) {
    nonempty_[bucket / kWordBits] &= ~(uint64_t{1} << (bucket % kWordBits));
  }
}

std::size_t TimerWheel::distance_to_next_nonempty() const {
  const std::size_t start = bucket_of(cursor_);
  std::size_t word = start / kWordBits;
  // The start word from the start bit on, then the other words in turn, then the start word
  // again whole (its bits before `start` are the last buckets of the revolution).
  uint64_t bits = nonempty_[word] & (~uint64_t{0} << (start % kWordBits));
  for (std::size_t step = 0; step <= kWords; ++step) {
    if (bits != 0) {
      const std::size_t found = word * kWordBits + static_cast<std::size_t>(std::countr_zero(bits));
      return (found - start) & kBucketMask;
    }
    word = (word + 1) % kWords;
    bits = nonempty_[word];
  }
  assert(false && "size_ > 0 but no bucket is marked");
  return 0;
}

}  // namespace engine
