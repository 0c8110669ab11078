// File: engine/linger.cc
// The lingering close (RFC 9112 §9.6): close(2) on a socket whose input waits unread sends a
// reset instead of a FIN, and a reset destroys whatever the kernel has not delivered yet (a
// response, all but its start; h2o#2534). So a sock_close() that drained its queue with the
// peer's input unread shuts the write side instead, reads and drops the peer's input, and
// closes at the peer's EOF (then nothing is unread) or kLingerMs after it began.
#include <sys/socket.h>

#include <cerrno>
#include <cstddef>

#include "engine/connection.h"
#include "engine/defaults.h"
#include "engine/fd_table.h"
#include "engine/reactor.h"

namespace engine {
namespace {

// Input one lingering fd may discard per visit before the others get their turn: a peer that
// uploads at full speed keeps its fd on the work list (want_on_data_again), not the loop.
constexpr std::size_t kLingerDiscardPerVisit = 256 * 1024;
// One read's worth, on the reactor thread's stack.
constexpr std::size_t kLingerReadBytes = 16 * 1024;
static_assert(kLingerDiscardPerVisit % kLingerReadBytes == 0, "whole reads per visit");

}  // namespace

bool Reactor::linger(int fd, FdSlot& slot) {
  using Linger = SlotExtra::Linger;
  const Linger state = slot.extra ? slot.extra->linger : Linger::kNo;
  if (state == Linger::kLingering) return true;
  // Nothing unread, and the application expects nothing more: close(2) sends a FIN.
  if (state == Linger::kNo && !(slot.flags & kReadPending)) return false;
  SlotExtra* extra = slot_extra_make(slot);
  // EPOLL_CTL_ADD or MOD: an fd served whole from its first input was never added
  // (read_first_input), and the peer's EOF must reach us.
  if (!extra || ::shutdown(fd, SHUT_WR) < 0 || watch(fd, slot) < 0) return false;
  extra->linger = Linger::kLingering;
  // kPaused: on_data no longer runs (call_on_data discards instead) and sock_read reads 0.
  // kWriteBlocked: nothing is owed on_ready, and no EPOLLOUT edge flushes the fd again.
  slot.flags = (slot.flags | kPaused) & ~kWriteBlocked;
  const uint32_t end = now_tick_ + 1 + ticks_of(kLingerMs);
  if (!extra->deadline_tick || end < extra->deadline_tick) extra->deadline_tick = end;
  arm_timer(fd, slot, false);  // an expiry already past closes at the timer step
  want_on_data_again(fd, slot);  // the input already waiting raises no new edge
  return true;
}

void Reactor::discard_lingering_input(int fd, FdSlot& slot) {
  char sink[kLingerReadBytes];
  std::size_t discarded = 0;
  for (;;) {
    const ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
    if (n > 0) {
      discarded += static_cast<std::size_t>(n);
      if (discarded >= kLingerDiscardPerVisit) {
        want_on_data_again(fd, slot);
        return;
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      slot.flags &= ~kReadPending;  // the next edge brings more
      return;
    }
    // The peer's EOF: it has read all it will, and nothing unread is left to turn the close
    // into a reset. Or its reset, which may have cost it the end of what was sent.
    close_now(fd, slot, n == 0 ? CloseReason::kLocal : CloseReason::kError);
    return;
  }
}

}  // namespace engine
