#include "engine/accept.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "engine/connection.h"
#include "engine/handle.h"
#include "engine/fd_table.h"
#include "engine/reactor.h"
#include "engine/routing.h"
#include "engine/socket_ops.h"

namespace engine {
namespace {

// Closes an fd this thread holds, keeping errno (the reason it is being given up).
void close_keeping_errno(int fd) {
  const int err = errno;
  ::close(fd);
  errno = err;
}

// accept4 failed for the connection it took off the backlog, not for the listener: the next
// one may be fine (accept(2), "Error handling").
bool is_connection_error(int err) {
  switch (err) {
    case ECONNABORTED:
    case ENETDOWN:
    case EPROTO:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case ENETUNREACH:
      return true;
    default:
      return false;
  }
}

// accept4 until it takes a connection or fails for the listener's sake (see accept.h).
inline int accept_one(int listener) {
  int client;
  do {
    client = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (client < 0 && (errno == EINTR || is_connection_error(errno)));
  return client;
}

}  // namespace

int accept_connection(int listener) {
  FdSlot* server = fd_slot(listener);
  constexpr uint32_t kMarked = kAttached | kListenerNoDelay;
  const bool marked = server && (server->flags & kMarked) == kMarked;
  // A watched listener not marked yet gets the option before this accept4, so that every
  // connection the kernel clones from it from now on inherits it. The mark waits for an
  // EAGAIN: only an empty backlog proves that no connection cloned before is left in it.
  const bool listener_has_it =
      !marked && server && (server->flags & kAttached) && set_no_delay(listener) == 0;
  // A blocking listener a reactor watches would hold its thread in accept4 once the backlog
  // is empty. A marked one was non-blocking when its mark took an EAGAIN (libsock.h: setting it
  // back to blocking is unsupported); one no reactor watches keeps the mode its owner chose.
  if (!marked && server && (server->flags & kAttached) && set_non_blocking(listener) < 0) {
    return -1;
  }
  const int client = accept_one(listener);
  if (client < 0) {
    if (errno == EAGAIN && server) {
      server->flags &= ~kReadPending;
      if (listener_has_it) server->flags |= kListenerNoDelay;
    }
    return -1;
  }
  if (server) server->flags |= kReadProgress;
  if (!marked) set_no_delay(client);  // fails harmlessly on a socket that is not TCP
  return client;
}

int accept_on_foreign_listener(int listener) {
  // Made non-blocking as its watcher would (an fcntl the two threads may both make, to the
  // same end).
  if (set_non_blocking(listener) < 0) return -1;
  const int client = accept_one(listener);
  if (client >= 0) set_no_delay(client);
  return client;
}

std::size_t open_accepted(struct ::Reactor* owner, const int* fds, std::size_t n,
                          bool input_waiting) {
  Reactor* reactor = owner ? Reactor::of(owner, true) : nullptr;
  if (owner && !reactor) {
    for (std::size_t i = 0; i < n; ++i) close_keeping_errno(fds[i]);
    return 0;
  }
  if (reactor && !reactor->is_owner_thread()) {
    // One post for the batch; without memory for its copy, one post per fd, carried in the
    // call itself.
    RemoteCall call{.kind = RemoteCall::Kind::kOpenBatch, .urgent = false,
                    .input_waiting = input_waiting, .target = fd_key(-1, 0), .data = nullptr,
                    .length = n, .fn = nullptr};
    if (n > 1 && (call.data = std::malloc(n * sizeof(int)))) {
      std::memcpy(call.data, fds, n * sizeof(int));
      if (post(*reactor, call) == 0) return n;
      std::free(call.data);
      call.data = nullptr;
    }
    call.length = 1;
    std::size_t handed = 0;
    for (std::size_t i = 0; i < n; ++i) {
      call.target = fd_key(fds[i], 0);
      if (post(*reactor, call) < 0) {
        close_keeping_errno(fds[i]);
      } else {
        ++handed;
      }
    }
    return handed;
  }
  std::size_t opened = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const int fd = fds[i];
    const bool read_now = reactor && input_waiting;
    if ((read_now ? open_with_input_here(*reactor, fd) : open_known_fd(owner, fd, false)) < 0) {
      close_keeping_errno(fd);
      continue;
    }
    ++opened;
    FdSlot* slot = fd_slot(fd);
    const uint32_t generation = slot ? slot->generation.load(std::memory_order_relaxed) : 0;
    if (reactor && reactor->on_open()) reactor->on_open()(owner, fd);
    // Unless on_open closed it (and the number perhaps went to another connection, on this
    // thread or another: the generation, read with acquire, tells), its input is read now, and
    // epoll hears of it only if it outlives that.
    if (read_now && slot->generation.load(std::memory_order_acquire) == generation &&
        load_owner(*slot) == reactor) {
      reactor->read_first_input(fd, *slot);
    }
  }
  return opened;
}

}  // namespace engine
