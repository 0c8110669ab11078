#include "tests/testing/fault_injection.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "tests/testing/split_mix.h"

namespace testing_support::faults {
namespace {

using testing_support::SplitMix64;

// The next definition of `name` after this executable's: libc's, or a sanitizer runtime's
// interceptor. Looked up on first use (benign race: every thread finds the same address).
template <typename Fn>
Fn next_definition(std::atomic<void*>& cache, const char* name) {
  void* p = cache.load(std::memory_order_relaxed);
  if (!p) {
    p = dlsym(RTLD_NEXT, name);
    if (!p) {
      std::fprintf(stderr, "fault_injection: no definition of %s after the executable's\n", name);
      std::abort();
    }
    cache.store(p, std::memory_order_relaxed);
  }
  return reinterpret_cast<Fn>(p);
}

// REAL(recv): the next recv, typed as <sys/socket.h> declares it.
#define REAL(fn) next_definition<decltype(&::fn)>(real_##fn, #fn)
std::atomic<void*> real_recv, real_send, real_sendmsg, real_sendfile, real_accept4,
    real_epoll_ctl, real_close;
std::atomic<void*> real_mallocx;

struct Registration {
  bool present = false;
  int epfd = -1;
  epoll_event event{};
};

struct FdState {
  bool watched = false;
  Registration registration;
  FdRecord record;
};

struct State {
  std::mutex mutex;
  bool armed = false;
  Plan plan;
  SplitMix64 rng;
  pthread_t armed_thread{};
  Counts counts;
  std::vector<FdState> fds;

  FdState* watched(int fd) {
    if (fd < 0 || static_cast<std::size_t>(fd) >= fds.size() || !fds[fd].watched) return nullptr;
    return &fds[fd];
  }
  FdState& slot(int fd) {
    if (static_cast<std::size_t>(fd) >= fds.size()) fds.resize(static_cast<std::size_t>(fd) + 1);
    return fds[fd];
  }
};

// Never destroyed: close() may run during static destruction, after a static State would be.
State& state() {
  static State* s = new State;
  return *s;
}

// Set once anything was watched or armed: until then every call passes straight through.
std::atomic<bool> g_active{false};

// What one call is to do instead of (or before) the real call.
struct Decision {
  int err = 0;               // fail with this errno (0: make the real call)
  std::size_t shorter = 0;   // make the real call with this many bytes (0: as asked)
  bool rearm = false;        // re-arm the fd's epoll registration (see the header)
  Registration registration;
};

const char* errno_name(int err) {
  switch (err) {
    case EINTR: return "EINTR";
    case EAGAIN: return "EAGAIN";
    case ENOBUFS: return "ENOBUFS";
    case ENOMEM: return "ENOMEM";
    case ECONNRESET: return "ECONNRESET";
    case ECONNABORTED: return "ECONNABORTED";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOSPC: return "ENOSPC";
    default: return "?";
  }
}

void log_fault(const State& s, Call call, int fd, std::size_t asked, const Decision& d) {
  if (!s.plan.log) return;
  if (call == Call::kAccept4 || call == Call::kEpollCtl) {
    std::fprintf(s.plan.log, "  fault: %s(fd %d) -> %s\n", call_name(call), fd, errno_name(d.err));
  } else if (d.err) {
    std::fprintf(s.plan.log, "  fault: %s(fd %d, %zu bytes) -> %s\n", call_name(call), fd, asked,
                 errno_name(d.err));
  } else {
    std::fprintf(s.plan.log, "  fault: %s(fd %d, %zu bytes) -> short, %zu bytes\n",
                 call_name(call), fd, asked, d.shorter);
  }
}

template <std::size_t N>
int pick(SplitMix64& rng, const int (&choices)[N]) {
  return choices[rng.below(N)];
}

// The fault for a data call (recv, send, sendmsg, sendfile) of `asked` bytes on fd, if any.
Decision decide_data(Call call, int fd, std::size_t asked) {
  Decision d;
  if (!g_active.load(std::memory_order_relaxed)) return d;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  FdState* f = s.watched(fd);
  if (!s.armed || !f) return d;
  const auto k = static_cast<std::size_t>(call);
  ++s.counts.calls[k];
  const double u = s.rng.unit();
  if (u < s.plan.fatal_rate) {
    static constexpr int kFatal[] = {ENOBUFS, ENOMEM, ECONNRESET};
    d.err = pick(s.rng, kFatal);
    if (!f->record.fatal_errno) {
      f->record.fatal_errno = d.err;
      f->record.fatal_call = call;
    }
  } else if (u < s.plan.fatal_rate + s.plan.rate[k]) {
    // A short count needs at least two bytes asked (it transfers at least one).
    const uint64_t kinds = asked > 1 ? 3 : 2;
    switch (s.rng.below(kinds)) {
      case 0: d.err = EINTR; break;
      case 1: d.err = EAGAIN; break;
      default: d.shorter = 1 + s.rng.below(asked - 1); break;
    }
    d.rearm = d.err == EAGAIN || (call == Call::kRecv && d.shorter);
  } else {
    return d;
  }
  ++s.counts.faults[k];
  ++f->record.faults;
  d.registration = f->registration;
  log_fault(s, call, fd, asked, d);
  return d;
}

// Reports ready what the kernel has for fd (see "Realism" in the header).
void rearm(int fd, const Decision& d) {
  if (!d.rearm || !d.registration.present) return;
  epoll_event ev = d.registration.event;
  REAL(epoll_ctl)(d.registration.epfd, EPOLL_CTL_MOD, fd, &ev);
}

// An injected ECONNRESET, made real for every later call and for the peer.
void reset(int fd) {
  const linger abort_on_close{1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
  shutdown(fd, SHUT_RDWR);
}

// Applies an error decision: -1 with its errno after its side effects.
long fail_with(int fd, const Decision& d) {
  if (d.err == ECONNRESET) reset(fd);
  rearm(fd, d);
  errno = d.err;
  return -1;
}

}  // namespace

const char* call_name(Call call) {
  static constexpr const char* kNames[kCallKinds] = {"recv",    "send",      "sendmsg", "sendfile",
                                                     "accept4", "epoll_ctl", "mallocx"};
  return kNames[static_cast<std::size_t>(call)];
}

void arm(const Plan& plan) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.plan = plan;
  s.rng = SplitMix64{plan.seed};
  s.counts = Counts{};
  s.armed_thread = pthread_self();
  s.armed = true;
  g_active.store(true, std::memory_order_relaxed);
}

void disarm() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.armed = false;
}

