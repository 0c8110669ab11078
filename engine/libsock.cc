// The sock_ calls that work on an fd's state. Each call first finds where it must run (the
// fd's owner thread, see remote.h): off that thread it is posted, stamped with the fd's
// generation; on it, the work goes to the write queue, the transport layers or the reactor.
#include "engine/libsock.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "engine/fd_table.h"
#include "engine/reactor.h"
#include "engine/read_buffer.h"
#include "engine/remote.h"
#include "engine/socket_ops.h"
#include "engine/tlc.h"
#include "engine/write_queue.h"

namespace engine {
namespace {

// ---- Where a call runs -------------------------------------------------------------------

// `remote` is null when the call runs inline: on the fd's owner thread, or for an fd whose
// owner takes no cross-thread calls (the seed's single-threaded use). Otherwise the call is
// posted to `remote`, stamped with `generation`.
struct Target {
  FdSlot* slot;
  Reactor* remote;
  uint32_t generation;  // seen now; odd while the fd is open
};

Target target_of(int fd) {
  Target t{fd_slot(fd), nullptr, 0};
  if (!t.slot) return t;
  // The common case, a call from the owner's own thread: only this thread changes the owner
  // of a slot it owns, so the pair cannot be torn and one load of each suffices.
  if (Reactor* const self = Reactor::current(); self && load_owner(*t.slot) == self) {
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
    if (owner && owner->inbox() && Reactor::current() != owner) t.remote = owner;
    return t;
  }
}

// Posts a call to t.remote. 0, or -1 with errno ENOMEM (then the data is still the caller's).
int post(const Target& t, RemoteCall::Kind kind, int fd, void* data, std::size_t length,
         bool urgent) {
  const RemoteCall call{kind, urgent, fd, t.generation, data, length, nullptr};
  if (t.remote->inbox()->post(call)) return 0;
  errno = ENOMEM;
  return -1;
}

// Handles: the generation (31 bits, so a handle is never negative) above the fd number.
constexpr uint32_t kHandleGenerationMask = 0x7fffffffu;

intptr_t make_uuid(int fd, uint32_t generation) {
  return static_cast<intptr_t>((uint64_t{generation & kHandleGenerationMask} << 32) |
                               static_cast<uint32_t>(fd));
}
int uuid_fd(intptr_t uuid) { return static_cast<int>(static_cast<uint32_t>(uuid)); }
bool uuid_matches(intptr_t uuid, uint32_t generation) {
  return uuid >= 0 && (static_cast<uint64_t>(uuid) >> 32) == (generation & kHandleGenerationMask);
}

// ---- Owner-thread helpers ----------------------------------------------------------------

// The slot of an fd opened with the sock_ API, or nullptr with errno EBADF. Owner thread.
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
    set_slot_error(slot, err);
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
      const int err = slot_error(slot);
      close_slot(fd, slot, nullptr, CloseReason::kError);
      errno = err;
      return -1;
    }
    if (r != WriteResult::kDrained || !(slot.flags & (kClosing | kEof))) break;
    if (run_close_hooks(fd, slot)) continue;
    close_slot(fd, slot, nullptr,
               (slot.flags & kClosing) ? CloseReason::kLocal : CloseReason::kPeer);
    break;
  }
  return static_cast<ssize_t>(written);
}

Reactor* attached_owner(const FdSlot& slot) {
  return (slot.flags & kAttached) ? slot.owner : nullptr;
}

// The first copy written to an attached fd with an empty queue in a callback goes to the
// kernel at once (one send) instead of into a packet for the flush step: nothing is queued
// ahead of it, so the order holds, and the common reply (one write per input) costs no packet,
// no copy and no flush-list visit. Later writes queue as before and leave together in one
// writev at the flush step (kSentDirect: cleared when the fd's next on_data starts, or at its
// flush step), so many small writes still cost one syscall after the first. Not with transport layers (they wrap at the flush), while
// connecting, or after the kernel refused (kWriteBlocked: the queue waits for the edge).
// Returns the owner, or nullptr for the queue path.
Reactor* eager_writer(const FdSlot& slot) {
  // kHangup: the peer is gone; the queue path keeps such a close a peer close (call_on_data).
  constexpr uint32_t kMask = kAttached | kConnecting | kWriteBlocked | kSentDirect | kHangup;
  if (slot.head || (slot.flags & kMask) != kAttached || slot_tlc(slot)) return nullptr;
  return slot.owner;
}

