// The sock_ calls that work on an fd's state. Each resolves the fd's slot, then hands the
// work to the write queue, the transport layers or the fd's reactor.
#include "engine/libsock.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>

#include "engine/fd_table.h"
#include "engine/reactor.h"
#include "engine/read_buffer.h"
#include "engine/socket_ops.h"
#include "engine/tlc.h"
#include "engine/write_queue.h"

namespace engine {
namespace {

// The slot of an fd opened with the sock_ API, or nullptr with errno EBADF.
FdSlot* open_slot(int fd) {
  FdSlot* slot = fd_slot(fd);
  if (!slot || !(slot->flags & kOpen)) {
    errno = EBADF;
    return nullptr;
  }
  return slot;
}

// Releases queue, layers and buffered input, keeping the reactor registration.
void release_state(int fd, FdSlot& slot) {
  const ConnectionState state = take_state(slot);
  slot.flags &= kAttached;
  free_state(fd, state);
}

// A connect still in progress on an fd without a reactor: ask the kernel directly.
bool connect_finished(int fd, FdSlot& slot) {
  pollfd p{fd, POLLOUT, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  slot.flags &= ~kConnecting;
  if (err) {
    slot.flags |= kFailed;
    slot.last_error = err;
  }
  return true;
}

// The flush of an fd without a reactor: nobody else will continue, so write until EAGAIN.
ssize_t flush_unattached(int fd, FdSlot& slot) {
  if ((slot.flags & kConnecting) && !connect_finished(fd, slot)) return 0;
  std::size_t written = 0;
  for (;;) {
    const WriteResult r = (slot.flags & kFailed)
                              ? WriteResult::kError
                              : queue_write(fd, slot, SIZE_MAX, &written);
    if (r == WriteResult::kError) {
      const int err = slot.last_error;
      close_slot(fd, slot, nullptr);
      errno = err;
      return -1;
    }
    if (r != WriteResult::kDrained || !(slot.flags & (kClosing | kEof))) break;
    if (run_close_hooks(fd, slot)) continue;
    close_slot(fd, slot, nullptr);
    break;
  }
  return static_cast<ssize_t>(written);
}

// Queued output goes out at the reactor's flush step (after the current callback batch), or
// now for an fd without a reactor.
void schedule_flush(int fd, FdSlot& slot) {
  if ((slot.flags & kAttached) && slot.owner) {
    slot.owner->want_flush(fd, slot);
  } else {
    flush_unattached(fd, slot);
  }
}

// A failure seen by a read or a layer: the connection closes at the next flush step.
void fail(int fd, FdSlot& slot, int err) {
  slot.flags |= kFailed;
  slot.flags &= ~kReadPending;
  slot.last_error = err;
  if ((slot.flags & kAttached) && slot.owner) slot.owner->want_flush(fd, slot);
}

ssize_t plain_read(int fd, char* out, std::size_t count, bool* drained) {
  for (;;) {
    const ssize_t n = recv(fd, out, count, 0);
    if (n > 0) return n;
    if (n == 0) {
      errno = 0;
      return -1;
    }
    if (errno == EINTR) continue;
    *drained = errno == EAGAIN;
    return *drained ? 0 : -1;
  }
}

}  // namespace
}  // namespace engine

using engine::FdSlot;



extern "C" {

int8_t init_socklib(size_t max_fd) {
  if (max_fd > engine::kMaxFds) {
    errno = EINVAL;
    return -1;
  }
  return 0;
}

int sock_open(struct Reactor* owner, int fd) {
  if (fd < 0 || fcntl(fd, F_GETFL) < 0) {
    errno = EBADF;
    return -1;
  }
  FdSlot* slot = engine::fd_slot_make(fd);
  if (!slot) return -1;
  engine::Reactor* reactor = owner ? engine::Reactor::of(owner, true) : nullptr;
  if (owner && !reactor) return -1;
  engine::release_state(fd, *slot);
  // A new connection on this number: calls and events stamped with the old one are stale.
  slot->generation.fetch_add(1, std::memory_order_release);
  slot->flags |= engine::kOpen;
  if (!reactor && (slot->flags & engine::kAttached)) reactor = slot->owner;  // re-arm its registration
  if (reactor && reactor->attach(fd, *slot) < 0) {
    slot->flags &= ~engine::kOpen;
    return -1;
  }
  return 0;
}

int sock_attach(struct Reactor* owner, int fd) {
  FdSlot* slot = engine::open_slot(fd);
  if (!slot) return -1;
  engine::Reactor* reactor = engine::Reactor::of(owner, true);
  if (!reactor || reactor->attach(fd, *slot) < 0) return -1;
  if (slot->head) reactor->want_flush(fd, *slot);
  return 0;
}

int sock_accept(struct Reactor* owner, int server_fd) {
  FdSlot* server = engine::fd_slot(server_fd);
  int client;
  do {
    client = accept4(server_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    // ECONNABORTED: that client gave up while queued; the next one may be fine.
  } while (client < 0 && (errno == EINTR || errno == ECONNABORTED));
  if (client < 0) {
    if (errno == EAGAIN && server) server->flags &= ~engine::kReadPending;
    return -1;
  }
  if (server) server->flags |= engine::kReadProgress;
  engine::set_no_delay(client);
  if (sock_open(owner, client) < 0) {
    const int err = errno;
    close(client);
    errno = err;
    return -1;
  }
  return client;
}

int sock_connect(struct Reactor* owner, const char* address, const char* port) {
  addrinfo* list = engine::resolve(address, port, false);
  if (!list) return -1;
  int fd = -1;
  int err = EADDRNOTAVAIL;
  for (addrinfo* ai = list; ai && fd < 0; ai = ai->ai_next) {
    fd = engine::open_stream_socket(ai->ai_family);
    if (fd < 0) {
      err = errno;
      continue;
    }
    engine::set_no_delay(fd);
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
      err = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(list);
  if (fd < 0) {
    errno = err;
    return -1;
  }
  if (sock_open(owner, fd) < 0) {
    err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  // Even a connect that finished at once reports through on_ready: adding a writable fd to
  // epoll raises EPOLLOUT immediately.
  engine::fd_slot(fd)->flags |= engine::kConnecting;
  return fd;
}

void sock_clear(int fd) {
  if (FdSlot* slot = engine::fd_slot(fd)) engine::release_state(fd, *slot);
}

int sock_status(int fd) {
  if (!engine::open_slot(fd)) return -1;
  return fcntl(fd, F_GETFL);
}

ssize_t sock_read(int fd, void* buf, size_t count) {
  FdSlot* slot = engine::open_slot(fd);
  if (!slot) return -1;
  if (!buf && count) {
    errno = EINVAL;
    return -1;
  }
  if (!count) return 0;
  char* out = static_cast<char*>(buf);
  if (slot->leftover) {
    slot->flags |= engine::kReadProgress;
    return static_cast<ssize_t>(engine::read_buffer_take(slot->leftover, out, count));
  }
  if (slot->flags & (engine::kEof | engine::kFailed)) {
    errno = (slot->flags & engine::kFailed) ? slot->last_error : 0;
    return -1;
  }
  // An attached fd learns of new input from its next epoll edge, which sets kReadPending: until
  // then the kernel has nothing (the last read drained it), so don't ask.
  const uint32_t known = engine::kAttached | engine::kReadPending;
  if (!slot->tlc && (slot->flags & known) == engine::kAttached) return 0;
  bool drained = false;
  const ssize_t n = slot->tlc ? engine::tlc_read(fd, *slot, out, count, &drained)
                              : engine::plain_read(fd, out, count, &drained);
  if (n > 0) {
    slot->flags |= engine::kReadProgress;
    if (slot->leftover) slot->flags |= engine::kReadPending;  // plaintext waits: call on_data again
    // A short read emptied the socket: data arriving later raises a new edge. Not so when the
    // peer already shut down (the EOF behind the data raises none) or without layers' buffering.
    const uint32_t shut = engine::kPeerShut | engine::kHangup;
    if (!slot->tlc && static_cast<size_t>(n) < count && !(slot->flags & shut)) {
      slot->flags &= ~engine::kReadPending;
    }
    return n;
  }
  if (n == 0) {
    if (drained) slot->flags &= ~engine::kReadPending;
    return 0;
  }
  if (errno == 0) {  // EOF: the queue still drains, then the fd closes
    slot->flags = (slot->flags | engine::kEof) & ~engine::kReadPending;
    if ((slot->flags & engine::kAttached) && slot->owner) slot->owner->want_flush(fd, *slot);
    errno = 0;
    return -1;
  }
  const int err = errno;
  engine::fail(fd, *slot, err);
  errno = err;
  return -1;
}

ssize_t sock_write2_fn(struct SockWriteOpt opt) {
  void* owned = (opt.move || opt.file) ? const_cast<void*>(opt.buffer) : nullptr;
  auto give_up = [&](int err) -> ssize_t {
    if (owned && opt.file) {
      fclose(static_cast<FILE*>(owned));
    } else {
      free(owned);
    }
    errno = err;
    return -1;
  };
  FdSlot* slot = engine::open_slot(opt.fd);
  if (!slot) return give_up(EBADF);
  if (slot->flags & (engine::kClosing | engine::kFailed)) return give_up(EPIPE);
  if (!opt.buffer) return (opt.length || opt.file) ? give_up(EINVAL) : 0;
  if (!opt.length && !opt.file) {  // nothing to send; a .move buffer is still ours to free
    free(owned);
    return 0;
  }
  int r;
  if (opt.file) {
    r = engine::queue_file(*slot, static_cast<FILE*>(owned), opt.length, opt.urgent);
  } else if (opt.move) {
    r = engine::queue_move(*slot, owned, opt.length, opt.urgent);
  } else {
    r = engine::queue_copy(*slot, opt.buffer, opt.length, opt.urgent);
  }
  if (r < 0) {
    const int err = errno;
    if (err == EPROTO) engine::fail(opt.fd, *slot, err);
    errno = err;
    return -1;
  }
  engine::schedule_flush(opt.fd, *slot);
  return 0;
}

ssize_t sock_flush(int fd) {
  FdSlot* slot = engine::open_slot(fd);
  if (!slot) return -1;
  if ((slot->flags & engine::kAttached) && slot->owner) {
    return slot->owner->flush_fd(fd, *slot, SIZE_MAX, false);
  }
  return engine::flush_unattached(fd, *slot);
}

void sock_close(struct Reactor* reactor, int fd) {
  FdSlot* slot = engine::fd_slot(fd);
  if (!slot || !(slot->flags & (engine::kOpen | engine::kAttached))) return;
  if (!(slot->flags & engine::kOpen)) {  // a plain attached fd has no queue to wait for
    engine::close_slot(fd, *slot, reactor);
    return;
  }
  slot->flags |= engine::kClosing;
  // With a reactor given, the reactor drives the drain and reports on_close (seed contract).
  if (!(slot->flags & engine::kAttached) && reactor) {
    engine::Reactor* r = engine::Reactor::of(reactor, true);
    if (!r || r->attach(fd, *slot) < 0) {
      engine::close_slot(fd, *slot, reactor);
      return;
    }
  }
  engine::schedule_flush(fd, *slot);
}

void sock_force_close(struct Reactor* reactor, int fd) {
  FdSlot* slot = engine::fd_slot(fd);
  if (!slot || !(slot->flags & (engine::kOpen | engine::kAttached))) return;
  engine::close_slot(fd, *slot, reactor);
}

struct Packet* sock_checkout_packet(void) { return engine::packet_new(engine::pool_for(nullptr)); }

ssize_t sock_send_packet(int fd, struct Packet* packet) {
  FdSlot* slot = engine::open_slot(fd);
  if (!slot) return -1;
  if (!packet) {
    errno = EINVAL;
    return -1;
  }
  if (slot->flags & (engine::kClosing | engine::kFailed)) {
    errno = EPIPE;
    return -1;
  }
  if (engine::queue_chain(*slot, packet, 0) < 0) return -1;
  engine::schedule_flush(fd, *slot);
  return 0;
}

void sock_free_packet(struct Packet* packet) { engine::packet_chain_free(packet); }

struct sockTLC* sock_tlc_get(int fd) {
  FdSlot* slot = engine::open_slot(fd);
  return slot ? slot->tlc : nullptr;
}

int sock_tlc_set(int fd, struct sockTLC* tlc) {
  FdSlot* slot = engine::open_slot(fd);
  if (!slot) return -1;
  if (engine::tlc_depth(tlc) > engine::kMaxLayers) {
    errno = EINVAL;
    return -1;
  }
  sockTLC* old = slot->tlc;
  slot->tlc = tlc;
  engine::tlc_clear_chain(fd, old);
  return 0;
}

int sock_tlc_add(int fd, struct sockTLC* tlc) {
  FdSlot* slot = engine::open_slot(fd);
  if (!slot) return -1;
  if (!tlc || engine::tlc_depth(slot->tlc) >= engine::kMaxLayers) {
    errno = EINVAL;
    return -1;
  }
  tlc->next = slot->tlc;
  slot->tlc = tlc;
  return 0;
}

int sock_tlc_write(int fd, struct sockTLC* from, const void* data, size_t length) {
  FdSlot* slot = engine::open_slot(fd);
  if (!slot) return -1;
  // Layer-produced bytes are records of their own, wrapped only by the layers below `from`.
  unsigned skip = 0;
  for (sockTLC* layer = slot->tlc; layer != from; layer = layer->next, ++skip) {
    if (!layer) {
      errno = EINVAL;  // `from` is not one of fd's layers
      return -1;
    }
  }
  if (from) ++skip;
  if (!data && length) {
    errno = EINVAL;
    return -1;
  }
  const char* bytes = static_cast<const char*>(data);
  while (length) {
    Packet* p = engine::packet_new(engine::pool_for(slot));
    if (!p) return -1;
    const std::size_t n = length < engine::kRecordPayload ? length : engine::kRecordPayload;
    std::copy(bytes, bytes + n, p->internal_memory);
    p->length = static_cast<ssize_t>(n);
    engine::queue_chain(*slot, p, skip);  // cannot fail for a plain memory packet
    bytes += n;
    length -= n;
  }
  if ((slot->flags & engine::kAttached) && slot->owner) slot->owner->want_flush(fd, *slot);
  return 0;
}

int sock_pool_stats(struct Reactor* reactor, struct SockPoolStats* stats) {
  if (!stats) {
    errno = EINVAL;
    return -1;
  }
  alloc::BlockPool* pool = &engine::fallback_pool();
  if (reactor) {
    engine::Reactor* r = engine::Reactor::of(reactor, false);
    if (!r) {
      errno = EINVAL;
      return -1;
    }
    pool = &r->pool();
  }
  const alloc::PoolCounters c = pool->counters();
  *stats = SockPoolStats{c.checkouts, c.returns, c.hits,      c.misses,
                         c.outstanding, c.high_water, c.chunk_bytes};
  return 0;
}

size_t sock_packet_footprint(void) {
  const alloc::BlockPool& pool = engine::fallback_pool();
  return alloc::BlockPool::bytes_per_block(pool.chunk_bytes(), pool.blocks_per_chunk());
}

}  // extern "C"
