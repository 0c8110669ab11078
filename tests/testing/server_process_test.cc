// tests/testing/server_process.h: the child-process helper signals and reaps its own child and
// nothing else. This binary puts its own kill() and waitpid() in front of libc's (the
// executable's definitions come first in symbol lookup, for the helper's calls too): one that
// names no single process (pid <= 0: every process the user may signal, a process group, any
// child) is counted and refused before it reaches the kernel, so a regression fails this test
// instead of signalling the Bazel server and the CI shell.
#include "tests/testing/server_process.h"

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

std::atomic<int> g_broad_kills{0};
std::atomic<int> g_broad_waits{0};

template <typename Fn>
Fn next_definition(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" int kill(pid_t pid, int sig) {
  if (pid <= 0) {
    ++g_broad_kills;
    errno = EPERM;
    return -1;
  }
  static const auto real = next_definition<int (*)(pid_t, int)>("kill");
  return real(pid, sig);
}

extern "C" pid_t waitpid(pid_t pid, int* status, int options) {
  if (pid <= 0) {
    ++g_broad_waits;
    errno = ECHILD;
    return -1;
  }
  static const auto real = next_definition<pid_t (*)(pid_t, int*, int)>("waitpid");
  return real(pid, status, options);
}

namespace {

using testing_support::ServerProcess;
constexpr auto kDeadline = std::chrono::seconds(20);

TEST(ServerProcessTest, HelperWhoseSpawnFailedStopsWithoutSignallingAnything) {
  {
    ServerProcess child({"/nonexistent/binary/for/server_process_test"}, kDeadline);
    EXPECT_FALSE(child.started());
    EXPECT_EQ(child.spawn_error(), ENOENT);
    EXPECT_EQ(child.pid(), -1);
    EXPECT_FALSE(child.signal(SIGTERM));
    EXPECT_EQ(child.stop(), -1);
    EXPECT_EQ(child.wait_exit(), -1);
  }  // the destructor too
  EXPECT_EQ(g_broad_kills.load(), 0);
  EXPECT_EQ(g_broad_waits.load(), 0);
}

TEST(ServerProcessTest, HelperWithNoArgumentsFailsToSpawnAndSignalsNothing) {
  {
    ServerProcess child({}, kDeadline);
    EXPECT_FALSE(child.started());
    EXPECT_EQ(child.spawn_error(), EINVAL);
    EXPECT_EQ(child.stop(), -1);
  }
  EXPECT_EQ(g_broad_kills.load(), 0);
  EXPECT_EQ(g_broad_waits.load(), 0);
}

TEST(ServerProcessTest, ChildThatExitedIsNeitherSignalledNorWaitedForAgain) {
  {
    ServerProcess child({"/bin/sh", "-c", "echo ready"}, kDeadline);
    ASSERT_TRUE(child.started());
    EXPECT_EQ(child.first_line(), "ready");
    const int status = child.wait_exit();
    EXPECT_TRUE(testing_support::exited_with(status, 0)) << testing_support::describe(status);
    EXPECT_EQ(child.pid(), -1);
    EXPECT_FALSE(child.signal(SIGTERM));
    EXPECT_EQ(child.stop(), -1);
  }
  EXPECT_EQ(g_broad_kills.load(), 0);
  EXPECT_EQ(g_broad_waits.load(), 0);
}

TEST(ServerProcessTest, StopTerminatesARunningChildWithItsDefaultSigtermAction) {
  // `exec sleep`: the shell's SIGTERM handling is not in the way; the helper resets the
  // action to its default whatever the test runner left ignored.
  ServerProcess child({"/bin/sh", "-c", "echo up; exec sleep 60"}, kDeadline);
  ASSERT_TRUE(child.started());
  EXPECT_EQ(child.first_line(), "up");
  EXPECT_TRUE(child.running());
  const int status = child.stop();
  ASSERT_NE(status, -1) << "still running at the deadline";
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM)
      << testing_support::describe(status);
  EXPECT_EQ(g_broad_kills.load(), 0);
}

TEST(ServerProcessTest, ChildStartsWithOnlyTheStandardFdsAndTheFdLimitAsked) {
  // An fd of this process, not close-on-exec, that the child must not inherit.
  const int leaked = dup(STDIN_FILENO);
  ASSERT_GE(leaked, 3);
  ServerProcess child({"/bin/sh", "-c", "ls /proc/self/fd | wc -l; ulimit -n; ulimit -Hn"},
                      kDeadline, {.fd_limit = 32});
  ASSERT_TRUE(child.started());
  std::string out;
  const int status = child.wait_exit(&out);
  EXPECT_TRUE(testing_support::exited_with(status, 0)) << testing_support::describe(status);
  // 0, 1, 2 and the fd ls opens to read /proc/self/fd; the limit, soft and hard.
  EXPECT_EQ(out, "4\n32\n32\n");
  close(leaked);
}

TEST(ServerProcessTest, ChildThatExitedIsNotRunningYetItsExitIsStillReported) {
  ServerProcess child({"/bin/sh", "-c", "echo bye; exit 3"}, kDeadline);
  ASSERT_TRUE(child.started());
  EXPECT_EQ(child.first_line(), "bye");
  EXPECT_EQ(child.first_line(), "");  // EOF: the child is gone
  EXPECT_FALSE(child.running());
  const int status = child.wait_exit();
  EXPECT_TRUE(testing_support::exited_with(status, 3)) << testing_support::describe(status);
}

TEST(ServerProcessTest, StdinPathIsWhatTheChildReadsAsItsStdin) {
  const std::string path = std::string(std::getenv("TEST_TMPDIR")) + "/stdin";
  FILE* f = std::fopen(path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("line one\nline two\n", f);
  std::fclose(f);
  ServerProcess child({"/bin/cat"}, kDeadline, {.stdin_path = path});
  ASSERT_TRUE(child.started());
  std::string out;
  const int status = child.wait_exit(&out);
  EXPECT_TRUE(testing_support::exited_with(status, 0)) << testing_support::describe(status);
  EXPECT_EQ(out, "line one\nline two\n");

  ServerProcess missing({"/bin/cat"}, kDeadline, {.stdin_path = path + ".missing"});
  EXPECT_FALSE(missing.started());
  EXPECT_EQ(missing.spawn_error(), ENOENT);
}

TEST(ServerProcessTest, StderrOnItsOwnPipeIsReadLineByLine) {
  ServerProcess child({"/bin/sh", "-c", "echo one >&2; echo two >&2; echo done"}, kDeadline,
                      {.stderr_to = testing_support::ChildStderr::kOwnPipe});
  ASSERT_TRUE(child.started());
  EXPECT_EQ(child.first_line(), "done");
  const int status = child.wait_exit();
  EXPECT_TRUE(testing_support::exited_with(status, 0)) << testing_support::describe(status);
  EXPECT_EQ(child.stderr_lines(), (std::vector<std::string>{"one", "two"}));
}

}  // namespace
