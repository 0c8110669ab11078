// File: shards/accept_pause.h
// Accepting under fd exhaustion without spinning. When accept4 fails for lack of fds or
// memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), or for another reason that is not the backlog's
// end (accept_batch.h), the pending connection stays in the backlog and the listener stays
// readable, so an edge-triggered loop that retries at once would spin. The listener is
// detached from its reactor instead, and a timer reattaches it kPauseMs later;
// existing connections are served meanwhile. The timer fd is created up front: once fds run
// out, none could be made. At most one log line per kLogEveryMs in the whole process: in
// SO_REUSEPORT mode every shard has an AcceptPause, and they all reach the limit together.
// If watching the listener again fails (no memory for its epoll entry: the same exhaustion),
// it rests for another kPauseMs rather than being lost.
// Ownership: while paused, the listener is detached, so the reactor's stop (which closes the
// attached fds) does not close it: this object holds it then, and closes it when told that
// the timer closed (the stop: closed()) or when destroyed. The timer fd is attached, and the
// reactor closes it.
// Threads: the reactor's owner thread (the log limit is shared through atomics). Errors:
// reported on stderr (rate-limited).
#ifndef SHARDS_ACCEPT_PAUSE_H_
#define SHARDS_ACCEPT_PAUSE_H_

#include <cstdint>

#include "engine/libreact.h"

namespace shards {

class AcceptPause {
 public:
  static constexpr long kPauseMs = 100;
  static constexpr int64_t kLogEveryMs = 1000;

  AcceptPause() = default;
  // After the reactor's stop (or without one): closes the listener if it is paused.
  ~AcceptPause();
  AcceptPause(const AcceptPause&) = delete;
  AcceptPause& operator=(const AcceptPause&) = delete;

  // Creates the timer fd and attaches it (disarmed) to `reactor`. False with errno on failure.
  bool init(struct Reactor* reactor);
  bool owns(int fd) const { return fd >= 0 && fd == timer_; }
  // accept4 on `listener` failed with `err`: stop watching it for kPauseMs. Nothing happens
  // if `listener` is not attached to `reactor` (it is not this object's to hold then).
  void pause(struct Reactor* reactor, int listener, int err);
  // What closed() did: fd was not the timer; fd was the timer; fd was the timer and the
  // listener it held (paused) is closed too. The caller must then forget the listener's number
  // as well: no on_close comes for a detached fd, and the number is free for the next fd made.
  enum class Closed { kNotTimer, kTimer, kTimerAndListener };
  // The reactor closed fd (its on_close). If fd was the timer (the reactor's stop closed it),
  // forgets its number, which a later connection may get, and closes the listener if it is
  // paused.
  Closed closed(int fd);
  // The timer fired: watch the listener again; what waits in the backlog raises on_data.
  void resume(struct Reactor* reactor);

 private:
  // Arms the timer for kPauseMs and logs `err` (rate-limited).
  void rest(int err);

  int timer_ = -1;
  int listener_ = -1;
};

// True for the accept4 errors that mean "out of fds or memory now, try again later".
bool is_exhaustion(int err);

}  // namespace shards

#endif  // SHARDS_ACCEPT_PAUSE_H_
