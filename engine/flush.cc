#include "engine/flush.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>

#include "engine/routing.h"
#include "engine/write_queue.h"

namespace engine {
namespace {

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

}  // namespace

ssize_t flush_unattached(int fd, FdSlot& slot, bool keep_failed) {
  if ((slot.flags & kConnecting) && !connect_finished(fd, slot)) return 0;
  std::size_t written = 0;
  for (;;) {
    const SendResult r =
        (slot.flags & kFailed) ? SendResult::kError : send_queue(fd, slot, SIZE_MAX, &written);
    if (r == SendResult::kError) {
      const int err = slot_error(slot);
      if (keep_failed && !(slot.flags & kClosing)) {
        fail_connection(fd, slot, err);
      } else {
        close_slot(fd, slot, nullptr, CloseReason::kError);
      }
      errno = err;
      return -1;
    }
    if (r != SendResult::kDrained || close_if_due(fd, slot, nullptr) != Drained::kMoreQueued) {
      break;
    }
  }
  return static_cast<ssize_t>(written);
}

void fail_connection(int fd, FdSlot& slot, int err) {
  slot.flags |= kFailed;
  slot.flags &= ~kReadPending;
  set_slot_error(slot, err);
  if (Reactor* owner = attached_owner(slot)) owner->want_flush(fd, slot);
}

ssize_t flush_output(int fd) {
  const Target t = target_of(fd);
  if (t.remote) {
    if (!is_open_generation(t.generation)) {
      errno = EBADF;
      return -1;
    }
    return post(*t.remote, RemoteCall::Kind::kFlush, fd, t.generation);
  }
  FdSlot* slot = open_slot(fd);
  if (!slot) return -1;
  if (Reactor* owner = attached_owner(*slot)) return owner->flush_fd(fd, *slot, SIZE_MAX, false);
  return flush_unattached(fd, *slot);
}

}  // namespace engine