void watch(int fd) {
  if (fd < 0) return;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.slot(fd) = FdState{true, Registration{}, FdRecord{}};
  g_active.store(true, std::memory_order_relaxed);
}

std::size_t watched_count() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  std::size_t n = 0;
  for (const FdState& f : s.fds) n += f.watched;
  return n;
}

FdRecord fd_record(int fd) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (fd < 0 || static_cast<std::size_t>(fd) >= s.fds.size()) return FdRecord{};
  return s.fds[fd].record;
}

Counts counts() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.counts;
}

}  // namespace testing_support::faults

// --- The interposed calls ------------------------------------------------------------------------

using testing_support::faults::Call;
using namespace testing_support::faults;  // NOLINT: the definitions below are extern "C"

extern "C" ssize_t recv(int fd, void* buf, size_t len, int flags) {
  const Decision d = decide_data(Call::kRecv, fd, len);
  if (d.err) return fail_with(fd, d);
  const ssize_t r = REAL(recv)(fd, buf, d.shorter ? d.shorter : len, flags);
  const int err = errno;
  rearm(fd, d);
  errno = err;
  return r;
}

extern "C" ssize_t send(int fd, const void* buf, size_t len, int flags) {
  const Decision d = decide_data(Call::kSend, fd, len);
  if (d.err) return fail_with(fd, d);
  return REAL(send)(fd, buf, d.shorter ? d.shorter : len, flags);
}

extern "C" ssize_t sendmsg(int fd, const struct msghdr* msg, int flags) {
  std::size_t total = 0;
  for (std::size_t i = 0; i < msg->msg_iovlen; ++i) total += msg->msg_iov[i].iov_len;
  const Decision d = decide_data(Call::kSendmsg, fd, total);
  if (d.err) return fail_with(fd, d);
  if (!d.shorter) return REAL(sendmsg)(fd, msg, flags);
  // The same message cut after d.shorter bytes.
  std::vector<iovec> iov;
  std::size_t left = d.shorter;
  for (std::size_t i = 0; i < msg->msg_iovlen && left; ++i) {
    iovec v = msg->msg_iov[i];
    if (v.iov_len > left) v.iov_len = left;
    left -= v.iov_len;
    iov.push_back(v);
  }
  msghdr cut = *msg;
  cut.msg_iov = iov.data();
  cut.msg_iovlen = iov.size();
  return REAL(sendmsg)(fd, &cut, flags);
}

