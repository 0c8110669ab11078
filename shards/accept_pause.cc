#include "shards/accept_pause.h"

#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace shards {
namespace {

int64_t monotonic_ms() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1000000;
}

// The log limit, for every AcceptPause in the process (see the header).
std::atomic<int64_t> g_last_log_ms{-AcceptPause::kLogEveryMs};
std::atomic<uint64_t> g_pauses_since_log{0};

}  // namespace

bool is_exhaustion(int err) {
  return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

bool AcceptPause::init(struct Reactor* reactor) {
  timer_ = reactor_make_timer();
  if (timer_ < 0) return false;
  if (reactor_add(reactor, timer_) < 0) {
    close(timer_);
    timer_ = -1;
    return false;
  }
  return true;
}

AcceptPause::~AcceptPause() {
  if (listener_ >= 0) close(listener_);
}

bool AcceptPause::detach(struct Reactor* reactor, int listener) {
  if (listener_ >= 0) return listener_ == listener;
  if (reactor_remove(reactor, listener) < 0) return false;
  listener_ = listener;
  return true;
}

void AcceptPause::pause(struct Reactor* reactor, int listener, int err) {
  if (detach(reactor, listener)) rest(err);
}

void AcceptPause::hold(struct Reactor* reactor, int listener) {
  if (detach(reactor, listener)) held_ = true;
}

void AcceptPause::release(struct Reactor* reactor) {
  held_ = false;
  if (!resting_) reattach(reactor);
}

AcceptPause::Closed AcceptPause::closed(int fd) {
  if (!owns(fd)) return Closed::kNotTimer;
  timer_ = -1;
  resting_ = held_ = false;
  if (listener_ < 0) return Closed::kTimer;
  close(listener_);
  listener_ = -1;
  return Closed::kTimerAndListener;
}

void AcceptPause::rest(int err) {
  resting_ = true;
  itimerspec once{};
  once.it_value.tv_nsec = kPauseMs * 1000000;
  timerfd_settime(timer_, 0, &once, nullptr);
  g_pauses_since_log.fetch_add(1, std::memory_order_relaxed);
  const int64_t now = monotonic_ms();
  int64_t last = g_last_log_ms.load(std::memory_order_relaxed);
  // Of the shards due to log, the one whose exchange wins writes the line; the others only
  // counted their pause.
  if (now - last >= kLogEveryMs &&
      g_last_log_ms.compare_exchange_strong(last, now, std::memory_order_relaxed)) {
    std::fprintf(stderr,
                 "accept: %s; pausing accepts for %ld ms (%llu pauses since the last line; "
                 "open connections are still served)\n",
                 std::strerror(err), kPauseMs,
                 static_cast<unsigned long long>(
                     g_pauses_since_log.exchange(0, std::memory_order_relaxed)));
  }
}

void AcceptPause::resume(struct Reactor* reactor) {
  reactor_reset_timer(timer_);
  resting_ = false;
  if (!held_) reattach(reactor);
}

void AcceptPause::reattach(struct Reactor* reactor) {
  if (listener_ < 0) return;
  if (reactor_add(reactor, listener_) < 0) {
    rest(errno);  // still detached: try again after another pause
    return;
  }
  listener_ = -1;
}

}  // namespace shards
