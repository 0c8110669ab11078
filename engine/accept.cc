#include "engine/accept.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "engine/connection.h"
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

}  // namespace

int accept_connection(int listener) {
  FdSlot* server = fd_slot(listener);
  int client;
  do {
    client = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (client < 0 && (errno == EINTR || errno == ECONNABORTED));
  if (client < 0) {
    if (errno == EAGAIN && server) server->flags &= ~kReadPending;
    return -1;
  }
  if (!server) {
    set_no_delay(client);
    return client;
  }
  server->flags |= kReadProgress;
  if (!(server->flags & kListenerNoDelay)) {
    // This one was accepted before the listener had it (if it did not already). A listener
    // that refuses it (not TCP), or that no reactor watches, is asked again next time.
    set_no_delay(client);
    if ((server->flags & kAttached) && set_no_delay(listener) == 0) {
      server->flags |= kListenerNoDelay;
    }
  }
  return client;
}

std::size_t open_accepted(struct ::Reactor* owner, const int* fds, std::size_t n) {
  Reactor* reactor = owner ? Reactor::of(owner, true) : nullptr;
  if (owner && !reactor) {
    for (std::size_t i = 0; i < n; ++i) close_keeping_errno(fds[i]);
    return 0;
  }
  if (n > 1 && !reactor->is_owner_thread()) {
    // One post for the batch; without memory for its copy, one post per fd as below.
    if (auto* copy = static_cast<int*>(std::malloc(n * sizeof(int)))) {
      std::memcpy(copy, fds, n * sizeof(int));
      if (post(*reactor, RemoteCall::Kind::kOpenBatch, -1, 0, copy, n) == 0) return n;
      std::free(copy);
    }
  }
  std::size_t opened = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (open_known_fd(owner, fds[i], false) < 0) {
      close_keeping_errno(fds[i]);
    } else {
      ++opened;
    }
  }
  return opened;
}

}  // namespace engine
