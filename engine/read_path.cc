#include "engine/read_path.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstdint>

#include "engine/connection.h"
#include "engine/flush.h"
#include "engine/read_buffer.h"
#include "engine/reactor.h"
#include "engine/routing.h"
#include "engine/tlc.h"

namespace engine {
namespace {

// recv until data, EOF (-1, errno 0), EAGAIN (0, *drained) or an error (-1, errno).
// MSG_DONTWAIT: sock_open makes fds non-blocking, but the mode belongs to the open file,
// which whoever else holds it (a dup, another process) may set back; the per-call flag keeps
// the reactor's thread from blocking anyway ("0 when no data", libsock.h).
ssize_t plain_read(int fd, char* out, std::size_t count, bool* drained) {
  for (;;) {
    const ssize_t n = recv(fd, out, count, MSG_DONTWAIT);
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

// Bytes were read: progress for the reactor (on_data again, the idle timer), and what the
// read says about input still waiting (socket_drained: a short read emptied the socket).
void note_bytes(FdSlot& slot, bool socket_drained) {
  slot.flags |= kReadProgress;
  if (Reactor* owner = attached_owner(slot)) owner->stamp_activity(slot);
  // Data arriving later raises a new edge. Not so when the peer already shut down (the EOF
  // behind the data raises none), or once TCP urgent data came (recv stops short at its mark,
  // with data behind it).
  if (socket_drained && !(slot.flags & (kPeerShut | kHangup | kUrgentSeen))) {
    slot.flags &= ~kReadPending;
  }
  if (slot.extra && slot.extra->leftover) slot.flags |= kReadPending;  // plaintext waits
}

// The read found EOF (errno 0) or failed: the queue still drains after an EOF, then the fd
// closes; an error fails the connection. Returns -1 with that errno.
ssize_t note_end(int fd, FdSlot& slot) {
  const int err = errno;
  if (err == 0) {
    slot.flags = (slot.flags | kEof) & ~kReadPending;
    if (Reactor* owner = attached_owner(slot)) owner->want_flush(fd, slot);
  } else {
    fail_connection(fd, slot, err);
  }
  errno = err;
  return -1;
}

}  // namespace

ssize_t read_input(int fd, void* buf, std::size_t count) {
  if (target_of(fd).remote) {
    errno = EPERM;  // input is consumed inside the owner's callbacks only
    return -1;
  }
  FdSlot* slot = open_slot(fd);
  if (!slot) return -1;
  if (!buf && count) {
    errno = EINVAL;
    return -1;
  }
  // Above the high watermark the peer waits: its input stays in the kernel (TCP flow control
  // slows it down) until the queue drains and the reactor calls on_data again.
  if (!count || (slot->flags & kPaused)) return 0;
  char* out = static_cast<char*>(buf);
  if (slot->extra && slot->extra->leftover) {
    slot->flags |= kReadProgress;
    return static_cast<ssize_t>(read_buffer_take(slot->extra->leftover, out, count));
  }
  if (slot->flags & (kEof | kFailed)) {
    errno = (slot->flags & kFailed) ? slot_error(*slot) : 0;
    return -1;
  }
  sockTLC* const tlc = slot_tlc(*slot);
  // An attached fd learns of new input from its next epoll edge, which sets kReadPending: until
  // then the kernel has nothing (the last read drained it), so don't ask.
  if ((slot->flags & (kAttached | kReadPending)) == kAttached) return 0;
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
    note_bytes(*slot, tlc ? drained : static_cast<std::size_t>(n) < count);
    return n;
  }
  if (n == 0) {
    if (drained) slot->flags &= ~kReadPending;
    return 0;
  }
  return note_end(fd, *slot);
}

}  // namespace engine
