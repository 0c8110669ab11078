// File: engine/inbox.cc
// Inbox: the wakeup protocol and why it neither loses nor repeats a wakeup.
//
// The protocol, with a name for each step (the atomic ones seq_cst, so they sit in one total
// order that agrees with each thread's program order; D is the owner's plain counter):
//
//   owner, may_sleep():   S  sleeping_ = true
//                         L  p = posted_ - drained_  (true when p <= 0: the owner may block)
//   owner, drain_with():     sleeping_ = false, pop and run calls,
//                         D  drained_ += calls run   (the owner's own counter)
//   producer, post(c):    U  push c                  (c becomes poppable)
//                         A  posted_ += 1
//                         R  s = sleeping_           (skip the rest when false)
//                         X  sleeping_.exchange(false); the one that sees true calls wake
//
// The owner blocks only after a may_sleep() that returned true, and stores nothing to
// sleeping_ between that S and the end of the wait.
//
// No lost wakeup. Say may_sleep() returned true (steps S, L), and a call c is queued and not
// yet run, or is posted later. Then some producer calls wake after S:
//   1. If A_c comes after L: S < L < A_c < R_c, so R_c reads S's true or a later value. The
//      only other writes before the owner's wait ends are producers' X steps; the first of them
//      read true and called wake. Otherwise R_c reads true and X_c calls wake (or another X
//      got there first and did).
//   2. If A_c comes before L: every write to posted_ is a seq_cst RMW, so L's load reads the
//      count of A steps before it; drained_ counts the calls run by D steps, all before L
//      (same thread). c is counted and not run, so p <= 0 needs a call c' that was run but
//      whose A_c' comes after L, and case 1 applied to c' gives the wake. (This is why p is
//      a signed difference: the owner can run a call before its producer counts it.)
// This is Dekker's pattern: each side writes its own variable, then reads the other's, and
// seq_cst forbids both reads from missing both writes. With acquire/release alone, L and R_c
// could both read the old values and the owner would sleep on a queued call.
//
// At most one eventfd write per sleep: wake runs only after an X that read true. X is a
// read-modify-write, so it reads the latest value; after one X turns S's true into false,
// every later X reads false until the owner's next S. The R load before X keeps the line
// shared while the owner is awake, so a busy owner costs producers no locked instruction on
// sleeping_. A wake that lands after may_sleep() returned false (between S and its reset)
// leaves the eventfd readable: the owner's next wait returns at once, one idle iteration.
//
// The calls themselves travel through Boost's queue: push() links the node with a release
// CAS, pop() loads the link with acquire, so the owner sees every field written before post().
#include "engine/inbox.h"

#include <cassert>
#include <new>

#include "engine/reactor.h"

namespace engine {
namespace {

// Reactor::wake() is an eventfd write: any thread, async-signal-safe.
void wake_reactor(void* reactor) { static_cast<Reactor*>(reactor)->wake(); }

}  // namespace

Inbox::Inbox(Reactor& owner, std::size_t capacity)
    : Inbox(&wake_reactor, &owner, capacity) {}

Inbox::Inbox(WakeFn wake, void* context, std::size_t capacity)
    : wake_(wake), wake_context_(context), queue_(capacity) {
  // x86-64 packs the ABA tag into the pointer's unused bits, so single-word CAS suffices.
  assert(queue_.is_lock_free());
}

bool Inbox::post(const RemoteCall& call) {
  // U: Boost's push is the release side of the publication (see the banner).
  try {
    queue_.push(call);
  } catch (const std::bad_alloc&) {
    // The freelist was empty and a new node could not be allocated: nothing was linked.
    return false;
  }
  // A, then R: seq_cst both, the producer half of the Dekker pair with may_sleep()'s S, L.
  // The one count per post: counters().posted reads this counter, so statistics cost no RMW.
  posted_.fetch_add(1, std::memory_order_seq_cst);
  if (sleeping_.load(std::memory_order_seq_cst) &&
      sleeping_.exchange(false, std::memory_order_seq_cst)) {  // X: one winner per sleep
    wakeups_.fetch_add(1, std::memory_order_relaxed);
    wake_(wake_context_);
  }
  return true;
}

bool Inbox::may_sleep() {
  // S, then L: the owner half of the Dekker pair with post()'s A, R.
  sleeping_.store(true, std::memory_order_seq_cst);
  const uint64_t counted = posted_.load(std::memory_order_seq_cst);
  if (static_cast<int64_t>(counted - drained_.load(std::memory_order_relaxed)) > 0) {
    // Not sleeping after all. Relaxed: this store only saves producers a wakeup; a wakeup
    // that got in before it costs one idle loop iteration (see the banner).
    sleeping_.store(false, std::memory_order_relaxed);
    return false;
  }
  return true;
}

InboxCounters Inbox::counters() const {
  return InboxCounters{
      .posted = posted_.load(std::memory_order_relaxed),
      .drained = drained_.load(std::memory_order_relaxed),
      .wakeups = wakeups_.load(std::memory_order_relaxed),
  };
}

}  // namespace engine
