// File: shards/accept_batch.h
// Accepting from a listener in bounded batches: what the acceptor thread (SOCK_ACCEPT_THREAD)
// and each SO_REUSEPORT shard do when their listener reports connections. The batch bounds the
// time one burst of connects keeps the watching reactor from its other work (its
// connections, its timers, a stop); the reactor calls on_data again while a batch made
// progress (sock_accept marks the listener), so nothing waits for an edge that will not come.
// Threads: the thread of `watcher`, the reactor the listener is attached to.
#ifndef SHARDS_ACCEPT_BATCH_H_
#define SHARDS_ACCEPT_BATCH_H_

#include <cerrno>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "shards/accept_pause.h"

namespace shards {

// Accepts up to `batch` connections waiting on `listener`, each opened on the reactor that
// place() returns (sock_accept posts it there when that reactor runs on another thread), and
// calls accepted(fd) after each. Ends at the first accept4 failure: EAGAIN when the backlog is
// empty; lack of fds or memory pauses the listener (AcceptPause) instead of spinning on it.
template <typename Place, typename Accepted>
void accept_batch(struct Reactor* watcher, int listener, unsigned batch, AcceptPause& pause,
                  Place&& place, Accepted&& accepted) {
  for (unsigned i = 0; i < batch; ++i) {
    const int fd = sock_accept(place(), listener);
    if (fd < 0) {
      if (is_exhaustion(errno)) pause.pause(watcher, listener, errno);
      return;
    }
    accepted(fd);
  }
}

}  // namespace shards

#endif  // SHARDS_ACCEPT_BATCH_H_
