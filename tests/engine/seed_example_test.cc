// The seed document's Quick Example (seed_quick_example.c) as a real process: it serves
// keep-alive HTTP on several connections at once and exits cleanly on SIGINT.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

#include "tests/testing/loopback.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

// Bazel runs the test in its runfiles root; the binary is a data dependency.
constexpr char kExample[] = "tests/engine/seed_quick_example";
constexpr auto kDeadline = std::chrono::seconds(20);

constexpr char kRequest[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
constexpr char kResponse[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Length: 12\r\n"
    "Connection: keep-alive\r\n"
    "Keep-Alive: timeout=2\r\n"
    "\r\n"
    "Hello World!";

// Milliseconds left until `end` (0 once it passed), for poll().
int ms_left(Clock::time_point end) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

// The example process, with its stdout on a pipe. Killed and reaped if a test fails early.
class Example {
 public:
  ~Example() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) close(out_);
  }

  // Starts the example on port "0" with default signal handling.
  bool start() {
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) < 0) return false;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDOUT_FILENO);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGPIPE);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    char* argv[] = {const_cast<char*>(kExample), const_cast<char*>("0"), nullptr};
    const int err = posix_spawn(&pid_, kExample, &actions, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    close(pipe_fds[1]);
    out_ = pipe_fds[0];
    if (err != 0) pid_ = -1;
    return err == 0;
  }

  // The first line of stdout (without '\n'), or "" if none came before `end`.
  std::string first_line(Clock::time_point end) {
    std::string line;
    char c;
    for (;;) {
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, ms_left(end)) <= 0) return "";
      if (read(out_, &c, 1) != 1) return "";
      if (c == '\n') return line;
      line += c;
    }
  }

  // Waits for the exit; the raw wait status, or -1 if it did not exit before `end`.
  int wait_exit(Clock::time_point end) {
    for (;;) {
      int status = 0;
      const pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return status;
      }
      if (r < 0 || Clock::now() > end) return -1;
      const timespec pause{0, 1000000};  // 1 ms between polls of an external process
      nanosleep(&pause, nullptr);
    }
  }

  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
};

// Reads from a non-blocking client until `want` bytes arrived, it closed, or `end` passed.
std::string read_bytes(int fd, std::size_t want, Clock::time_point end) {
  std::string got;
  bool open = true;
  while (open && got.size() < want) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, ms_left(end)) <= 0) break;
    open = testing_support::drain(fd, &got);
  }
  return got;
}

// Everything a client receives until the server closes it (or `end` passes).
std::string read_to_eof(int fd, Clock::time_point end) {
  std::string got;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, ms_left(end)) <= 0) return got + "<no EOF>";
    if (!testing_support::drain(fd, &got)) return got;
  }
}

TEST(SeedExampleTest, ServesKeepAliveRequestsOnThreeConnectionsAndExitsCleanlyOnSigint) {
  ASSERT_EQ(access(kExample, X_OK), 0) << "missing data dependency " << kExample;
  const auto end = Clock::now() + kDeadline;
  Example example;
  ASSERT_TRUE(example.start());
  const std::string line = example.first_line(end);
  int port = 0;
  ASSERT_EQ(std::sscanf(line.c_str(), "port %d", &port), 1) << "first line: " << line;
  ASSERT_GT(port, 0);

  std::vector<int> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(testing_support::connect_client(port));
  // Two rounds: each client sends its next request only after the previous answer (no
  // pipelining), and the three connections stay open together.
  for (int round = 0; round < 2; ++round) {
    for (const int fd : clients) testing_support::write_all(fd, kRequest);
    for (const int fd : clients) {
      EXPECT_EQ(read_bytes(fd, sizeof kResponse - 1, end), kResponse)
          << "round " << round << ", client fd " << fd;
    }
  }

  ASSERT_EQ(kill(example.pid(), SIGINT), 0);
  const int status = example.wait_exit(end);
  ASSERT_NE(status, -1) << "no exit within the deadline after SIGINT";
  EXPECT_TRUE(WIFEXITED(status)) << "status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
  // The stop closed every connection, and no stray bytes followed the two responses.
  for (const int fd : clients) {
    EXPECT_EQ(read_to_eof(fd, end), "");
    close(fd);
  }
}

}  // namespace
