// File: engine/connection.h
// A connection's life in the sock_ API: opening an fd for it (on a reactor or on none),
// attaching it to a reactor, closing it, and the state it holds meanwhile (its slot's queue,
// layers and buffered input).
//
// The close order (close_slot) keeps fd reuse safe: once close(2) returns, another thread may
// get the same number, so everything is unlinked from the slot and the generation moves on
// before it, and the unlinked state is freed only after on_close.
// Threads: the fd's owner thread (routing.h), but for the entry points of the C calls,
// open_connection() (and open_known_fd()), attach_connection(), close_connection(),
// clear_connection() and owner_thread_slot(), which any thread may call: off the owner thread
// the first three post themselves to it, the last two refuse (see each).
// Errors: -1 with errno.
#ifndef ENGINE_CONNECTION_H_
#define ENGINE_CONNECTION_H_

#include <cerrno>
#include <cstdint>

#include "engine/fd_table.h"
#include "engine/libreact.h"


namespace engine {

class Reactor;

// Why a connection closed; sock_close_reason() reports it inside on_close. Values match the
// public SOCK_CLOSE_* constants of libsock.h.
enum class CloseReason : int { kLocal = 0, kPeer = 1, kTimeout = 2, kError = 3 };

// The reason of the close whose on_close is running on this thread (kLocal otherwise).
CloseReason current_close_reason();

// The slot of an fd opened with the sock_ API, or nullptr with errno EBADF.
inline FdSlot* open_slot(int fd) {
  FdSlot* slot = fd_slot(fd);
  if (!slot || !(slot->flags & kOpen)) {
    errno = EBADF;
    return nullptr;
  }
  return slot;
}

// The reactor the fd is attached to, or nullptr.
inline Reactor* attached_owner(const FdSlot& slot) {
  return (slot.flags & kAttached) ? slot.owner : nullptr;
}

// open_slot() for the calls that only the owner thread may make (the settings calls and the
// transport layers': they act inside the owner's callbacks): nullptr with errno EPERM on any
// other thread. Any thread.
FdSlot* owner_thread_slot(int fd);

// sock_open: makes fd non-blocking if it is not (the reactor's thread must never block, and
// sendfile takes no MSG_DONTWAIT) and opens it for the sock_ API, attached to `owner` when not
// NULL (NULL: to the reactor it is attached to already, if any); `connecting`: a connect is in
// progress (on_ready when it completes). State left by an
// earlier connection on the number is released first. When that reactor runs on another
// thread the open is posted to it (kOpen / kOpenConnecting) and 0 returned once queued: the fd
// is open, and calls on it accepted, once the owner ran it.
int open_connection(struct ::Reactor* owner, int fd, bool connecting);
// open_connection() without its look at fd's flags (is it open, is it non-blocking), for an fd
// the caller just got from the kernel non-blocking (accept4, socket) or checked already (a
// posted open). Off the owner's thread the post is kOpen / kOpenConnecting as there.
int open_known_fd(struct ::Reactor* owner, int fd, bool connecting);
// The owner thread's open of an accepted fd whose first input is waiting (TCP_DEFER_ACCEPT):
// attached to `reactor` but not yet in its epoll set, so that a connection served and closed
// in its first callback never costs an epoll_ctl. The caller runs the on_open hook, then
// Reactor::read_first_input(), which adds the fd to the set if the connection outlives it.
// Owner thread of `reactor`.
int open_with_input_here(Reactor& reactor, int fd);

// sock_attach: attaches an fd opened without a reactor to `owner` (posted off its thread).
// EBUSY for an fd attached to a reactor already, when `owner` runs on another thread.
int attach_connection(struct ::Reactor* owner, int fd);

// sock_close (graceful: once the queue is sent) and sock_force_close (now), posted off the
// owner's thread. `uuid`: the handle the call came through (EBADF unless it still names the
// fd's connection), or 0 for a plain fd. An fd attached to no reactor closes through
// `reactor` when given (it reports on_close), on that reactor's thread.
int close_connection(struct ::Reactor* reactor, int fd, bool graceful, intptr_t uuid);

// sock_clear: releases fd's sock_ state without closing the fd. Owner thread; elsewhere a no-op.
void clear_connection(int fd);

// Closes fd and releases its sock_ state in the order that keeps fd reuse safe: detach from
// its reactor (close(2) takes it out of the epoll set), unlink the queue and layers, bump the
// generation, close(2), on_close (of the fd's reactor if attached, else of `notify` when not
// NULL), then free the queue, run the layers' on_clear and free buffered input.
void close_slot(int fd, FdSlot& slot, struct ::Reactor* notify, CloseReason why);

// What a connection whose queue has just drained does next (close_if_due()).
enum class Drained {
  kStaysOpen,   // no close is due
  kMoreQueued,  // the layers' before_close hooks queued a last record: send it, then ask again
  kClosed,      // closed: the slot is no longer this connection's
  kLingering,   // sock_close()d with input unread: open until the peer's EOF (Reactor::linger)
};
// After the queue drained: closes fd if sock_close or the peer's EOF made that due, once the
// transport layers' before_close hooks (run once per connection) have queued nothing more;
// a sock_close with the peer's input unread lingers first, on an fd attached to a reactor.
// `notify`: as for close_slot().
Drained close_if_due(int fd, FdSlot& slot, struct ::Reactor* notify);

}  // namespace engine

#endif  // ENGINE_CONNECTION_H_
