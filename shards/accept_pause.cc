#include "shards/accept_pause.h"

#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

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

void AcceptPause::pause(struct Reactor* reactor, int listener, int err) {
  listener_ = listener;
  reactor_remove(reactor, listener);
  itimerspec once{};
  once.it_value.tv_nsec = kPauseMs * 1000000;
  timerfd_settime(timer_, 0, &once, nullptr);
  ++paused_since_log_;
  const int64_t now = monotonic_ms();
  if (now - last_log_ms_ >= kLogEveryMs) {
    std::fprintf(stderr,
                 "accept: %s; pausing accepts for %ld ms (%llu pauses since the last line; "
                 "open connections are still served)\n",
                 std::strerror(err), kPauseMs,
                 static_cast<unsigned long long>(paused_since_log_));
    last_log_ms_ = now;
    paused_since_log_ = 0;
  }
}

void AcceptPause::resume(struct Reactor* reactor) {
  reactor_reset_timer(timer_);
  if (listener_ >= 0) reactor_add(reactor, listener_);
  listener_ = -1;
}

}  // namespace shards
