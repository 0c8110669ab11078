// The write path on the owner thread, and the one place that makes a direct first write.
//
// The direct first write. A copy written to an attached fd whose queue is empty goes to the
// kernel at once, with one send(), instead of into a packet for the flush step: nothing is
// queued ahead of it, so the order holds, and the common reply (one write per request) costs
// no packet, no copy and no flush-list visit. Only what the kernel does not take is queued,
// marked as the rest of a started write so that no urgent write cuts it.
//
// kSentDirect, set on the fd by a direct write, makes the writes after it queue: they leave
// together in one writev at the flush step, so many small writes in one callback cost one
// syscall after the first. The reactor clears it when the fd's next on_data call starts
// (Reactor::call_on_data), at the fd's flush step (Reactor::run_flush_list), and, for a
// direct write made outside the fd's own on_data, at the end of the loop iteration
// (Reactor::note_direct_write lists the fd, end_sent_direct clears it): from then on the next
// write may go direct again. Without the last, an fd that is only written to (a peer's
// callbacks or posted writes feed it, and it never reads) would alternate: one write direct,
// the next queued and sent by the flush step.
//
// Not taken: with transport layers (they wrap at the flush step), while connecting, after the
// kernel refused (kWriteBlocked: the queue waits for the EPOLLOUT edge), after a hang-up (the
// queue path keeps such a close a peer close), and under a memory budget unless the whole
// write could be queued (so ENOBUFS still means that nothing was sent).
#include "engine/write_path.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engine/connection.h"
#include "engine/flush.h"
#include "engine/handle.h"
#include "engine/reactor.h"
#include "engine/routing.h"
#include "engine/tlc.h"
#include "engine/write_queue.h"

