// The seed document's Quick Example (seed_quick_example.c) as a real process: it serves
// keep-alive HTTP on several connections at once and exits cleanly on SIGINT.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tests/testing/loopback.h"
#include "tests/testing/server_process.h"

namespace {

using Clock = std::chrono::steady_clock;
using testing_support::ms_left;

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
  // The child starts with SIGINT at its default action, whatever the test runner ignores.
  testing_support::ServerProcess example({kExample, "0"}, kDeadline);
  ASSERT_TRUE(example.started()) << "spawn: " << std::strerror(example.spawn_error());
  const std::string line = example.first_line();
  int port = 0;
  ASSERT_EQ(std::sscanf(line.c_str(), "port %d", &port), 1) << "first line: " << line;
  ASSERT_GT(port, 0);

  std::vector<int> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(testing_support::connect_client(port, 0));  // non-blocking
  // Two rounds: each client sends its next request only after the previous answer (no
  // pipelining), and the three connections stay open together.
  for (int round = 0; round < 2; ++round) {
    for (const int fd : clients) testing_support::write_all(fd, kRequest);
    for (const int fd : clients) {
      EXPECT_EQ(read_bytes(fd, sizeof kResponse - 1, end), kResponse)
          << "round " << round << ", client fd " << fd;
    }
  }

  ASSERT_TRUE(example.signal(SIGINT));
  const int status = example.wait_exit();
  EXPECT_TRUE(testing_support::exited_with(status, 0)) << testing_support::describe(status);
  // The stop closed every connection, and no stray bytes followed the two responses.
  for (const int fd : clients) {
    EXPECT_EQ(read_to_eof(fd, end), "");
    close(fd);
  }
}

}  // namespace
