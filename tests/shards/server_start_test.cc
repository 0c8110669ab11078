// sock_server_start() when a thread cannot be made (pthread_create fails with EAGAIN: the
// process's thread limit, or no memory for a stack): NULL with errno EAGAIN and nothing left
// behind, whichever thread failed and in either accept mode. No fd stays open (listeners,
// epoll sets, eventfds, pause timers) and the threads that did start are stopped and joined;
// then a server starts and stops normally in the same process.
//
// The test binary defines pthread_create, ahead of libc's (and a sanitizer runtime's) in
// symbol lookup, as tests/testing/fault_injection.h does for its calls: std::thread reaches it
// through the PLT. It forwards to the next definition unless a failure is armed.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <filesystem>
#include <string>

#include "shards/server.h"

namespace {

// -1: every creation succeeds. n >= 0: the next n succeed, then each one fails with EAGAIN.
std::atomic<int> g_creations_left{-1};

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;  // the directory's own fd counts in every call alike
}

struct Mode {
  SockAcceptMode accept_mode;
  int threads;
  int creations;  // the threads sock_server_start makes: one per shard, one for an acceptor
};

class ServerStartTest : public testing::TestWithParam<Mode> {
 protected:
  void TearDown() override { g_creations_left = -1; }
};

TEST_P(ServerStartTest, AThreadThatCannotStartFailsTheStartWithEagainAndLeavesNothingBehind) {
  const Mode mode = GetParam();
  for (int fail_at = 0; fail_at < mode.creations; ++fail_at) {
    const std::size_t fds_before = open_fds();
    g_creations_left = fail_at;
    errno = 0;
    SockServer* server = sock_server_start(.address = "127.0.0.1", .port = "0",
                                           .threads = mode.threads,
                                           .accept_mode = mode.accept_mode);
    const int err = errno;
    g_creations_left = -1;
    EXPECT_EQ(server, nullptr) << "thread " << fail_at << " failed";
    EXPECT_EQ(err, EAGAIN) << "thread " << fail_at << " failed";
    if (server) sock_server_stop(server);
    EXPECT_EQ(open_fds(), fds_before) << "thread " << fail_at << " failed";
  }
  SockServer* server = sock_server_start(.address = "127.0.0.1", .port = "0",
                                         .threads = mode.threads, .accept_mode = mode.accept_mode);
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(sock_server_stop(server), 0);
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
  int left = g_creations_left.load();
  while (left > 0 && !g_creations_left.compare_exchange_weak(left, left - 1)) {}
  if (left == 0) return EAGAIN;
  return next(thread, attr, start, arg);
}
