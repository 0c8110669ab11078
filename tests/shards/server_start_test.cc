// sock_server_start() when a thread cannot be made (pthread_create fails with EAGAIN: the
// process's thread limit, or no memory for a stack) or a reactor cannot (epoll_create1 fails
// with EMFILE): NULL with that errno and nothing left behind, whichever thread or reactor
// failed and in either accept mode. No fd stays open (listeners, epoll sets, eventfds, pause
// timers) and the threads that did start are stopped and joined; then a server starts and
// stops normally in the same process.
//
// The test binary defines pthread_create and epoll_create1, ahead of libc's (and a sanitizer
// runtime's) in symbol lookup, as tests/testing/fault_injection.h does for its calls: the
// engine and std::thread reach them through the PLT. Each forwards to the next definition
// unless a failure is armed.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sys/epoll.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <string>

#include "shards/server.h"

namespace {

// -1: every call succeeds. n >= 0: the next n succeed, then each one fails.
std::atomic<int> g_threads_left{-1};
std::atomic<int> g_epolls_left{-1};

// Whether the next call may go through, by the countdown `left`.
bool may_pass(std::atomic<int>& left) {
  int n = left.load();
  while (n > 0 && !left.compare_exchange_weak(n, n - 1)) {}
  return n != 0;
}

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;  // the directory's own fd counts in every call alike
}

struct Mode {
  SockAcceptMode accept_mode;
  int threads;
  // What sock_server_start makes of each (one per shard, one more for an acceptor thread).
  int reactors;
};

class ServerStartTest : public testing::TestWithParam<Mode> {
 protected:
  void TearDown() override {
    g_threads_left = -1;
    g_epolls_left = -1;
  }

  // For each of the `count` calls in turn, a start whose call fails (by the countdown `left`)
  // returns NULL with `expected` and leaves the process's fds as they were; a plain start
  // works afterwards.
  void expect_each_failure_undone(std::atomic<int>& left, int count, int expected) {
    const Mode mode = GetParam();
    for (int fail_at = 0; fail_at < count; ++fail_at) {
      const std::size_t fds_before = open_fds();
      left = fail_at;
      errno = 0;
      SockServer* server = sock_server_start(.address = "127.0.0.1", .port = "0",
                                             .threads = mode.threads,
                                             .accept_mode = mode.accept_mode);
      const int err = errno;
      left = -1;
      EXPECT_EQ(server, nullptr) << "call " << fail_at << " failed";
      EXPECT_EQ(err, expected) << "call " << fail_at << " failed";
      if (server) sock_server_stop(server);
      EXPECT_EQ(open_fds(), fds_before) << "call " << fail_at << " failed";
    }
    SockServer* server = sock_server_start(.address = "127.0.0.1", .port = "0",
                                           .threads = mode.threads,
                                           .accept_mode = mode.accept_mode);
    ASSERT_NE(server, nullptr);
    EXPECT_EQ(sock_server_stop(server), 0);
  }
};

TEST_P(ServerStartTest, AThreadThatCannotStartFailsTheStartWithEagainAndLeavesNothingBehind) {
  expect_each_failure_undone(g_threads_left, GetParam().reactors, EAGAIN);
}

TEST_P(ServerStartTest, AReactorThatCannotBeMadeFailsTheStartWithItsErrnoAndLeavesNothingBehind) {
  expect_each_failure_undone(g_epolls_left, GetParam().reactors, EMFILE);
}

INSTANTIATE_TEST_SUITE_P(AcceptModes, ServerStartTest,
                         testing::Values(Mode{SOCK_ACCEPT_THREAD, 2, 3},
                                         Mode{SOCK_ACCEPT_REUSEPORT, 2, 2},
                                         Mode{SOCK_ACCEPT_THREAD, 1, 1}),
                         [](const testing::TestParamInfo<Mode>& info) {
                           return std::string(info.param.accept_mode == SOCK_ACCEPT_THREAD
                                                  ? "AcceptorThread"
                                                  : "Reuseport") +
                                  std::to_string(info.param.threads) + "Shards";
                         });

}  // namespace

extern "C" int pthread_create(pthread_t* thread, const pthread_attr_t* attr,
                              void* (*start)(void*), void* arg) {
  using Create = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
  static const auto next = reinterpret_cast<Create>(dlsym(RTLD_NEXT, "pthread_create"));
  if (!may_pass(g_threads_left)) return EAGAIN;
  return next(thread, attr, start, arg);
}

extern "C" int epoll_create1(int flags) {
  using Create = int (*)(int);
  static const auto next = reinterpret_cast<Create>(dlsym(RTLD_NEXT, "epoll_create1"));
  if (!may_pass(g_epolls_left)) {
    errno = EMFILE;
    return -1;
  }
  return next(flags);
}
