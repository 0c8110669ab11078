#include "engine/connection.h"

#include <unistd.h>

#include <cstdint>

#include "engine/flush.h"
#include "engine/handle.h"
#include "engine/read_buffer.h"
#include "engine/reactor.h"
#include "engine/routing.h"
#include "engine/socket_ops.h"
#include "engine/tlc.h"
#include "engine/write_queue.h"

namespace engine {
namespace {

thread_local CloseReason tls_close_reason = CloseReason::kLocal;

// A connection's sock_ state, unlinked from its slot so that it can be freed after the slot
// (and perhaps the fd number) has moved on.
struct ConnectionState {
  Packet* queue;
  SlotExtra* extra;  // its layers and buffered input
};

// Unlinks the queue, layers and buffered input and zeroes the write counters; flags, owner and
// generation are the caller's to reset.
ConnectionState take_state(FdSlot& slot) {
  const ConnectionState state{slot.head, slot.extra};
  if (Reactor* owner = attached_owner(slot)) {
    owner->count_queued(-static_cast<int64_t>(slot.queued_bytes));
  }
  slot.head = slot.tail = nullptr;
  slot.sent = slot.queued_bytes = 0;
  // Timeouts, watermarks and layers are per connection: the next one on this number starts
  // from the reactor's.
  slot.extra = nullptr;
  return state;
}

// Frees what take_state() unlinked: returns the packets, runs each layer's on_clear (user
// code), frees the buffered input.
void free_state(int fd, const ConnectionState& state) {
  packet_chain_free(state.queue);
  if (!state.extra) return;
  tlc_clear_chain(fd, state.extra->tlc);
  read_buffer_free(state.extra->leftover);
  delete state.extra;
}

// take_state() and free_state() at once, keeping only the reactor registration.
void release_state(int fd, FdSlot& slot) {
  const ConnectionState state = take_state(slot);
  slot.flags &= kAttached;
  free_state(fd, state);
}

static_assert(kMaxLayers < UINT8_MAX, "SlotExtra::close_hooks_run counts layers");

// The layer whose before_close runs next (SlotExtra::close_hooks_run counts those run from the
// head), or nullptr. Found from the head each time: a hook may replace the layers.
sockTLC* next_close_hook(const FdSlot& slot) {
  sockTLC* layer = slot_tlc(slot);
  for (unsigned i = 0; layer && i < slot.extra->close_hooks_run; ++i) layer = layer->next;
  return layer;
}

// Runs the transport layers' before_close hooks once per connection, head down, each once
// the queue is empty (libsock.h): a layer's final record (a TLS close_notify) then follows
// those of the layers above it, which it wraps; queued together, sock_tlc_write would put it
// before them (they are records it has not wrapped yet).
enum class Hooks {
  kDone,         // none left to run (or no layers): the close may go on
  kMoreQueued,   // a hook queued output that must be sent first; the next hook runs after it
  kClosedTheFd,  // a hook closed the fd (sock_force_close): the slot is no longer this one's
};
Hooks run_close_hooks(int fd, FdSlot& slot) {
  if (!slot_tlc(slot) || (slot.flags & kCloseHooksRun)) return Hooks::kDone;
  const uint32_t generation = slot.generation.load(std::memory_order_relaxed);
  slot.flags |= kCloseHooksRun;  // also while a hook runs: a flush inside it runs no other
  while (sockTLC* layer = next_close_hook(slot)) {
    ++slot.extra->close_hooks_run;
    if (!layer->before_close) continue;
    layer->before_close(fd, layer);  // may free the layer (a close, sock_tlc_set)
    if (slot.generation.load(std::memory_order_relaxed) != generation) return Hooks::kClosedTheFd;
    if (slot.head && next_close_hook(slot)) {
      slot.flags &= ~kCloseHooksRun;
      return Hooks::kMoreQueued;
    }
  }
  return slot.head ? Hooks::kMoreQueued : Hooks::kDone;
}

}  // namespace

CloseReason current_close_reason() { return tls_close_reason; }

FdSlot* owner_thread_slot(int fd) {
  if (target_of(fd).remote) {
    errno = EPERM;
    return nullptr;
  }
  return open_slot(fd);
}

int open_connection(struct ::Reactor* owner, int fd, bool connecting) {
  if (fd < 0) {
    errno = EBADF;
    return -1;
  }
  // Also the check that fd is open (EBADF). A blocking fd would block its reactor's thread in
  // sendfile, which takes no MSG_DONTWAIT; every other way in (accept4, socket) makes the fd
  // non-blocking already.
  if (set_non_blocking(fd) < 0) return -1;
  return open_known_fd(owner, fd, connecting);
}

namespace {

// The open itself, on the thread of `reactor` (or with none): see open_known_fd(). `watch`:
// false leaves the fd out of the epoll set (open_with_input_here).
int open_here(Reactor* reactor, int fd, FdSlot& slot, bool connecting, bool watch) {
  // Whoever last closed this number released the slot with its generation store: acquire it
  // before touching the rest.
  slot.generation.load(std::memory_order_acquire);
  // Still held by a reactor another thread drives (an attached fd closed with close(2) and
  // its number reused): refused before release_state() and the flags touch that thread's state.
  if (reactor && reactor->held_by_other_thread(slot)) {
    errno = EEXIST;
    return -1;
  }
  release_state(fd, slot);
  // Owned before it is open: other threads route by the (generation, owner) pair (target_of),
  // and an open generation without an owner would run their call inline, on this slot, from
  // their own thread. (An attached slot has its owner already.)
  const bool preset = reactor && !(slot.flags & kAttached);
  if (preset) set_owner(slot, reactor);
  mark_open(slot);  // a new connection: calls and events stamped with the old one are stale
  slot.flags |= kOpen;
  if (connecting) slot.flags |= kConnecting;
  if (!reactor) reactor = attached_owner(slot);  // re-arm its registration, new generation
  if (reactor && reactor->attach(fd, slot, watch) < 0) {
    const int err = errno;
    slot.flags &= ~(kOpen | kConnecting);
    mark_closed(slot);
    if (preset) set_owner(slot, nullptr);
    errno = err;
    return -1;
  }
  if (reactor) reactor->start_timers(fd, slot, watch);
  return 0;
}

}  // namespace

int open_known_fd(struct ::Reactor* owner, int fd, bool connecting) {
  Reactor* reactor = owner ? Reactor::of(owner, true) : nullptr;
  if (owner && !reactor) return -1;
  FdSlot* slot = fd_slot_make(fd);
  if (!slot) return -1;
  // Without a reactor given, the fd keeps the one it is attached to, which may run elsewhere.
  Reactor* const runs_it = reactor ? reactor : target_of(fd).remote;
  if (runs_it && !runs_it->is_owner_thread()) {
    // Refused here, while the caller still has fd: on runs_it's thread the open would find
    // another reactor's hold (open_here) and close the fd it was handed, under that reactor.
    // The generation first: an opener sets the owner before it publishes an open generation,
    // so an open one read here comes with its owner (open_here, preset).
    const bool open = is_open_generation(slot->generation.load(std::memory_order_acquire));
    Reactor* const held = load_owner(*slot);
    if (held && held != runs_it) {
      errno = EEXIST;
      return -1;
    }
    // Open with no owner (sock_open(NULL, fd) before): its state is released here, by its
    // one user, and the slot closed; else the caller's calls (sock_read and sock_flush check
    // only the flags) would run inline while runs_it releases it. Until runs_it has opened
    // it they fail with EBADF, and if the post fails the fd is simply not open.
    if (!held && open) {
      release_state(fd, *slot);
      mark_closed(*slot);
    }
    return post(*runs_it, connecting ? RemoteCall::Kind::kOpenConnecting : RemoteCall::Kind::kOpen,
                fd, 0);
  }
  return open_here(reactor, fd, *slot, connecting, true);
}

int open_with_input_here(Reactor& reactor, int fd) {
  FdSlot* slot = fd_slot_make(fd);
  return slot ? open_here(&reactor, fd, *slot, false, false) : -1;
}

int attach_connection(struct ::Reactor* owner, int fd) {
  Reactor* reactor = Reactor::of(owner, true);
  if (!reactor) return -1;
  const Target t = target_of(fd);
  if (!t.slot || !is_open_generation(t.generation)) {
    errno = EBADF;
    return -1;
  }
  if (!reactor->is_owner_thread()) {
    // The caller holds the unattached fd (one thread at a time): once the owner is published,
    // every later call routes to the reactor's thread, which attaches it. An fd attached
    // already would have to leave its reactor first, on that reactor's thread.
    if (load_owner(*t.slot)) {
      errno = EBUSY;
      return -1;
    }
    set_owner(*t.slot, reactor);
    if (post(*reactor, RemoteCall::Kind::kAttach, fd, t.generation) < 0) {
      set_owner(*t.slot, nullptr);
      return -1;
    }
    return 0;
  }
  // Held by a reactor another thread drives (Reactor::held_by_other_thread, as target_of
  // found it): refused before any of its state is read.
  if (t.remote) {
    errno = EEXIST;
    return -1;
  }
  FdSlot* slot = open_slot(fd);
  if (!slot) return -1;
  const bool fresh = attached_owner(*slot) != reactor;
  if (reactor->attach(fd, *slot) < 0) return -1;
  if (fresh) reactor->start_timers(fd, *slot);  // the reactor's idle timeout applies from now
  if (slot->head) reactor->want_flush(fd, *slot);
  return 0;
}

int close_connection(struct ::Reactor* reactor, int fd, bool graceful, intptr_t uuid) {
  const Target t = target_of(fd);
  if (!t.slot || (uuid && !uuid_matches(uuid, t.generation))) {
    errno = EBADF;
    return -1;
  }
  using Kind = RemoteCall::Kind;
  if (t.remote) {
    return post(*t.remote, graceful ? Kind::kClose : Kind::kForceClose, fd, t.generation);
  }
  FdSlot* slot = t.slot;
  // Closed, and no reactor holds it: EBADF without reading the flags, which the thread that
  // closed it may still be clearing (close_slot() orders them before its last generation
  // store only; the generation read here may be mark_closed()'s, before them).
  if (!is_open_generation(t.generation) && !load_owner(*slot)) {
    errno = EBADF;
    return -1;
  }
  if (!(slot->flags & (kOpen | kAttached))) {
    errno = EBADF;
    return -1;
  }
  // An fd without a reactor closes through `reactor` (seed contract: its on_close reports it,
  // and for a graceful close it drives the drain), on that reactor's thread.
  Reactor* through = (reactor && !attached_owner(*slot)) ? Reactor::of(reactor, true) : nullptr;
  if (through && !through->is_owner_thread()) {
    set_owner(*slot, through);  // later calls for the fd route there too, behind this one
    if (post(*through, graceful ? Kind::kCloseHere : Kind::kForceCloseHere, fd, t.generation) < 0) {
      set_owner(*slot, nullptr);
      return -1;
    }
    return 0;
  }
  if (!graceful || !(slot->flags & kOpen)) {  // a plain attached fd has no queue to wait for
    close_slot(fd, *slot, reactor, CloseReason::kLocal);
    return 0;
  }
  if (reactor && !attached_owner(*slot)) {
    if (!through || through->attach(fd, *slot) < 0) {
      close_slot(fd, *slot, reactor, CloseReason::kLocal);
      return 0;
    }
    // Its drain is the reactor's now, and so is the bound on it: a peer that stops reading
    // meets the idle timeout (and the fd's own timeout or deadline, which it keeps).
    through->resume_timers(fd, *slot);
  }
  slot->flags |= kClosing;
  schedule_flush(fd, *slot);
  return 0;
}

void clear_connection(int fd) {
  if (target_of(fd).remote) return;  // owner thread only: see libsock.h
  FdSlot* slot = fd_slot(fd);
  if (!slot) return;
  const bool was_open = slot->flags & kOpen;
  release_state(fd, *slot);
  if (!was_open) return;
  mark_closed(*slot);
  // Still attached as a plain fd: re-arm its registration with the new generation.
  if (Reactor* owner = attached_owner(*slot)) owner->attach(fd, *slot);
}

void close_slot(int fd, FdSlot& slot, struct ::Reactor* notify, CloseReason why) {
  // Closed to other threads before detach() clears the owner: they route a call by the
  // (generation, owner) pair (target_of), and an open generation without an owner would run
  // their call inline, on this slot, from their own thread.
  mark_closed(slot);
  if (Reactor* owner = attached_owner(slot)) {
    owner->assert_owner_thread();
    owner->detach(fd, slot, true);  // close(2) below leaves the epoll set
    notify = owner->api();
  }
  // Unlink everything first: once close(2) returns, another thread may get this number.
  const ConnectionState state = take_state(slot);
  slot.flags = 0;
  set_owner(slot, nullptr);
  // Last write to the slot: the generation stored again with release hands the slot to
  // whoever reuses the number (its opener acquires it).
  slot.generation.store(slot.generation.load(std::memory_order_relaxed), std::memory_order_release);
  ::close(fd);
  // The reason holds for the layers' on_clear too: a TLS layer counts why a handshake ended.
  const CloseReason outer = tls_close_reason;
  tls_close_reason = why;
  if (notify && notify->on_close) notify->on_close(notify, fd);
  free_state(fd, state);
  tls_close_reason = outer;
}

Drained close_if_due(int fd, FdSlot& slot, struct ::Reactor* notify) {
  if (!(slot.flags & (kClosing | kEof))) return Drained::kStaysOpen;
  switch (run_close_hooks(fd, slot)) {
    case Hooks::kMoreQueued:
      return Drained::kMoreQueued;
    case Hooks::kClosedTheFd:  // closed once, on_close reported; the number may be another's
      return Drained::kClosed;
    case Hooks::kDone:
      break;
  }
  // Input waiting unread would make close(2) send a reset, which destroys what the kernel has
  // not delivered yet. A lingering close, or one asked for, keeps SlotExtra::linger set.
  if ((slot.flags & (kClosing | kEof | kFailed)) == kClosing &&
      ((slot.flags & kReadPending) || slot.extra)) {
    Reactor* owner = attached_owner(slot);
    if (owner && owner->linger(fd, slot)) return Drained::kLingering;
  }
  close_slot(fd, slot, notify, (slot.flags & kClosing) ? CloseReason::kLocal : CloseReason::kPeer);
  return Drained::kClosed;
}

}  // namespace engine