namespace engine {
namespace {

void count_queued_write(FdSlot& slot) {
  if (Reactor* owner = attached_owner(slot)) owner->write_counters().queued.add(1);
}

// The profiler's view of each write's size: called once a write is accepted (sock_write
// returns 0 for it), never for one refused (EINVAL, ENOBUFS, ENOMEM), with the bytes it sends
// (a file's: what is left of it, for length 0).
void profile_write(const FdSlot& slot, std::size_t length) {
  if (Reactor* owner = attached_owner(slot)) {
    if (Profile* p = owner->profile()) p->write_size_bytes.observe(length);
  }
}

// The reactor that may take a direct write of `length` bytes to this fd now, or nullptr for
// the queue path (see the top of the file).
Reactor* direct_writer(const FdSlot& slot, std::size_t length) {
  constexpr uint32_t kMask = kAttached | kConnecting | kWriteBlocked | kSentDirect | kHangup;
  if (slot.head || (slot.flags & kMask) != kAttached || slot_tlc(slot)) return nullptr;
  Reactor* owner = slot.owner;
  return owner->pool().has_room((length + kPacketBytes - 1) / kPacketBytes) ? owner : nullptr;
}

// One send(MSG_NOSIGNAL) of a direct write: the bytes the kernel took (0 for EAGAIN), or -1
// with the error recorded in the slot (slot_error()).
ssize_t send_direct(int fd, FdSlot& slot, const void* data, std::size_t length) {
  for (;;) {
    const ssize_t r = send(fd, data, length, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    if (errno == EAGAIN) return 0;
    set_slot_error(slot, errno);
    return -1;
  }
}

// A copied write on the owner thread: direct if it may be, the rest (or all of it) queued.
ssize_t write_copy(int fd, FdSlot& slot, const char* bytes, std::size_t length, bool urgent) {
  std::size_t sent = 0;
  if (Reactor* owner = direct_writer(slot, length)) {
    const ssize_t n = send_direct(fd, slot, bytes, length);
    if (n < 0) {
      fail_connection(fd, slot, slot_error(slot));  // closes at the flush step, as a queued write
      if (profiling_on()) profile_write(slot, length);  // returns 0: accepted, as queued is
      return 0;
    }
    sent = static_cast<std::size_t>(n);
    if (sent) owner->stamp_activity(slot);
    owner->note_direct_write(fd, slot);
    owner->write_counters().direct.add(1);
    if (sent == length) {
      if (profiling_on()) profile_write(slot, length);
      return 0;
    }
  }
  if (queue_copy(slot, bytes + sent, length - sent, urgent, sent > 0) < 0) {
    // The start is on the wire and the rest has nowhere to go (ENOMEM): the stream would be
    // cut, and a retry would send the start twice. The connection fails instead.
    const int err = errno;
    if (sent > 0) fail_connection(fd, slot, err);
    errno = err;
    return -1;
  }
  if (profiling_on()) profile_write(slot, length);
  count_queued_write(slot);
  return schedule_flush(fd, slot);
}

}  // namespace

ssize_t fail_write(const SockWriteOpt& opt, int err) {
  if (opt.file && opt.buffer) {
    std::fclose(static_cast<FILE*>(const_cast<void*>(opt.buffer)));
  } else if (opt.move) {
    std::free(const_cast<void*>(opt.buffer));
  }
  errno = err;
  return -1;
}

ssize_t write_data(const SockWriteOpt& opt) {
  const int fd = opt.uuid ? uuid_fd(opt.uuid) : opt.fd;
  const Target t = target_of(fd);
  if (!t.slot || !is_open_generation(t.generation) ||
      (opt.uuid && !uuid_matches(opt.uuid, t.generation))) {
    return fail_write(opt, EBADF);
  }
  if (!opt.buffer) return (opt.length || opt.file) ? fail_write(opt, EINVAL) : 0;
  if (!opt.length && !opt.file) {  // nothing to send; a .move buffer is still ours to free
    if (opt.move) std::free(const_cast<void*>(opt.buffer));
    return 0;
  }
  if (t.remote) return post_write(t, fd, opt);
  FdSlot* slot = open_slot(fd);
  if (!slot) return fail_write(opt, EBADF);
  if (slot->flags & (kClosing | kFailed)) return fail_write(opt, EPIPE);
  // Each kind observes the write's size once the write is accepted (profile_write); a copy's
  // check is on write_copy's own way out, so the common write pays no more than it did.
  void* owned = const_cast<void*>(opt.buffer);
  std::size_t bytes = opt.length;
  if (opt.file) {
    const ssize_t n = queue_file(*slot, static_cast<FILE*>(owned), opt.length, opt.urgent);
    if (n < 0) return -1;
    bytes = static_cast<std::size_t>(n);  // length 0 is "to the end": the bytes left
  } else if (opt.move) {
    if (queue_move(*slot, owned, opt.length, opt.urgent) < 0) return -1;
  } else {
    return write_copy(fd, *slot, static_cast<const char*>(opt.buffer), opt.length, opt.urgent);
  }
  if (profiling_on()) profile_write(*slot, bytes);
  count_queued_write(*slot);
  return schedule_flush(fd, *slot);
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
    // Here, where the caller keeps a refused chain: on the owner the post has returned 0.
    if (check_chain(packet) < 0) return -1;
    return post(*t.remote, RemoteCall::Kind::kSendPacket, fd, t.generation, packet);
  }
  FdSlot* slot = open_slot(fd);
  if (!slot) return -1;
  if (slot->flags & (kClosing | kFailed)) {
    errno = EPIPE;
    return -1;
  }
  if (queue_chain(*slot, packet) < 0) return -1;
  count_queued_write(*slot);
  // Queued, the chain is the library's, so a failed send of an fd without a reactor is not
  // this call's -1 (the caller would keep the chain): the fd is left failed, and its next
  // write (EPIPE) or sock_flush (the error) reports it.
  schedule_flush(fd, *slot);
  return 0;
}

int tlc_write(int fd, sockTLC* from, const void* data, std::size_t length) {
  FdSlot* slot = owner_thread_slot(fd);
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
  if (length && queue_layer_bytes(*slot, static_cast<const char*>(data), length, skip) < 0) {
    return -1;
  }
  if (Reactor* owner = attached_owner(*slot)) owner->want_flush(fd, *slot);
  return 0;
}

}  // namespace engine
