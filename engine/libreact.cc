// The libreact C API: thin calls into engine::Reactor.
#include "engine/libreact.h"

#include <fcntl.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "engine/defaults.h"
#include "engine/fd_table.h"
#include "engine/reactor.h"

using engine::FdSlot;

extern "C" {

int reactor_init(struct Reactor* reactor) {
  return engine::Reactor::of(reactor, true) ? 0 : -1;
}

int reactor_review(struct Reactor* reactor) {
  engine::Reactor* r = engine::Reactor::of(reactor, true);
  return r ? r->run_once(REACTOR_TICK) : -1;
}

void reactor_stop(struct Reactor* reactor) {
  // No allocation, no lock: this may run in a signal handler.
  if (!reactor) return;
  if (auto* r = static_cast<engine::Reactor*>(reactor->_impl)) r->request_stop();
}

int reactor_add(struct Reactor* reactor, int fd) {
  engine::Reactor* r = engine::Reactor::of(reactor, true);
  if (!r) return -1;
  if (fd < 0 || fcntl(fd, F_GETFD) < 0) {
    errno = EBADF;
    return -1;
  }
  FdSlot* slot = engine::fd_slot_make(fd);
  if (!slot) return -1;
  // The flags are this thread's to read only while this reactor holds the fd.
  const bool here = engine::load_owner(*slot) == r && (slot->flags & engine::kAttached);
  // A plain fd (even generation) that no reactor holds begins a new life on its number: the
  // next even generation, before attach() stamps its epoll key. Calls stamped with the last
  // one are then stale: a sock_close(NULL, fd) made on another thread while a connection on
  // the number was closing reads (closed generation, owner), as close_slot() marks the
  // generation before it clears the owner, and must not close a timer that got the number in
  // on_close. (An fd open with the sock_ API keeps its generation: its handles stay valid.)
  if (!here && !engine::load_owner(*slot) &&
      !engine::is_open_generation(slot->generation.load(std::memory_order_acquire))) {
    engine::mark_closed(*slot);
  }
  if (r->attach(fd, *slot) < 0) return -1;
  if (!here && (slot->flags & engine::kOpen)) r->resume_timers(fd, *slot);
  return 0;
}

int reactor_remove(struct Reactor* reactor, int fd) {
  engine::Reactor* r = engine::Reactor::of(reactor, false);
  FdSlot* slot = engine::fd_slot(fd);
  if (!r || !slot) {
    errno = r ? EBADF : EINVAL;
    return -1;
  }
  return r->detach(fd, *slot);
}

void reactor_close(struct Reactor* reactor, int fd) {
  engine::Reactor* r = engine::Reactor::of(reactor, false);
  FdSlot* slot = engine::fd_slot(fd);
  if (r && slot && slot->owner == r && (slot->flags & engine::kAttached)) {
    r->close_now(fd, *slot, engine::CloseReason::kLocal);
  }
}

int reactor_set_limits(struct Reactor* reactor, const struct ReactorLimits* limits) {
  engine::Reactor* r = engine::Reactor::of(reactor, true);
  if (!r) return -1;
  if (!limits || !engine::watermarks_valid(limits->high_watermark, limits->low_watermark)) {
    errno = EINVAL;
    return -1;
  }
  r->set_limits(*limits);
  return 0;
}

int reactor_make_timer(void) { return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC); }

int reactor_add_timer(struct Reactor* reactor, int fd, long milliseconds) {
  if (milliseconds <= 0) {
    errno = EINVAL;
    return -1;
  }
  itimerspec spec{};
  spec.it_interval.tv_sec = milliseconds / 1000;
  spec.it_interval.tv_nsec = (milliseconds % 1000) * 1000000;
  spec.it_value = spec.it_interval;
  if (timerfd_settime(fd, 0, &spec, nullptr) < 0) return -1;
  return reactor_add(reactor, fd);
}

void reactor_reset_timer(int fd) {
  uint64_t expirations;
  [[maybe_unused]] const ssize_t r = read(fd, &expirations, sizeof expirations);
}

}  // extern "C"
