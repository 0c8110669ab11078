// File: shards/accept_pause.h
// Stopping and resuming accepts without spinning, for two reasons that may hold at once.
// (1) Exhaustion: when accept4 fails for lack of fds or memory (EMFILE, ENFILE, ENOBUFS,
// ENOMEM), or for another reason that is not the backlog's end (accept_batch.h), the pending
// connection stays in the backlog and the listener stays readable, so an edge-triggered loop
// that retries at once would spin. The listener is detached from its reactor instead, and a
// timer reattaches it kPauseMs later (it rests); existing connections are served meanwhile.
// The timer fd is created up front: once fds run out, none could be made. At most one log
// line per kLogEveryMs in the whole process: in SO_REUSEPORT mode every shard has an
// AcceptPause, and they all reach the limit together. If watching the listener again fails
// (no memory for its epoll entry: the same exhaustion), it rests for another kPauseMs rather
// than being lost. (2) The connection limit (SockServerSettings.max_connections): the holder
// detaches the listener while it is at its limit (hold()) and brings it back when a
// connection closed (release()); no timer, no log.
// The listener is watched again only once neither reason holds: the timer ending a rest while
// the limit holds leaves it detached, and so does a release while it rests.
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
  // accept4 on `listener` failed with `err`: stop watching it for kPauseMs (it rests). Nothing
  // happens if `listener` is neither attached to `reactor` nor held here (it is not this
  // object's to hold then).
  void pause(struct Reactor* reactor, int listener, int err);
  // At the connection limit: stop watching `listener` until release(). Nothing happens if it
  // is neither attached to `reactor` nor held here (held() stays false then).
  void hold(struct Reactor* reactor, int listener);
  // Below the limit again: watch the listener again, unless it rests (the timer will).
  void release(struct Reactor* reactor);
  // Whether the limit holds the listener (hold() without release() since).
  bool held() const { return held_; }
  // Whether the listener is detached, for either reason.
  bool holds_listener() const { return listener_ >= 0; }
  // What closed() did: fd was not the timer; fd was the timer; fd was the timer and the
  // listener it held (paused) is closed too. The caller must then forget the listener's number
  // as well: no on_close comes for a detached fd, and the number is free for the next fd made.
  enum class Closed { kNotTimer, kTimer, kTimerAndListener };
  // The reactor closed fd (its on_close). If fd was the timer (the reactor's stop closed it),
  // forgets its number, which a later connection may get, and closes the listener if it is
  // paused (resting or held); neither reason holds afterwards.
  Closed closed(int fd);
  // The timer fired: the rest is over; watch the listener again unless the limit holds it.
  // What waits in the backlog raises on_data.
  void resume(struct Reactor* reactor);

 private:
  // Detaches `listener` from `reactor` unless this object holds it already. False if it is
  // neither (not this object's).
  bool detach(struct Reactor* reactor, int listener);
  // Watches the held listener again; if that fails, it rests.
  void reattach(struct Reactor* reactor);
  // Arms the timer for kPauseMs and logs `err` (rate-limited).
  void rest(int err);

  int timer_ = -1;
  int listener_ = -1;     // held (detached) for either reason; -1: attached or none
  bool resting_ = false;  // the timer is armed: an accept failure, or a failed reattach
  bool held_ = false;     // the connection limit
};

// True for the accept4 errors that mean "out of fds or memory now, try again later".
bool is_exhaustion(int err);

}  // namespace shards

#endif  // SHARDS_ACCEPT_PAUSE_H_
