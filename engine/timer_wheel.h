// File: engine/timer_wheel.h
// A hashed timing wheel for per-connection timeouts (idle, handshake, drain): one per reactor.
//
// Keys: opaque uint64_t words (the engine packs fd + generation into one); the wheel never
// dereferences them, so an entry that outlives its connection is harmless: the reactor's
// fire callback sees a stale generation and ignores it.
// Lazy rescheduling: there is no cancel and no update. Resetting an idle timer on every read
// costs nothing here: the reactor only records the connection's last activity; when the
// entry fires it compares the connection's real deadline and schedules a new entry if the
// deadline moved. So the wheel holds about one entry per armed connection.
// Timing: advance(now) fires exactly the entries with due_ms <= now, so nothing ever fires
// early; a reactor that sleeps for next_timeout_ms() and then advances fires every entry at
// its due or at most kTickMs later. Dues beyond the horizon (kHorizonMs) wait in their
// bucket and are skipped, by their due_ms, on each revolution until due.
// Cost: schedule() O(1) amortised; advance() O(buckets passed, at most kBuckets however long
// the pause, + the entries in them); next_timeout_ms() O(kBuckets / 64) over a bitmap of
// non-empty buckets. Entries live in per-bucket vectors that keep their capacity, so a
// steady state of arming and firing allocates nothing.
// Ownership: the wheel owns its entries (key + due) and nothing the keys refer to.
// Threads: the owner (reactor) thread only; no member may be called concurrently.
// Errors: none reported. schedule() and advance() throw std::bad_alloc if a vector cannot
// grow (the wheel stays consistent); the engine treats running out of memory as fatal and
// does not catch it. fire() should not throw; if it does, the exception leaves advance()
// with no entry lost or duplicated, and the next advance() resumes where it stopped.
#ifndef ENGINE_TIMER_WHEEL_H_
#define ENGINE_TIMER_WHEEL_H_

#include <array>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace engine {

