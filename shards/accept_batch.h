// File: shards/accept_batch.h
// Accepting from a listener in bounded batches: what the acceptor thread (SOCK_ACCEPT_THREAD)
// and each SO_REUSEPORT shard do when their listener reports connections. The batch bounds the
// time one burst of connects keeps the watching reactor from its other work (its
// connections, its timers, a stop); the reactor calls on_data again while a batch made
// progress (accept_connection marks the listener), so nothing waits for an edge that will not
// come.
// Threads: the thread of `watcher`, the reactor the listener is attached to.
#ifndef SHARDS_ACCEPT_BATCH_H_
#define SHARDS_ACCEPT_BATCH_H_

#include <cerrno>

#include "engine/accept.h"
#include "engine/libreact.h"
#include "shards/accept_pause.h"

namespace shards {

// Accepts up to `batch` connections waiting on `listener` and calls accepted(fd) with each
// fd, not yet opened (engine/accept.h): the caller opens it or hands it on. Ends at the first
// accept4 failure: EAGAIN when the backlog is empty. Any other failure (lack of fds or
// memory; EPERM from a security module, which takes nothing off the backlog) pauses the
// listener (AcceptPause), logged: retrying at once would spin, and waiting for the next
// connect's edge would leave the backlog unserved on a quiet server.
template <typename Accepted>
void accept_batch(struct Reactor* watcher, int listener, unsigned batch, AcceptPause& pause,
                  Accepted&& accepted) {
  for (unsigned i = 0; i < batch; ++i) {
    const int fd = engine::accept_connection(listener);
    if (fd < 0) {
      if (errno != EAGAIN) pause.pause(watcher, listener, errno);
      return;
    }
    accepted(fd);
  }
}

}  // namespace shards

#endif  // SHARDS_ACCEPT_BATCH_H_
