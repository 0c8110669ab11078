// File: tests/testing/fault_injection.h
// Syscall and allocation faults below the engine, for tests: seeded, per call kind, and only
// on the fds a test chose.
//
// How: this library is linked into the test executable itself (linkstatic, alwayslink) and
// defines recv, send, sendmsg, sendfile, accept4, epoll_ctl, close and jemalloc's mallocx
// there. An executable's definitions come first in symbol lookup, so the engine's calls (made
// through the PLT of its shared libraries, or bound at link time in a static link) reach these
// first; each forwards to the next definition (dlsym(RTLD_NEXT): libc's, or a sanitizer
// runtime's interceptor, which then calls libc's), after injecting a fault when armed. The
// engine is not touched: production builds neither contain nor pay for any of it.
//
// What is injected, per call on a watched fd while armed (each drawn with the plan's chances):
//   recv, send, sendmsg, sendfile: a short count (a random prefix, at least one byte, of what
//     was asked: the real call is made with the shorter length; for sendmsg the iovec total is
//     cut), EINTR or EAGAIN; and, at Plan::fatal_rate, ENOBUFS, ENOMEM or ECONNRESET.
//   accept4 (on a watched listener): EINTR, ECONNABORTED, EAGAIN, EMFILE, ENFILE, ENOBUFS or
//     ENOMEM, with no connection taken from the backlog.
//   epoll_ctl: ADD fails with ENOMEM or ENOSPC, MOD with ENOMEM (DEL is never faulted).
//   mallocx (any call, on the thread that armed): nullptr, errno ENOMEM.
// A fd accept4 returns from a watched listener is watched until close(2) (this close) ends it.
//
// Realism: a fault never breaks a promise the kernel keeps, so a failure it causes is the
// engine's. Edge-triggered epoll promises an edge once more input or room arrives after a
// read or write that stopped short; an injected EAGAIN (any call) or short recv hides input
// or room the kernel had, so the fd's epoll registration (as last added or modified through
// this epoll_ctl) is re-armed with EPOLL_CTL_MOD, which reports what is ready at once: the
// same as data arriving just after the call. ECONNRESET is made real: the socket gets
// SO_LINGER {1, 0} and shutdown(SHUT_RDWR), so later calls see what a reset socket gives
// (recv 0, send EPIPE and, without MSG_NOSIGNAL, a real SIGPIPE) and its close sends a RST.
//
// Threads: arm, disarm, watch and the queries from one thread, the test's reactor thread,
// which makes the faulted calls. Calls on unwatched fds (and every call while nothing is
// watched or armed: one relaxed atomic load) pass straight through, from any thread.
// Errors: none of these functions fails; the interposed calls fail only as described above.
#ifndef TESTS_TESTING_FAULT_INJECTION_H_
#define TESTS_TESTING_FAULT_INJECTION_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>

namespace testing_support::faults {

enum class Call : uint8_t { kRecv, kSend, kSendmsg, kSendfile, kAccept4, kEpollCtl, kMallocx };
inline constexpr std::size_t kCallKinds = 7;

// "recv", "send", ... for messages.
const char* call_name(Call call);

struct Plan {
  // The fault stream is a function of the seed and of the sequence of faultable calls.
  uint64_t seed = 0;
  // Per call kind (indexed by Call): the chance that one call draws a fault that leaves the
  // connection usable: a short count, EINTR or EAGAIN for recv/send/sendmsg/sendfile; any of
  // the kind's faults for accept4, epoll_ctl and mallocx.
  std::array<double, kCallKinds> rate{};
  // For recv/send/sendmsg/sendfile: the chance of ENOBUFS, ENOMEM or ECONNRESET (drawn before
  // the benign ones), after which the engine must fail the connection.
  double fatal_rate = 0;
  // Where to log each injected fault, one line each (replaying a seed); nullptr: silent.
  std::FILE* log = nullptr;
};

// Starts injecting by `plan` (replacing any plan before) and zeroes counts().
void arm(const Plan& plan);
// Stops injecting; watched fds stay watched (their registrations keep being recorded).
void disarm();

// Watches fd (a listener, usually): faults apply to it while armed, and every fd accept4
// returns from it is watched too. Its record (fd_record) starts afresh.
void watch(int fd);
// Fds watched now (closed ones are no longer): 0 once a test closed all it opened.
std::size_t watched_count();

// What was injected on one fd since it was last watched (by watch() or as accepted); kept
// after its close, until the number is watched again, so an on_close callback can read it.
struct FdRecord {
  uint32_t faults = 0;   // faults of any kind
  int fatal_errno = 0;   // the first fatal one (ENOBUFS, ENOMEM, ECONNRESET), or 0
  Call fatal_call = Call::kRecv;
};
FdRecord fd_record(int fd);

// Since arm(): faultable calls seen and faults injected per kind, and fds accept4 returned
// from watched listeners.
struct Counts {
  std::array<uint64_t, kCallKinds> calls{};
  std::array<uint64_t, kCallKinds> faults{};
  uint64_t accepted = 0;
};
Counts counts();

}  // namespace testing_support::faults

#endif  // TESTS_TESTING_FAULT_INJECTION_H_