class TimerWheel {
 public:
  // The granularity: an entry fires at its due time or at most one tick later, never early.
  // 50 ms is far below any connection timeout (seconds) yet caps wakeups at 20 per second.
  static constexpr int64_t kTickMs = 50;
  // Buckets per revolution; a power of two so a tick's bucket is its low bits.
  static constexpr std::size_t kBuckets = 1024;
  // One revolution (51.2 s): dues further out share a bucket with nearer ticks and are told
  // apart by due_ms, so they cost one comparison per revolution until due.
  static constexpr int64_t kHorizonMs = kTickMs * static_cast<int64_t>(kBuckets);
  static_assert(kTickMs > 0);
  static_assert(kBuckets > 0 && (kBuckets & (kBuckets - 1)) == 0,
                "kBuckets must be a power of two: a bucket is a tick's low bits");
  static_assert(kHorizonMs == 51'200);

  explicit TimerWheel(int64_t now_ms);
  TimerWheel(const TimerWheel&) = delete;
  TimerWheel& operator=(const TimerWheel&) = delete;
  TimerWheel(TimerWheel&&) = default;
  TimerWheel& operator=(TimerWheel&&) = default;

  // Arms one entry: fire(key, due_ms) from the first advance() whose now_ms >= due_ms. O(1)
  // amortised. A due in the past fires on the next advance(). The same key may be armed
  // more than once; each entry fires once. From inside fire() (re-arming) the entry is
  // held aside and filed when that advance() ends, so it never fires in the same call.
  void schedule(uint64_t key, int64_t due_ms);

  // Moves the wheel to now_ms and calls fire(key, due_ms) for every entry with
  // due_ms <= now_ms, removing it first (order within a tick is unspecified). Scans each
  // bucket at most once, so work is bounded by kBuckets however long the pause. fire() may
  // call schedule() and size(), not advance(). A now_ms earlier than the last one is taken
  // as the last one (the engine's clock is monotonic).
  template <typename Fire>
  void advance(int64_t now_ms, Fire&& fire);

  // Milliseconds until the earliest entry may be due, for the epoll_wait timeout: -1 when
  // empty, 0 when something is already due, else the time to the start of the nearest tick
  // holding an entry (or to the next tick boundary when the current tick holds one), which
  // is never after any entry's due rounded up to the tick. Never negative.
  int64_t next_timeout_ms(int64_t now_ms) const;

  // Entries armed and not yet fired.
  std::size_t size() const { return size_; }

  // Drops every entry for which keep(key, due_ms) is false (the owner knows it would fire
  // to no effect: its connection is closed, or a sooner entry superseded it), and gives
  // back the capacity of buckets left at most a quarter full. Returns the entries dropped.
  // O(kBuckets + entries): for occasional use (buckets grow again as they fill). Not from
  // inside fire(). The wheel stays consistent bucket by bucket should anything throw.
  template <typename Keep>
  std::size_t compact(Keep&& keep);

 private:
  struct Entry {
    uint64_t key;
    int64_t due_ms;
  };
  static_assert(sizeof(Entry) == 16, "an entry is the key and the due, nothing else");

  static constexpr std::size_t kWordBits = 64;
  static constexpr std::size_t kWords = kBuckets / kWordBits;
  static constexpr std::size_t kBucketMask = kBuckets - 1;
  static_assert(kBuckets % kWordBits == 0, "the non-empty bitmap is whole words");

  // The tick holding ms: floor(ms / kTickMs), also for negative ms.
  static int64_t tick_of(int64_t ms) {
    const int64_t quotient = ms / kTickMs;
    return ms % kTickMs < 0 ? quotient - 1 : quotient;
  }
  // Two's-complement low bits, so negative ticks hash consistently too.
  static std::size_t bucket_of(int64_t tick) {
    return static_cast<std::size_t>(static_cast<uint64_t>(tick) & kBucketMask);
  }
  bool marked(std::size_t bucket) const {
    return (nonempty_[bucket / kWordBits] >> (bucket % kWordBits)) & 1u;
  }
  void mark(std::size_t bucket) {
    nonempty_[bucket / kWordBits] |= uint64_t{1} << (bucket % kWordBits);
  }
  void unmark_if_empty(std::size_t bucket);
  // Puts an entry in its bucket (see buckets_). Does not count it: size_ already does.
  void file(const Entry& entry);
  // Files the entries schedule() held aside during advance().
  void file_deferred();
  // Buckets from the cursor's to the first non-empty one, in [0, kBuckets). Needs one.
  std::size_t distance_to_next_nonempty() const;
  template <typename Fire>
  void fire_due(std::size_t bucket, int64_t now_ms, Fire& fire);

  // buckets_[b] holds the entries whose due tick is congruent to b modulo kBuckets and
  // later than cursor_, plus, in the cursor's bucket, those due at or before cursor_'s tick.
  // Sized once and never resized.
  std::vector<std::vector<Entry>> buckets_;
  // Bit b set <=> buckets_[b] is non-empty.
  std::array<uint64_t, kWords> nonempty_{};
  // Entries scheduled from inside fire(): filing them at once could put them in a bucket
  // this advance() has yet to scan. Empty outside advance() unless a fire() threw.
  std::vector<Entry> deferred_;
  // The latest time passed to advance() (or the constructor).
  int64_t now_ms_;
  // The first tick the next advance() scans: tick_of(now_ms_), or earlier after a fire()
  // threw before the scan finished.
  int64_t cursor_;
  // Entries in buckets_ and deferred_.
  std::size_t size_ = 0;
  // Some entry may have due_ms <= now_ms_ (scheduled with a past due, or left by a throwing
  // fire()): next_timeout_ms() answers 0. A hint: a false true costs one idle advance().
  bool overdue_ = false;
  bool advancing_ = false;
};

template <typename Fire>
void TimerWheel::advance(int64_t now_ms, Fire&& fire) {
  assert(!advancing_ && "advance() called from inside fire()");
  if (now_ms < now_ms_) now_ms = now_ms_;
  file_deferred();  // left over only if a fire() threw
  const int64_t from = cursor_;
  const int64_t to = tick_of(now_ms);
  // Ticks from..to inclusive; after a pause of a revolution or more, every bucket once, which
  // covers every tick (what is not yet due stays, checked by due_ms).
  const uint64_t passed = static_cast<uint64_t>(to - from);
  const std::size_t visits = passed >= kBuckets ? kBuckets : static_cast<std::size_t>(passed) + 1;
  now_ms_ = now_ms;
  overdue_ = false;

  // The cursor moves only once every bucket is scanned. If fire() throws, it stays at
  // `from`, so the next advance() scans these buckets again (and files what was deferred);
  // meanwhile next_timeout_ms() answers 0.
  struct Unwind {
    TimerWheel& wheel;
    bool done;
    ~Unwind() {
      wheel.advancing_ = false;
      if (!done) wheel.overdue_ = true;
    }
  } unwind{*this, false};
  advancing_ = true;
  for (std::size_t visited = 0; visited < visits; ++visited) {
    const std::size_t bucket = bucket_of(from + static_cast<int64_t>(visited));
    if (marked(bucket)) fire_due(bucket, now_ms, fire);
  }
  cursor_ = to;
  unwind.done = true;
  advancing_ = false;
  file_deferred();  // relative to the new cursor; a past due sets overdue_
}

template <typename Fire>
void TimerWheel::fire_due(std::size_t bucket, int64_t now_ms, Fire& fire) {
  std::vector<Entry>& entries = buckets_[bucket];
  const std::size_t present = entries.size();
  std::size_t read = 0;
  std::size_t kept = 0;
  // Closes the gap [kept, read) of fired entries and of entries already moved down; if fire()
  // threw, the unread rest after it is kept as it is.
  struct Compact {
    TimerWheel& wheel;
    std::vector<Entry>& entries;
    std::size_t bucket;
    const std::size_t& kept;
    const std::size_t& read;
    ~Compact() {
      entries.erase(entries.begin() + static_cast<std::ptrdiff_t>(kept),
                    entries.begin() + static_cast<std::ptrdiff_t>(read));
      wheel.unmark_if_empty(bucket);
    }
  } compact{*this, entries, bucket, kept, read};

  while (read < present) {
    const Entry entry = entries[read++];
    if (entry.due_ms <= now_ms) {
      --size_;  // before fire(), so size() inside fire() and after a throw is exact
      fire(entry.key, entry.due_ms);
    } else {
      entries[kept++] = entry;
    }
  }
}

template <typename Keep>
std::size_t TimerWheel::compact(Keep&& keep) {
  assert(!advancing_ && "compact() called from inside fire()");
  file_deferred();  // left over only if a fire() threw
  std::size_t dropped = 0;
  for (std::size_t bucket = 0; bucket < kBuckets; ++bucket) {
    std::vector<Entry>& entries = buckets_[bucket];
    if (entries.capacity() == 0) continue;
    std::size_t kept = 0;
    for (std::size_t read = 0; read < entries.size(); ++read) {
      if (keep(entries[read].key, entries[read].due_ms)) entries[kept++] = entries[read];
    }
    dropped += entries.size() - kept;
    size_ -= entries.size() - kept;
    entries.resize(kept);
    if (entries.size() <= entries.capacity() / 4) entries.shrink_to_fit();
    unmark_if_empty(bucket);
  }
  if (deferred_.empty()) deferred_.shrink_to_fit();
  return dropped;
}

}  // namespace engine

#endif  // ENGINE_TIMER_WHEEL_H_
