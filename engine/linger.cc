// File: engine/linger.cc
// The lingering close (RFC 9112 §9.6): close(2) on a socket whose input waits unread sends a
// reset instead of a FIN, and a reset destroys whatever the kernel has not delivered yet (a
// response, all but its start; h2o#2534). So a sock_close() that drained its queue with the
// peer's input unread, or that sock_close_lingering() closed, shuts the write side instead,
// reads and drops the peer's input, and closes at the peer's EOF (then nothing is unread),
// after kLingerMs of quiet, or at kLingerMaxMs.
#include <sys/socket.h>

#include <cerrno>
#include <cstddef>

#include "engine/connection.h"
#include "engine/defaults.h"
#include "engine/fd_table.h"
#include "engine/reactor.h"
#include "engine/socket_ops.h"

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
  // A stop does not wait for a peer that has everything: once all that was sent is
  // acknowledged, a reset takes none of it back (the peer may read an error after it).
  if (stopping_ && unacknowledged_bytes(fd) <= 1) return false;  // the FIN counts one
  if (state == Linger::kLingering) return true;
  // Unasked, only where close(2) would be a reset: input really waits in the socket, not just
  // behind an edge nobody read to EAGAIN, or as plaintext a layer holds. (Even a response
  // the peer has acknowledged is at risk: the reset turns the EOF it reads to an error, and
  // some stacks drop what they received and the application has not read.)
  if (state == Linger::kNo && (!(slot.flags & kReadPending) || !input_waits_unread(fd))) {
    return false;
  }
  SlotExtra* extra = slot_extra_make(slot);
  // EPOLL_CTL_ADD or MOD: an fd served whole from its first input was never added
  // (read_first_input: kUnwatched), and the peer's EOF must reach us.
  if (!extra || ::shutdown(fd, SHUT_WR) < 0 || watch(fd, slot) < 0) return false;
  extra->linger = Linger::kLingering;
  // kPaused: on_data no longer runs (call_on_data discards instead) and sock_read reads 0.
  // kWriteBlocked: nothing is owed on_ready, and no EPOLLOUT edge flushes the fd again.
  // kOwnIdle: quiet for kLingerMs (input discarded, or the peer taking what the kernel holds,
  // count as activity) ends the wait; linger_end_tick ends it in any case.
  slot.flags = (slot.flags | kPaused | kOwnIdle) & ~(kWriteBlocked | kUnwatched);
  extra->idle_ticks = ticks_of(kLingerMs);
  extra->linger_end_tick = now_tick_ + 1 + ticks_of(kLingerMaxMs);
  stamp_activity(slot);
  arm_timer(fd, slot, false);
  want_on_data_again(fd, slot);  // the input already waiting raises no new edge
  return true;
}

void Reactor::discard_lingering_input(int fd, FdSlot& slot) {
  char sink[kLingerReadBytes];
  std::size_t discarded = 0;
  for (;;) {
    const ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
    if (n > 0) {
      stamp_activity(slot);  // the peer is still sending: it waits for its EOF
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