// Queued output goes out at the reactor's flush step (after the current callback batch), or
// now for an fd without a reactor.
void schedule_flush(int fd, FdSlot& slot) {
  if (Reactor* owner = attached_owner(slot)) {
    owner->check_high_watermark(slot);
    owner->want_flush(fd, slot);
  } else {
    flush_unattached(fd, slot);
  }
}

// A failure seen by a read or a layer: the connection closes at the next flush step.
void fail(int fd, FdSlot& slot, int err) {
  slot.flags |= kFailed;
  slot.flags &= ~kReadPending;
  set_slot_error(slot, err);
  if (Reactor* owner = attached_owner(slot)) owner->want_flush(fd, slot);
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

// Frees what a write owned (.move buffer or .file FILE*) and fails with err.
ssize_t give_up(const SockWriteOpt& opt, int err) {
  if (opt.file && opt.buffer) {
    std::fclose(static_cast<FILE*>(const_cast<void*>(opt.buffer)));
  } else if (opt.move) {
    std::free(const_cast<void*>(opt.buffer));
  }
  errno = err;
  return -1;
}

// Hands a write to the fd's owner thread: the bytes travel as a malloc'd buffer (the caller's
// own with .move, else a copy), a FILE* travels as is.
ssize_t post_write(const Target& t, int fd, const SockWriteOpt& opt) {
  if (opt.file) {
    return post(t, RemoteCall::Kind::kWriteFile, fd, const_cast<void*>(opt.buffer), opt.length,
                opt.urgent) < 0
               ? give_up(opt, ENOMEM)
               : 0;
  }
  void* bytes = const_cast<void*>(opt.buffer);
  if (!opt.move) {
    bytes = std::malloc(opt.length);
    if (!bytes) return give_up(opt, ENOMEM);
    std::memcpy(bytes, opt.buffer, opt.length);
  }
  if (post(t, RemoteCall::Kind::kWrite, fd, bytes, opt.length, opt.urgent) < 0) {
    std::free(bytes);
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

}  // namespace

// ---- The calls ---------------------------------------------------------------------------

int open_on(struct ::Reactor* owner, int fd, bool connecting) {
  if (fd < 0 || fcntl(fd, F_GETFL) < 0) {
    errno = EBADF;
    return -1;
  }
  Reactor* reactor = owner ? Reactor::of(owner, true) : nullptr;
  if (owner && !reactor) return -1;
  FdSlot* slot = fd_slot_make(fd);
  if (!slot) return -1;
  if (reactor && reactor->inbox() && Reactor::current() != reactor) {
    const Target t{slot, reactor, 0};
    return post(t, connecting ? RemoteCall::Kind::kAdoptConnecting : RemoteCall::Kind::kAdopt, fd,
                nullptr, 0, false);
  }
  // Whoever last closed this number released the slot with its generation store: acquire it
  // before touching the rest.
  slot->generation.load(std::memory_order_acquire);
  release_state(fd, *slot);
  // Owned before it is open: other threads route by the (generation, owner) pair (target_of),
  // and an open generation without an owner would run their call inline, on this slot, from
  // their own thread. (An attached slot has its owner already.)
  const bool preset = reactor && !(slot->flags & kAttached);
  if (preset) set_owner(*slot, reactor);
  mark_open(*slot);  // a new connection: calls and events stamped with the old one are stale
  slot->flags |= kOpen;
  if (connecting) slot->flags |= kConnecting;
  if (!reactor) reactor = attached_owner(*slot);  // re-arm its registration, new generation
  if (reactor && reactor->attach(fd, *slot) < 0) {
    const int err = errno;
    slot->flags &= ~(kOpen | kConnecting);
    mark_closed(*slot);
    if (preset) set_owner(*slot, nullptr);
    errno = err;
    return -1;
  }
  if (reactor) reactor->start_timers(fd, *slot);
  return 0;
}

int attach_to(struct ::Reactor* owner, int fd) {
  Reactor* reactor = Reactor::of(owner, true);
  if (!reactor) return -1;
  const Target t = target_of(fd);
  if (!t.slot || !is_open_generation(t.generation)) {
    errno = EBADF;
    return -1;
  }
  if (reactor->inbox() && Reactor::current() != reactor) {
    // The caller holds the unattached fd (one thread at a time): once the owner is published,
    // every later call routes to the reactor's thread, which attaches it.
    if (t.remote) {
      errno = EBUSY;  // already attached to a reactor running on another thread
      return -1;
    }
    set_owner(*t.slot, reactor);
    const Target to{t.slot, reactor, t.generation};
    return post(to, RemoteCall::Kind::kAttach, fd, nullptr, 0, false);
  }
  FdSlot* slot = open_slot(fd);
  if (!slot) return -1;
  const bool fresh = attached_owner(*slot) != reactor;
  if (reactor->attach(fd, *slot) < 0) return -1;
  if (fresh) reactor->start_timers(fd, *slot);  // the reactor's idle timeout applies from now
  if (slot->head) reactor->want_flush(fd, *slot);
  return 0;
}

ssize_t write2(const SockWriteOpt& opt) {
  const int fd = opt.uuid ? uuid_fd(opt.uuid) : opt.fd;
  const Target t = target_of(fd);
  if (!t.slot || !is_open_generation(t.generation) ||
      (opt.uuid && !uuid_matches(opt.uuid, t.generation))) {
    return give_up(opt, EBADF);
  }
  if (!opt.buffer) return (opt.length || opt.file) ? give_up(opt, EINVAL) : 0;
  if (!opt.length && !opt.file) {  // nothing to send; a .move buffer is still ours to free
    if (opt.move) std::free(const_cast<void*>(opt.buffer));
    return 0;
  }
  if (t.remote) return post_write(t, fd, opt);
  FdSlot* slot = open_slot(fd);
  if (!slot) return give_up(opt, EBADF);
  if (slot->flags & (kClosing | kFailed)) return give_up(opt, EPIPE);
  void* owned = const_cast<void*>(opt.buffer);
  int r;
  if (opt.file) {
    r = queue_file(*slot, static_cast<FILE*>(owned), opt.length, opt.urgent);
  } else if (opt.move) {
    r = queue_move(*slot, owned, opt.length, opt.urgent);
  } else {
    const char* bytes = static_cast<const char*>(opt.buffer);
    std::size_t sent = 0;
    // Under a memory budget, only when the whole write could be queued: then ENOBUFS still
    // means nothing was sent.
    Reactor* owner = eager_writer(*slot);
    if (owner && !owner->pool().has_room((opt.length + kPacketBytes - 1) / kPacketBytes)) {
      owner = nullptr;
    }
    if (owner) {
      const ssize_t n = send_direct(fd, *slot, bytes, opt.length);
      if (n < 0) {
        fail(fd, *slot, slot_error(*slot));  // closes at the flush step, like a queued write
        return 0;
      }
      sent = static_cast<std::size_t>(n);
      if (sent) owner->stamp_activity(*slot);
      slot->flags |= kSentDirect;
      if (sent == opt.length) return 0;
    }
    r = queue_copy(*slot, bytes + sent, opt.length - sent, opt.urgent, sent > 0);
    if (r < 0 && sent > 0) {
      // The start is on the wire and the rest has nowhere to go (ENOMEM): the stream would be
      // cut, and a retry would send the start twice. The connection fails instead.
      const int err = errno;
      fail(fd, *slot, err);
      errno = err;
      return -1;
    }
  }
  if (r < 0) return -1;
  schedule_flush(fd, *slot);
  return 0;
}

ssize_t read_input(int fd, void* buf, std::size_t count) {
  const Target t = target_of(fd);
  if (t.remote) {
    errno = EPERM;  // input is consumed inside the owner's callbacks only
    return -1;
  }
  FdSlot* slot = open_slot(fd);
  if (!slot) return -1;
  if (!buf && count) {
    errno = EINVAL;
    return -1;
  }
  if (!count) return 0;
  // Above the high watermark the peer waits: its input stays in the kernel (TCP flow control
  // slows it down) until the queue drains and the reactor calls on_data again.
  if (slot->flags & kPaused) return 0;
  char* out = static_cast<char*>(buf);
  sockTLC* const tlc = slot_tlc(*slot);
  if (slot->extra && slot->extra->leftover) {
    slot->flags |= kReadProgress;
    return static_cast<ssize_t>(read_buffer_take(slot->extra->leftover, out, count));
  }
  if (slot->flags & (kEof | kFailed)) {
    errno = (slot->flags & kFailed) ? slot_error(*slot) : 0;
    return -1;
  }
  // An attached fd learns of new input from its next epoll edge, which sets kReadPending: until
  // then the kernel has nothing (the last read drained it), so don't ask.
  if (!tlc && (slot->flags & (kAttached | kReadPending)) == kAttached) return 0;
  bool drained = false;
  const uint32_t generation = slot->generation.load(std::memory_order_relaxed);
  const ssize_t n = tlc ? tlc_read(fd, *slot, out, count, &drained)
                              : plain_read(fd, out, count, &drained);
  // A layer closed the fd while unwrapping: its slot is not this call's any more.
  if (tlc && slot->generation.load(std::memory_order_relaxed) != generation) {
    errno = EBADF;
    return -1;
  }
  if (n > 0) {
    slot->flags |= kReadProgress;
    if (Reactor* owner = attached_owner(*slot)) owner->stamp_activity(*slot);
    if (slot->extra && slot->extra->leftover) slot->flags |= kReadPending;  // plaintext waits: call on_data again
    // A short read emptied the socket: data arriving later raises a new edge. Not so when the
    // peer already shut down (the EOF behind the data raises none) or with layers' buffering.
    if (!tlc && static_cast<std::size_t>(n) < count && !(slot->flags & (kPeerShut | kHangup))) {
      slot->flags &= ~kReadPending;
    }
    return n;
  }
  if (n == 0) {
    if (drained) slot->flags &= ~kReadPending;
    return 0;
  }
  if (errno == 0) {  // EOF: the queue still drains, then the fd closes
    slot->flags = (slot->flags | kEof) & ~kReadPending;
    if (Reactor* owner = attached_owner(*slot)) owner->want_flush(fd, *slot);
    errno = 0;
    return -1;
  }
  const int err = errno;
  fail(fd, *slot, err);
  errno = err;
  return -1;
}

ssize_t flush_output(int fd) {
  const Target t = target_of(fd);
  if (t.remote) {
    if (!is_open_generation(t.generation)) {
      errno = EBADF;
      return -1;
    }
    return post(t, RemoteCall::Kind::kFlush, fd, nullptr, 0, false);
  }
  FdSlot* slot = open_slot(fd);
  if (!slot) return -1;
  if (Reactor* owner = attached_owner(*slot)) return owner->flush_fd(fd, *slot, SIZE_MAX, false);
  return flush_unattached(fd, *slot);
}

// sock_close (graceful) and sock_force_close. `expected`: the generation a handle carries, or
// the current one for a plain fd.
int close_fd(struct ::Reactor* reactor, int fd, bool graceful, const uint32_t* expected) {
  const Target t = target_of(fd);
  if (!t.slot || (expected && *expected != t.generation)) {
    errno = EBADF;
    return -1;
  }
  if (t.remote) {
    return post(t, graceful ? RemoteCall::Kind::kClose : RemoteCall::Kind::kForceClose, fd,
                nullptr, 0, false);
  }
  FdSlot* slot = t.slot;
  if (!(slot->flags & (kOpen | kAttached))) {
    errno = EBADF;
    return -1;
  }
  if (!graceful || !(slot->flags & kOpen)) {  // a plain attached fd has no queue to wait for
    close_slot(fd, *slot, reactor, CloseReason::kLocal);
    return 0;
  }
  slot->flags |= kClosing;
  // With a reactor given, the reactor drives the drain and reports on_close (seed contract).
  if (!attached_owner(*slot) && reactor) {
    Reactor* r = Reactor::of(reactor, true);
    if (!r || r->attach(fd, *slot) < 0) {
      close_slot(fd, *slot, reactor, CloseReason::kLocal);
      return 0;
    }
  }
  schedule_flush(fd, *slot);
  return 0;
}

ssize_t send_packet(int fd, Packet* packet) {
  if (!packet) {
    errno = EINVAL;
    return -1;
  }
  const Target t = target_of(fd);
  if (!t.slot || !is_open_generation(t.generation)) {
    errno = EBADF;
    return -1;
  }
  if (t.remote) {
    for (Packet* p = packet; p; p = p->metadata.next) {
      if (p->length < 0 || (!p->buffer && p->length)) {
        errno = EINVAL;
        return -1;
      }
    }
    return post(t, RemoteCall::Kind::kSendPacket, fd, packet, 0, false);
  }
  FdSlot* slot = open_slot(fd);
  if (!slot) return -1;
  if (slot->flags & (kClosing | kFailed)) {
    errno = EPIPE;
    return -1;
  }
  if (queue_chain(*slot, packet, 0) < 0) return -1;
  schedule_flush(fd, *slot);
  return 0;
}

// The slot for a transport-layer call: owner thread only (layers run inside its callbacks).
FdSlot* tlc_slot(int fd) {
  if (target_of(fd).remote) {
    errno = EPERM;
    return nullptr;
  }
  return open_slot(fd);
}

int tlc_write(int fd, sockTLC* from, const void* data, std::size_t length) {
  FdSlot* slot = tlc_slot(fd);
  if (!slot) return -1;
  // Layer-produced bytes are records of their own, wrapped only by the layers below `from`.
  unsigned skip = 0;
  for (sockTLC* layer = slot_tlc(*slot); layer != from; layer = layer->next, ++skip) {
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
    Packet* p = packet_new(pool_for(slot));
    if (!p) return -1;
    const std::size_t n = std::min(length, kRecordPayload);
    std::memcpy(p->internal_memory, bytes, n);
    p->length = static_cast<ssize_t>(n);
    queue_chain(*slot, p, skip);  // cannot fail for a plain memory packet
    bytes += n;
    length -= n;
  }
  if (Reactor* owner = attached_owner(*slot)) owner->want_flush(fd, *slot);
  return 0;
}

void run_posted(Reactor& reactor, const RemoteCall& call) {
  using Kind = RemoteCall::Kind;
  const intptr_t uuid = make_uuid(call.fd, call.generation);
  switch (call.kind) {
    case Kind::kAdopt:
    case Kind::kAdoptConnecting:
      if (open_on(reactor.api(), call.fd, call.kind == Kind::kAdoptConnecting) < 0) {
        ::close(call.fd);  // nobody else holds it: the acceptor or connector handed it over
      } else if (reactor.on_open()) {
        reactor.on_open()(reactor.api(), call.fd);
      }
      return;
    case Kind::kAttach:
      if (attach_to(reactor.api(), call.fd) < 0) {
        if (FdSlot* slot = fd_slot(call.fd)) set_owner(*slot, nullptr);
      }
      return;
    case Kind::kWrite: {
      // Small writes merge into the queue's packets (a copy, then the buffer is freed); large
      // ones are linked without copying.
      const bool merge = call.length <= kRecordPayload;
      SockWriteOpt opt{};
      opt.buffer = call.data;
      opt.length = call.length;
      opt.move = !merge;
      opt.urgent = call.urgent;
      opt.uuid = uuid;
      write2(opt);
      if (merge) std::free(call.data);
      return;
    }
    case Kind::kWriteFile: {
      SockWriteOpt opt{};
      opt.buffer = call.data;
      opt.length = call.length;
      opt.file = 1;
      opt.urgent = call.urgent;
      opt.uuid = uuid;
      write2(opt);
      return;
    }
    case Kind::kSendPacket: {
      FdSlot* slot = fd_slot(call.fd);
      auto* chain = static_cast<Packet*>(call.data);
      if (!slot || slot->generation.load(std::memory_order_acquire) != call.generation ||
          send_packet(call.fd, chain) < 0) {
        packet_chain_free(chain);  // dropped: the connection is gone or closing
      }
      return;
    }
    case Kind::kFlush:
      if (fd_slot(call.fd)->generation.load(std::memory_order_acquire) == call.generation) {
        flush_output(call.fd);
      }
      return;
    case Kind::kClose:
    case Kind::kForceClose:
      close_fd(nullptr, call.fd, call.kind == Kind::kClose, &call.generation);
      return;
    case Kind::kRun:
      call.fn(call.data);
      return;
  }
}

void discard_posted(const RemoteCall& call) {
  using Kind = RemoteCall::Kind;
  switch (call.kind) {
    case Kind::kAdopt:
    case Kind::kAdoptConnecting:
      ::close(call.fd);
      return;
    case Kind::kWrite:
      std::free(call.data);
      return;
    case Kind::kWriteFile:
      std::fclose(static_cast<FILE*>(call.data));
      return;
    case Kind::kSendPacket:
      packet_chain_free(static_cast<Packet*>(call.data));
      return;
    case Kind::kAttach:
    case Kind::kFlush:
    case Kind::kClose:
    case Kind::kForceClose:
    case Kind::kRun:
      return;
  }
}

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

int sock_open(struct Reactor* owner, int fd) { return engine::open_on(owner, fd, false); }

int sock_attach(struct Reactor* owner, int fd) { return engine::attach_to(owner, fd); }

int sock_accept(struct Reactor* owner, int server_fd) {
  // The listener's slot is touched only by the thread that accepts on it.
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
  if (engine::open_on(owner, client, false) < 0) {
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
  // Even a connect that finished at once reports through on_ready: adding a writable fd to
  // epoll raises EPOLLOUT immediately.
  if (engine::open_on(owner, fd, true) < 0) {
    err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

void sock_clear(int fd) {
  if (engine::target_of(fd).remote) return;  // owner thread only: see libsock.h
  FdSlot* slot = engine::fd_slot(fd);
  if (!slot) return;
  const bool was_open = slot->flags & engine::kOpen;
  engine::release_state(fd, *slot);
  if (!was_open) return;
  engine::mark_closed(*slot);
  // Still attached as a plain fd: re-arm its registration with the new generation.
  if (engine::Reactor* owner = engine::attached_owner(*slot)) owner->attach(fd, *slot);
}

int sock_status(int fd) {
  const engine::Target t = engine::target_of(fd);
  if (t.remote ? !engine::is_open_generation(t.generation) : !engine::open_slot(fd)) {
    errno = EBADF;
    return -1;
  }
  return fcntl(fd, F_GETFL);
}

ssize_t sock_read(int fd, void* buf, size_t count) { return engine::read_input(fd, buf, count); }

ssize_t sock_write2_fn(struct SockWriteOpt opt) { return engine::write2(opt); }

ssize_t sock_flush(int fd) { return engine::flush_output(fd); }

void sock_close(struct Reactor* reactor, int fd) { engine::close_fd(reactor, fd, true, nullptr); }

void sock_force_close(struct Reactor* reactor, int fd) {
  engine::close_fd(reactor, fd, false, nullptr);
}

intptr_t sock_fd2uuid(int fd) {
  FdSlot* slot = engine::fd_slot(fd);
  const uint32_t g = slot ? slot->generation.load(std::memory_order_acquire) : 0;
  if (!engine::is_open_generation(g)) {
    errno = EBADF;
    return -1;
  }
  return engine::make_uuid(fd, g);
}

int sock_uuid2fd(intptr_t uuid) {
  const int fd = engine::uuid_fd(uuid);
  FdSlot* slot = engine::fd_slot(fd);
  const uint32_t g = slot ? slot->generation.load(std::memory_order_acquire) : 0;
  if (uuid < 0 || !engine::is_open_generation(g) || !engine::uuid_matches(uuid, g)) {
    errno = EBADF;
    return -1;
  }
  return fd;
}

int sock_close_uuid(intptr_t uuid) {
  const int fd = sock_uuid2fd(uuid);
  if (fd < 0) return -1;
  const uint32_t g = engine::fd_slot(fd)->generation.load(std::memory_order_acquire);
  return engine::close_fd(nullptr, fd, true, &g);
}

int sock_force_close_uuid(intptr_t uuid) {
  const int fd = sock_uuid2fd(uuid);
  if (fd < 0) return -1;
  const uint32_t g = engine::fd_slot(fd)->generation.load(std::memory_order_acquire);
  return engine::close_fd(nullptr, fd, false, &g);
}

enum SockCloseReason sock_close_reason(void) {
  return static_cast<SockCloseReason>(engine::current_close_reason());
}

int sock_set_timeout(int fd, unsigned idle_ms) {
  FdSlot* slot = engine::tlc_slot(fd);  // owner thread, open fd
  if (!slot) return -1;
  engine::Reactor* owner = engine::attached_owner(*slot);
  if (!owner) {
    errno = EINVAL;  // timers belong to a reactor
    return -1;
  }
  engine::SlotExtra* extra = engine::slot_extra_make(*slot);
  if (!extra) return -1;
  extra->idle_ticks = engine::Reactor::ticks_of(idle_ms);
  slot->flags |= engine::kOwnIdle;
  owner->stamp_activity(*slot);
  owner->arm_timer(fd, *slot);
  return 0;
}

int sock_set_deadline(int fd, unsigned ms) {
  FdSlot* slot = engine::tlc_slot(fd);
  if (!slot) return -1;
  engine::Reactor* owner = engine::attached_owner(*slot);
  if (!owner) {
    errno = EINVAL;
    return -1;
  }
  if (!ms) {
    if (slot->extra) slot->extra->deadline_tick = 0;
    engine::slot_extra_trim(*slot);
    return 0;  // a wheel entry already filed re-checks when it fires
  }
  engine::SlotExtra* extra = engine::slot_extra_make(*slot);
  if (!extra) return -1;
  // Counted from the end of the current tick, so it never fires before `ms` have passed.
  extra->deadline_tick = owner->now_tick() + 1 + engine::Reactor::ticks_of(ms);
  owner->arm_timer(fd, *slot);
  return 0;
}

int sock_set_watermarks(int fd, size_t high, size_t low) {
  FdSlot* slot = engine::tlc_slot(fd);
  if (!slot) return -1;
  if (high > UINT32_MAX || low > high || (!high && low)) {
    errno = EINVAL;
    return -1;
  }
  if (!high) {
    if (slot->extra) slot->extra->high_watermark = slot->extra->low_watermark = 0;
    engine::slot_extra_trim(*slot);
    return 0;
  }
  engine::SlotExtra* extra = engine::slot_extra_make(*slot);
  if (!extra) return -1;
  extra->high_watermark = static_cast<uint32_t>(high);
  extra->low_watermark = static_cast<uint32_t>(low);
  return 0;
}

ssize_t sock_pending(int fd) {
  FdSlot* slot = engine::tlc_slot(fd);
  return slot ? static_cast<ssize_t>(slot->queued_bytes) : -1;
}

struct Packet* sock_checkout_packet(void) { return engine::packet_new(engine::pool_for(nullptr)); }

ssize_t sock_send_packet(int fd, struct Packet* packet) { return engine::send_packet(fd, packet); }

void sock_free_packet(struct Packet* packet) { engine::packet_chain_free(packet); }

struct sockTLC* sock_tlc_get(int fd) {
  FdSlot* slot = engine::tlc_slot(fd);
  return slot ? engine::slot_tlc(*slot) : nullptr;
}

int sock_tlc_set(int fd, struct sockTLC* tlc) {
  FdSlot* slot = engine::tlc_slot(fd);
  if (!slot) return -1;
  if (engine::tlc_depth(tlc) > engine::kMaxLayers) {
    errno = EINVAL;
    return -1;
  }
  engine::SlotExtra* extra = tlc ? engine::slot_extra_make(*slot) : slot->extra;
  if (tlc && !extra) return -1;
  sockTLC* old = engine::slot_tlc(*slot);
  if (extra) extra->tlc = tlc;
  engine::slot_extra_trim(*slot);
  engine::tlc_clear_chain(fd, old);
  return 0;
}

int sock_tlc_add(int fd, struct sockTLC* tlc) {
  FdSlot* slot = engine::tlc_slot(fd);
  if (!slot) return -1;
  if (!tlc || engine::tlc_depth(engine::slot_tlc(*slot)) >= engine::kMaxLayers) {
    errno = EINVAL;
    return -1;
  }
  engine::SlotExtra* extra = engine::slot_extra_make(*slot);
  if (!extra) return -1;
  tlc->next = extra->tlc;
  extra->tlc = tlc;
  return 0;
}

int sock_tlc_write(int fd, struct sockTLC* from, const void* data, size_t length) {
  return engine::tlc_write(fd, from, data, length);
}

int sock_pool_stats(struct Reactor* reactor, struct SockPoolStats* stats) {
  if (!stats) {
    errno = EINVAL;
    return -1;
  }
  alloc::BlockPool* pool = &engine::fallback_pool();
  uint64_t queued = 0;
  if (reactor) {
    engine::Reactor* r = engine::Reactor::of(reactor, false);
    if (!r) {
      errno = EINVAL;
      return -1;
    }
    pool = &r->pool();
    queued = r->queued_total();
  }
  const alloc::PoolCounters c = pool->counters();
  *stats = SockPoolStats{c.checkouts,   c.returns,    c.hits,        c.misses,
                         c.outstanding, c.high_water, c.chunk_bytes, queued};
  return 0;
}

size_t sock_packet_footprint(void) {
  const alloc::BlockPool& pool = engine::fallback_pool();
  return alloc::BlockPool::bytes_per_block(pool.chunk_bytes(), pool.blocks_per_chunk());
}

}  // extern "C"