extern "C" ssize_t sendfile(int out_fd, int in_fd, off_t* offset, size_t count) noexcept {
  const Decision d = decide_data(Call::kSendfile, out_fd, count);
  if (d.err) return fail_with(out_fd, d);
  return REAL(sendfile)(out_fd, in_fd, offset, d.shorter ? d.shorter : count);
}

extern "C" int accept4(int fd, struct sockaddr* addr, socklen_t* addrlen, int flags) {
  Decision d;
  if (g_active.load(std::memory_order_relaxed)) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    FdState* f = s.watched(fd);
    if (f && s.armed) {
      const auto k = static_cast<std::size_t>(Call::kAccept4);
      ++s.counts.calls[k];
      if (s.rng.unit() < s.plan.rate[k]) {
        static constexpr int kErrors[] = {EINTR,  ECONNABORTED, EAGAIN, EMFILE,
                                          ENFILE, ENOBUFS,      ENOMEM};
        d.err = pick(s.rng, kErrors);
        d.rearm = d.err == EAGAIN;
        d.registration = f->registration;
        ++s.counts.faults[k];
        ++f->record.faults;
        log_fault(s, Call::kAccept4, fd, 0, d);
      }
    }
  }
  if (d.err) return static_cast<int>(fail_with(fd, d));
  const int client = REAL(accept4)(fd, addr, addrlen, flags);
  if (client >= 0 && g_active.load(std::memory_order_relaxed)) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.watched(fd)) {
      s.slot(client) = FdState{true, Registration{}, FdRecord{}};
      ++s.counts.accepted;
    }
  }
  return client;
}

extern "C" int epoll_ctl(int epfd, int op, int fd, struct epoll_event* event) noexcept {
  if (!g_active.load(std::memory_order_relaxed)) return REAL(epoll_ctl)(epfd, op, fd, event);
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    FdState* f = s.watched(fd);
    if (f && s.armed && op != EPOLL_CTL_DEL) {
      const auto k = static_cast<std::size_t>(Call::kEpollCtl);
      ++s.counts.calls[k];
      if (s.rng.unit() < s.plan.rate[k]) {
        static constexpr int kAddErrors[] = {ENOMEM, ENOSPC};
        Decision d;
        d.err = op == EPOLL_CTL_ADD ? pick(s.rng, kAddErrors) : ENOMEM;
        ++s.counts.faults[k];
        ++f->record.faults;
        log_fault(s, Call::kEpollCtl, fd, 0, d);
        errno = d.err;
        return -1;
      }
    }
  }
  const int r = REAL(epoll_ctl)(epfd, op, fd, event);
  if (r == 0) {
    const int err = errno;
    std::lock_guard<std::mutex> lock(s.mutex);
    if (FdState* f = s.watched(fd)) {
      f->registration = op == EPOLL_CTL_DEL ? Registration{} : Registration{true, epfd, *event};
    }
    errno = err;
  }
  return r;
}

extern "C" int close(int fd) {
  if (g_active.load(std::memory_order_relaxed)) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (FdState* f = s.watched(fd)) {
      f->watched = false;  // the record stays for on_close (see fd_record)
      f->registration = Registration{};
    }
  }
  return REAL(close)(fd);
}

// jemalloc's, declared here rather than from <jemalloc/jemalloc.h> (alloc/jemalloc_arena.cc is
// the one file that includes it).
extern "C" void* mallocx(size_t size, int flags) {
  using Mallocx = void* (*)(size_t, int);
  if (g_active.load(std::memory_order_relaxed)) {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (s.armed && pthread_equal(s.armed_thread, pthread_self())) {
      const auto k = static_cast<std::size_t>(Call::kMallocx);
      ++s.counts.calls[k];
      if (s.rng.unit() < s.plan.rate[k]) {
        ++s.counts.faults[k];
        if (s.plan.log) std::fprintf(s.plan.log, "  fault: mallocx(%zu bytes) -> nullptr\n", size);
        errno = ENOMEM;
        return nullptr;
      }
    }
  }
  return next_definition<Mallocx>(real_mallocx, "mallocx")(size, flags);
}
