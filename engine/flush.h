// File: engine/flush.h
// When an fd's queue goes to the kernel. On a reactor, writes made during a callback batch are
// sent together at the batch's flush step (Reactor::flush_fd: one writev for all of them);
// for an fd without a reactor, at once, by whoever wrote. A failure seen anywhere fails the
// connection, which closes at the next flush step.
// Threads: the fd's owner thread; flush_output() any thread (posted off the owner thread).
// Errors: -1 with errno.
#ifndef ENGINE_FLUSH_H_
#define ENGINE_FLUSH_H_

#include <sys/types.h>

#include "engine/connection.h"
#include "engine/fd_table.h"
#include "engine/reactor.h"

namespace engine {

// Writes the queue of an fd without a reactor until EAGAIN (nobody else will continue), and
// closes it once that is due (close_if_due). Returns the bytes written, or -1 with errno when
// the write failed. The fd is then closed, unless `keep_failed` and no close was asked for
// (kClosing): a write's own flush leaves it open and failed (kFailed: writes get EPIPE, the
// next flush or close closes it), since no on_close tells its caller, who still holds the
// number, that it closed (libsock.h, sock_write2).
ssize_t flush_unattached(int fd, FdSlot& slot, bool keep_failed = false);

// After a write or a close queued output: the owner reactor sends it at its flush step (above
// the high watermark reading pauses first), or it is sent now for an fd without a reactor.
// Returns 0, or -1 with errno when that send failed: flush_unattached(), keep_failed.
inline int schedule_flush(int fd, FdSlot& slot) {
  if (Reactor* owner = attached_owner(slot)) {
    owner->check_high_watermark(slot);
    owner->want_flush(fd, slot);
    if (Profile* p = owner->profile()) p->queued(fd, slot.queued_bytes, owner->profile_now_us());
    return 0;
  }
  return flush_unattached(fd, slot, true) < 0 ? -1 : 0;
}

// A read, a send or a layer failed with err: the connection closes at its reactor's next flush
// step (an fd without a reactor: at its next flush), and a read or write reports err.
void fail_connection(int fd, FdSlot& slot, int err);

// sock_flush: sends fd's queue now, until EAGAIN, and closes it if due. Posted off the owner
// thread (0 once queued). Returns the bytes written, or -1 with errno (EBADF; the write's
// error, the fd then closed).
ssize_t flush_output(int fd);

}  // namespace engine

#endif  // ENGINE_FLUSH_H_
