// File: engine/inbox.h
// The one cross-thread door of a reactor: an MPSC queue of RemoteCall (Boost.Lockfree) plus a
// coalesced eventfd wakeup of the owner thread. Every reactor has one, made on first need
// (Reactor::inbox()), whether a shard drives it or the program does.
//
// Any thread may post(); only the owner drains, and the owner blocks (in its epoll wait on the
// eventfd) only after may_sleep() said it may. A post writes the eventfd only when the owner
// announced that it is about to sleep, so a busy reactor receives no syscalls from its
// producers at all, and a sleeping one receives one write per sleep however many calls
// arrive while it sleeps. The proof that no wakeup is lost is in inbox.cc.
//
// Threads, per function:
//   post()                       any thread, many at once; lock-free until the node freelist is
//                                empty (then it allocates).
//   drain_with(), may_sleep()    the owner thread only: one consumer at a time, ever.
//   counters()                   any thread; a snapshot of relaxed counters, not mutually
//                                consistent while producers or the owner run.
//   constructor, destructor      not concurrent with anything else.
// Order: calls from one producer run in the order that producer posted them (the queue is FIFO
// overall; across producers the order is whatever order their pushes linearised in).
// Ownership: a RemoteCall is copied into the queue; the data it points to belongs to the
// queued call (engine/remote.h) until the owner runs it. Calls still queued when the inbox is
// destroyed are discarded without running, so their data leaks: drain before destroying.
// Errors: post() returns false only when a node could not be allocated (std::bad_alloc from
// the node allocator); the call is then not queued and its data is still the caller's.
#ifndef ENGINE_INBOX_H_
#define ENGINE_INBOX_H_

#include <atomic>
#include <boost/lockfree/queue.hpp>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "alloc/cache_line.h"
#include "engine/remote.h"

namespace engine {

class Reactor;

// Boost.Lockfree copies calls with plain assignment and never runs a destructor on them.
static_assert(std::is_trivially_copyable_v<RemoteCall>,
              "RemoteCall is copied into queue nodes byte for byte");
static_assert(std::is_trivially_destructible_v<RemoteCall>,
              "queue nodes are recycled without destroying their payload");

// What the counters said at one moment. Each field is exact once the producers have stopped.
struct InboxCounters {
  uint64_t posted;   // successful post()s
  uint64_t drained;  // calls run by drain_with()
  uint64_t wakeups;  // eventfd writes (wake function calls)
};

class Inbox {
 public:
  // Wakes the owner: called by the one producer that finds the owner asleep. It must end the
  // owner's current or next blocking wait (an eventfd write) and may run on any thread.
  using WakeFn = void (*)(void* context);

  // Nodes allocated up front. A queue node is one cache line (Boost aligns nodes to the line
  // and a RemoteCall plus the next pointer fits), so the default costs 64 KiB per reactor and
  // absorbs a burst of this many posts before any producer allocates.
  static constexpr std::size_t kDefaultCapacity = 1024;
  static_assert(sizeof(RemoteCall) + sizeof(void*) <= alloc::kCacheLineBytes,
                "a queue node is expected to be one cache line");

  // The most calls one drain runs. It bounds how long one loop iteration spends on remote
  // calls (about a millisecond at a microsecond per call), so sockets and a requested stop
  // are served between batches, and a call that posts to its own inbox cannot keep drain
  // running forever. Calls left over keep may_sleep() false, so the owner comes back for
  // them without blocking.
  static constexpr std::size_t kDrainBatch = kDefaultCapacity;
  static_assert(kDrainBatch > 0);

  // Wakes `owner` through Reactor::wake(). The reactor must outlive the inbox.
  explicit Inbox(Reactor& owner, std::size_t capacity = kDefaultCapacity);
  // Wakes by calling wake(context) (tests, benchmarks that block on their own eventfd).
  Inbox(WakeFn wake, void* context, std::size_t capacity = kDefaultCapacity);
  // Not concurrent with any other call. Queued calls are discarded unrun (see the banner).
  ~Inbox() = default;
  Inbox(const Inbox&) = delete;
  Inbox& operator=(const Inbox&) = delete;

  // Any thread. Queues a copy of `call`; wakes the owner if it announced a sleep. False only
  // when out of memory (nothing queued, no wakeup).
  bool post(const RemoteCall& call);

  // Owner thread: runs run(const RemoteCall&) for up to kDrainBatch queued calls, in queue
  // order, and returns how many ran. `run` may post to this inbox (those calls join the
  // queue's tail) but must not drain it.
  template <class F>
  std::size_t drain_with(F&& run);

  // Owner thread, right before a blocking wait: true means block (a later post() will call
  // the wake function); false means calls are pending, so drain instead of blocking.
  bool may_sleep();

  // Any thread.
  InboxCounters counters() const;

 private:
  // Read-only after construction.
  WakeFn wake_;
  void* wake_context_;

  // Boost keeps its head and tail on separate lines; aligning the queue keeps our own
  // fields off its first line.
  alignas(alloc::kCacheLineBytes) boost::lockfree::queue<RemoteCall> queue_;

  // The handshake line, touched by every post (one RMW, one load) and by the owner once per
  // loop iteration (one load). The wakeup counter shares it: a producer already owns the line
  // when it bumps it, and only the producer that wakes the owner does.
  //   posted_: calls counted by producers, each after its push. The owner's view of what is
  //     pending is posted_ - drained_, which is transiently negative: the owner can pop and
  //     run a call before its producer counted it. Zero or less never hides a counted, unrun
  //     call from may_sleep() in a way that loses a wakeup (proof in inbox.cc).
  //   sleeping_: the owner announced a blocking wait and nobody has woken it since.
  alignas(alloc::kCacheLineBytes) std::atomic<uint64_t> posted_{0};
  std::atomic<bool> sleeping_{false};
  std::atomic<uint64_t> wakeups_{0};

  // The owner's line: only the owner writes it, so producers never pull it away.
  alignas(alloc::kCacheLineBytes) std::atomic<uint64_t> drained_{0};
};

template <class F>
std::size_t Inbox::drain_with(F&& run) {
  // Awake from here on: producers that look at sleeping_ now skip the eventfd. Relaxed is
  // enough: this store only saves wakeups; no-lost-wakeup rests on may_sleep()'s seq_cst
  // store and load, which come after this store in this thread.
  sleeping_.store(false, std::memory_order_relaxed);

  std::size_t ran = 0;
  RemoteCall call;
  // Pop side of the publication: Boost's pop() loads the node link with acquire, pairing
  // with the release CAS in push(), so the call's fields (and what they point to, written
  // before post()) are visible here.
  while (ran < kDrainBatch && queue_.pop(call)) {
    run(static_cast<const RemoteCall&>(call));
    ++ran;
  }
  if (ran > 0) {
    // D. One writer: a load and a store, no locked RMW, on the owner's own line. may_sleep()
    // runs on this thread, so it sees every call run here without any ordering.
    drained_.store(drained_.load(std::memory_order_relaxed) + ran, std::memory_order_relaxed);
  }
  return ran;
}

}  // namespace engine

#endif  // ENGINE_INBOX_H_
