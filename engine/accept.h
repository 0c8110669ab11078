// File: engine/accept.h
// Accepting connections: taking one off a listener's backlog, and opening accepted fds on the
// reactor that serves them, inline on its own thread or handed over in one post per batch (the
// acceptor thread, shards/server.cc). A connection costs the kernel what it needs and no
// more: accept4 makes the fd non-blocking and close-on-exec, TCP_NODELAY comes from the
// listener (set there once, not on every connection), and the fd is not checked again (the
// accept vouches for it).
// Threads: accept_connection() the thread that accepts on the listener (the listener's slot
// flags are that thread's); accept_on_foreign_listener() any; open_accepted() see there.
// Errors: -1 with errno.
#ifndef ENGINE_ACCEPT_H_
#define ENGINE_ACCEPT_H_

#include <cstddef>

#include "engine/libreact.h"

namespace engine {

// Accepts one connection waiting on `listener`: its fd, with TCP_NODELAY, not yet opened for
// the sock_ API. A listener a reactor watches is made non-blocking first if it is not (one
// fcntl per accept until its slot is marked, below: a non-TCP listener is never marked), so
// that an empty backlog returns EAGAIN instead of holding the reactor's thread; a listener no
// reactor watches keeps its mode. -1 with errno EAGAIN when none waits (the listener's slot
// then drops kReadPending), or accept4's error (EMFILE, ENFILE, ENOBUFS, ENOMEM when out of
// resources); EINTR and the errors of the one connection taken off the backlog are retried:
// ECONNABORTED (a client that gave up while queued) and the network errors accept(2) says
// Linux passes on from the new socket, to be treated like EAGAIN by retrying (ENETDOWN,
// EPROTO, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, ENETUNREACH). A success marks the
// listener's slot with kReadProgress, so its reactor calls on_data again while a batch made
// progress.
// TCP_NODELAY: a listener a reactor watches gets the option itself, which the sockets the
// kernel clones from it afterwards inherit on Linux (listen_socket() sets it before listen(),
// so the library's own listeners have it from the start). Its slot is marked
// (kListenerNoDelay) once an accept4 found the backlog empty after that, and accepts from a
// marked listener skip the per-connection setsockopt. The mark goes whenever the slot is
// (re)attached, detached, opened or closed through this library, so a new listener behind a
// reused number is asked afresh; a listener no reactor watches is never marked (nothing would
// tell its replacement from it).
int accept_connection(int listener);

// accept_connection() on a listener that a reactor on another thread watches (sock_accept off
// that thread), whose slot is that thread's: it is not read or marked; the listener is made
// non-blocking, and the connection gets TCP_NODELAY itself.
int accept_on_foreign_listener(int listener);

// Opens fds[0..n), accepted on this thread and held by nobody else, for the sock_ API on
// `owner` (NULL: on no reactor), and runs the reactor's on_open hook (Reactor::set_on_open)
// for each. When `owner` runs on another thread they travel to it in one post (kOpenBatch; one
// per fd, each carrying its fd, if the batch's copy cannot be allocated), so they cost it one
// wakeup at most, and it opens them there the same way, counting them as taken
// (Reactor::handed_over_taken) whether they open or not.
// `input_waiting`: the listener defers accepts (TCP_DEFER_ACCEPT), so each fd's first input has
// arrived: the owner calls on_data at once, inside its loop, instead of waiting for epoll to
// report it, and adds the fd to its epoll set only if the connection outlives that callback
// (a request served and closed there costs no epoll_ctl at all). Without a reactor it is
// ignored.
// An fd that cannot be opened or handed over is closed. Returns how many were opened or handed
// over; after a shortfall errno says why.
// Threads: any; with `input_waiting` on the owner's thread, only from inside its loop (a
// callback or a posted call), as on_data is.
std::size_t open_accepted(struct ::Reactor* owner, const int* fds, std::size_t n,
                          bool input_waiting);

}  // namespace engine

#endif  // ENGINE_ACCEPT_H_
