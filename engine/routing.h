// File: engine/routing.h
// Where a sock_ call runs. Every reactor, driven by a shard or by the program itself, owns the
// fds attached to it; its owner thread is the thread that created it or last ran its loop.
// A call made on the owner thread runs inline, with no lock. A call made on any other thread
// is posted to the owner's inbox (inbox.h) as a RemoteCall stamped with the fd's generation,
// returns 0 once queued, and runs on the owner in its next loop iteration, after the wait for
// events (run_posted; at most Inbox::kDrainBatch calls per iteration), or is dropped there if
// the fd was closed meanwhile. An fd attached to no
// reactor has no owner: its calls run inline, one thread at a time (libsock.h).
// Threads: target_of(), post() and post_write() any thread; run_posted() the owner thread of
// the reactor it is given; discard_posted() any thread.
// Errors: -1 with errno (ENOMEM when a call cannot be queued).
#ifndef ENGINE_ROUTING_H_
#define ENGINE_ROUTING_H_

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "engine/fd_table.h"
#include "engine/libsock.h"
#include "engine/reactor.h"
#include "engine/remote.h"

namespace engine {

// Where a call for one fd runs. slot: nullptr when the table has no page for fd (never
// opened). remote: the reactor to post to, or nullptr to run inline. generation: the slot's,
// read with the owner as one pair; odd while the fd is open.
struct Target {
  FdSlot* slot;
  Reactor* remote;
  uint32_t generation;
};

inline Target target_of(int fd) {
  Target t{fd_slot(fd), nullptr, 0};
  if (!t.slot) return t;
  // The common case, a call from inside the owner's own callbacks: only this thread changes
  // the owner of a slot it owns, so the pair cannot be torn and one load of each suffices.
  Reactor* const self = Reactor::current();
  if (self && load_owner(*t.slot) == self) {
    t.generation = t.slot->generation.load(std::memory_order_acquire);
    return t;
  }
  for (;;) {
    // Owner and generation are read as one pair: another thread changes the owner only with a
    // new generation (close, re-open), so an unchanged generation vouches for the owner.
    const uint32_t g = t.slot->generation.load(std::memory_order_acquire);
    Reactor* owner = load_owner(*t.slot);
    if (t.slot->generation.load(std::memory_order_acquire) != g) continue;
    t.generation = g;
    if (owner && owner != self && !owner->is_owner_thread()) t.remote = owner;
    return t;
  }
}

// Queues a call for `to`'s owner thread, stamped with `generation`, and makes sure the owner
// will run it without any other event (the inbox's wakeup protocol). 0, or -1 with errno
// ENOMEM: nothing was queued and `data` is still the caller's.
int post(Reactor& to, RemoteCall::Kind kind, int fd, uint32_t generation, void* data = nullptr,
         std::size_t length = 0, bool urgent = false);
// The same for a call the caller filled in whole.
int post(Reactor& to, const RemoteCall& call);

// Posts a write to t.remote: the bytes travel as a malloc'd copy (the caller's own buffer with
// .move), a FILE* as is. 0 once queued, or -1 with errno ENOMEM; what the write owned (.move,
// .file) is freed on error, as libsock.h promises.
ssize_t post_write(const Target& t, int fd, const SockWriteOpt& opt);

// Runs one posted call on its reactor's owner thread: the call the caller would have run
// inline, through the same code, with the generation it carried (a write or close for a
// connection that closed meanwhile is dropped and frees what it carries).
void run_posted(Reactor& reactor, const RemoteCall& call);
// Frees what a posted call owns without running it (its reactor is gone). Any thread.
void discard_posted(const RemoteCall& call);

}  // namespace engine

#endif  // ENGINE_ROUTING_H_
