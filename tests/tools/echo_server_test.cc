// tools/echo_server as a real process: started with --port 0 and two shards (in each accept
// mode), fed over loopback, stopped with SIGTERM, which must exit with status 0.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "tests/testing/loopback.h"
#include "tests/testing/server_process.h"

namespace {

using Clock = std::chrono::steady_clock;
using testing_support::ms_left;
using testing_support::ServerProcess;

// Runfiles path, relative to the test's working directory.
constexpr char kBinary[] = "tools/echo_server";
constexpr auto kDeadline = std::chrono::seconds(30);

int connect_nonblocking(int port) {
  const int fd = testing_support::connect_loopback(port);
  if (fd >= 0) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

struct Client {
  int fd = -1;
  std::string out;  // what it sends
  std::size_t sent = 0;
  std::string in;  // what came back
  bool eof = false;
};

// The flags after "--port 0".
class EchoServerTest : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(EchoServerTest, TenConnectionsEachGetTheirMegabyteBackIntactThenSigtermExitsWith0) {
  std::vector<std::string> args = {kBinary, "--port", "0"};
  args.insert(args.end(), GetParam().begin(), GetParam().end());
  ServerProcess server(args, kDeadline);
  ASSERT_TRUE(server.started());
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
  EXPECT_TRUE(testing_support::exited_with(status, 0)) << testing_support::describe(status);
}

// Ten connections spread over both shards: by the acceptor thread, or by the kernel across
// one SO_REUSEPORT listener per shard.
INSTANTIATE_TEST_SUITE_P(
    TwoShards, EchoServerTest,
    ::testing::Values(std::vector<std::string>{"--threads", "2"},
                      std::vector<std::string>{"--threads", "2", "--accept-mode", "reuseport"}),
    [](const auto& info) { return info.param.size() > 2 ? "Reuseport" : "AcceptorThread"; });

}  // namespace
