// tools/echo_server as a real process: started with --port 0, fed over loopback, stopped with
// SIGTERM, which must exit with status 0.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "tests/testing/loopback.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

// Runfiles path, relative to the test's working directory.
constexpr char kBinary[] = "tools/echo_server";
constexpr auto kDeadline = std::chrono::seconds(30);

int ms_left(Clock::time_point end) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
  return ms.count() > 0 ? static_cast<int>(ms.count()) : 0;
}

// The server as a child process; its stdout comes through a pipe that reaches EOF when it exits.
struct ServerProcess {
  pid_t pid = -1;
  int out = -1;

  explicit ServerProcess(std::vector<const char*> argv) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    argv.push_back(nullptr);
    if (posix_spawn(&pid, argv[0], &actions, nullptr, const_cast<char**>(argv.data()), environ)) {
      pid = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    out = fds[0];
  }
  ~ServerProcess() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (out >= 0) close(out);
  }

  std::string first_line() const {
    const auto end = Clock::now() + kDeadline;
    std::string line;
    char c;
    pollfd p = {out, POLLIN, 0};
    while (poll(&p, 1, ms_left(end)) > 0 && read(out, &c, 1) == 1 && c != '\n') line += c;
    return line;
  }

  // SIGTERM, then the wait status once stdout reaches EOF; -1 past the deadline.
  int stop() {
    kill(pid, SIGTERM);
    const auto end = Clock::now() + kDeadline;
    char buf[256];
    pollfd p = {out, POLLIN, 0};
    for (;;) {
      if (poll(&p, 1, ms_left(end)) <= 0) return -1;
      if (read(out, buf, sizeof buf) <= 0) break;
    }
    int status = -1;
    waitpid(pid, &status, 0);
    pid = -1;
    return status;
  }
};

int connect_nonblocking(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    close(fd);
    return -1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

struct Client {
  int fd = -1;
  std::string out;  // what it sends
  std::size_t sent = 0;
  std::string in;  // what came back
  bool eof = false;
};

TEST(EchoServerTest, TenConnectionsEachGetTheirMegabyteBackIntactThenSigtermExitsWith0) {
  ServerProcess server({kBinary, "--port", "0"});
  ASSERT_GT(server.pid, 0);
  const std::string line = server.first_line();
  int port = 0;
  ASSERT_EQ(std::sscanf(line.c_str(), "echo_server listening on port %d", &port), 1) << line;

  std::vector<Client> clients(10);
  for (std::size_t i = 0; i < clients.size(); ++i) {
    clients[i].fd = connect_nonblocking(port);
    ASSERT_GE(clients[i].fd, 0);
    clients[i].out = testing_support::pattern(1024 * 1024, static_cast<unsigned>(i + 1));
  }
  // Send and receive at once (the echo can fill the socket buffers long before 1 MB is
  // sent); once all is sent, shut the write side: the server must send back everything it
  // owes and only then close, so EOF ends each stream.
  const auto end = Clock::now() + kDeadline;
  for (std::size_t open = clients.size(); open > 0;) {
    std::vector<pollfd> fds;
    for (const Client& c : clients) {
      const short events = c.sent < c.out.size() ? POLLIN | POLLOUT : POLLIN;
      fds.push_back({c.eof ? -1 : c.fd, events, 0});  // poll skips negative fds
    }
    ASSERT_GT(poll(fds.data(), fds.size(), ms_left(end)), 0) << "stalled; " << open << " open";
    for (std::size_t i = 0; i < clients.size(); ++i) {
      Client& c = clients[i];
      if ((fds[i].revents & POLLOUT) && c.sent < c.out.size()) {
        const ssize_t n = send(c.fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
        ASSERT_TRUE(n > 0 || errno == EAGAIN) << "send: " << errno;
        if (n > 0) c.sent += static_cast<std::size_t>(n);
        if (c.sent == c.out.size()) shutdown(c.fd, SHUT_WR);
      }
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[64 * 1024];
        const ssize_t n = recv(c.fd, buf, sizeof buf, 0);
        ASSERT_TRUE(n >= 0 || errno == EAGAIN) << "recv: " << errno;
        if (n > 0) c.in.append(buf, static_cast<std::size_t>(n));
        if (n == 0) {
          c.eof = true;
          --open;
        }
      }
    }
  }
  for (std::size_t i = 0; i < clients.size(); ++i) {
    EXPECT_EQ(clients[i].in.size(), clients[i].out.size()) << "connection " << i;
    EXPECT_TRUE(clients[i].in == clients[i].out) << "connection " << i << ": bytes differ";
    close(clients[i].fd);
  }

  const int status = server.stop();
  EXPECT_TRUE(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "wait status " << status;
}

}  // namespace
