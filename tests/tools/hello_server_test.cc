// tools/hello_server as a real process: started with --port 0 and one or two shards, spoken to
// over loopback, stopped with SIGTERM. Every test ends with that stop, which must exit with
// status 0. Tests that need the server to handle two connections' events in order run one
// shard; the others run two.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "tests/testing/server_process.h"

namespace {

using testing_support::connect_client;
using testing_support::recv_exact;
using testing_support::repeat;
using testing_support::send_all;
using testing_support::describe;
using testing_support::exited_with;
using testing_support::ServerProcess;

// Runfiles path, relative to the test's working directory.
constexpr char kBinary[] = "tools/hello_server";
constexpr auto kDeadline = std::chrono::seconds(20);

const std::string kRequest =
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: hello_server_test\r\n\r\n";
const std::string kResponse =
    "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n"
    "Connection: keep-alive\r\n\r\nHello World!";


// Ends the client's side (the server reads EOF, sends what it owes, then closes) and returns
// everything that still arrived before the server's EOF; "<no EOF>" if none came.
std::string finish(int fd) {
  shutdown(fd, SHUT_WR);
  std::string rest;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof buf, 0)) > 0) rest.append(buf, static_cast<std::size_t>(n));
  return n == 0 ? rest : "<no EOF>";
}

class HelloServerTest : public ::testing::Test {
 protected:
  // Starts the server with `flags` after "--port 0"; call as ASSERT_NO_FATAL_FAILURE(start(..)).
  void start(const std::vector<std::string>& flags) {
    std::vector<std::string> args = {kBinary, "--port", "0"};
    args.insert(args.end(), flags.begin(), flags.end());
    server_ = std::make_unique<ServerProcess>(args, kDeadline);
    ASSERT_TRUE(server_->started());
    const std::string line = server_->first_line();
    ASSERT_EQ(std::sscanf(line.c_str(), "hello_server listening on http://0.0.0.0:%d/", &port_), 1)
        << "first line: " << line;
    ASSERT_GT(port_, 0);
  }

  // Connections the test left open are still open at SIGTERM: the stop must close them.
  void TearDown() override {
    if (server_ && !stopped_) {
      const int status = server_->stop();
      EXPECT_TRUE(exited_with(status, 0)) << describe(status);
    }
    for (const int fd : clients_) close(fd);
  }

  int client() {
    const int fd = connect_client(port_);
    if (fd >= 0) clients_.push_back(fd);
    return fd;
  }

  std::unique_ptr<ServerProcess> server_;
  int port_ = 0;
  bool stopped_ = false;
  std::vector<int> clients_;
};

TEST_F(HelloServerTest, KeepAliveConnectionAnswers100SequentialRequests) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(send_all(fd, kRequest));
    ASSERT_EQ(recv_exact(fd, kResponse.size()), kResponse) << "request " << i;
  }
  EXPECT_EQ(finish(fd), "");
}

TEST_F(HelloServerTest, FiftyPipelinedRequestsInOneWriteGetFiftyResponsesInOrder) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(send_all(fd, repeat(kRequest, 50)));
  EXPECT_EQ(recv_exact(fd, 50 * kResponse.size()), repeat(kResponse, 50));
  EXPECT_EQ(finish(fd), "");  // not one response more
}

TEST_F(HelloServerTest, RequestsSentOneByteAtATimeAreAnsweredOnceEachAfterTheirLastByte) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const int split = client();
  const int barrier = client();
  ASSERT_GE(split, 0);
  ASSERT_GE(barrier, 0);
  // Two requests back to back: the second starts right after the first's terminator.
  const std::string input = kRequest + kRequest;
  for (std::size_t i = 0; i < input.size(); ++i) {
    ASSERT_TRUE(send_all(split, input.substr(i, 1)));
    // A round trip on another connection of the same single shard: the byte sent
    // before it has been read by the time its answer is back (so each byte tends to arrive
    // in a read of its own), and an answer owed to `split` would already be waiting.
    ASSERT_TRUE(send_all(barrier, kRequest));
    ASSERT_EQ(recv_exact(barrier, kResponse.size()), kResponse);
    if ((i + 1) % kRequest.size() == 0) {
      ASSERT_EQ(recv_exact(split, kResponse.size()), kResponse) << "after byte " << i;
    } else {
      char c;
      ASSERT_EQ(recv(split, &c, 1, MSG_DONTWAIT), -1) << "answered early, at byte " << i;
      ASSERT_EQ(errno, EAGAIN);
    }
  }
  EXPECT_EQ(finish(split), "");
}

TEST_F(HelloServerTest, CarriageReturnRightBeforeTheTerminatorStillEndsOneRequest) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  const int fd = client();
  ASSERT_GE(fd, 0);
  // "\r\n\r" then '\r' must leave the match at "\r", so "\n\r\n" completes a terminator.
  ASSERT_TRUE(send_all(fd, "GET / HTTP/1.1\r\nX: y\r\n\r\r\n\r\n"));
  EXPECT_EQ(recv_exact(fd, kResponse.size()), kResponse);
  EXPECT_EQ(finish(fd), "");
}

TEST_F(HelloServerTest, AConnectionOnAReusedFdNumberStartsWithNoPartialTerminator) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2"}));
  // Each connection ends with half a terminator ("\r\n") pending and closes; the server reuses
  // its fd number for the next connection, on the other shard (round-robin). Each starts with
  // a stray "\r\n", so a match left over from the last one would end a request there: two
  // responses instead of one.
  for (int i = 0; i < 40; ++i) {
    const int fd = connect_client(port_);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_all(fd, "\r\nGET / HTTP/1.1\r\n\r\n"));
    ASSERT_EQ(recv_exact(fd, kResponse.size()), kResponse) << "connection " << i;
    ASSERT_TRUE(send_all(fd, "GET / HTTP/1.1\r\n"));
    EXPECT_EQ(finish(fd), "") << "connection " << i;  // not one response more
    close(fd);
  }
}

// The flags after "--port 0": two shards in every accept mode and placement, pinned or not.
constexpr const char* kModeNames[] = {"RoundRobin", "LeastLoaded", "Reuseport", "Pinned"};
class HelloServerModesTest : public HelloServerTest,
                             public ::testing::WithParamInterface<std::vector<std::string>> {};

TEST_P(HelloServerModesTest, TwoHundredConcurrentConnectionsAreEachAnsweredTwice) {
  ASSERT_NO_FATAL_FAILURE(start(GetParam()));
  std::vector<int> fds;
  for (int i = 0; i < 200; ++i) {
    fds.push_back(client());
    ASSERT_GE(fds.back(), 0) << "connection " << i;
  }
  for (int round = 0; round < 2; ++round) {
    for (const int fd : fds) ASSERT_TRUE(send_all(fd, kRequest));
    for (std::size_t i = 0; i < fds.size(); ++i) {
      ASSERT_EQ(recv_exact(fds[i], kResponse.size()), kResponse)
          << "round " << round << ", connection " << i;
    }
  }
  for (const int fd : fds) ASSERT_EQ(finish(fd), "");
}

INSTANTIATE_TEST_SUITE_P(
    TwoShards, HelloServerModesTest,
    ::testing::Values(std::vector<std::string>{"--threads", "2"},
                      std::vector<std::string>{"--threads", "2", "--placement", "least-loaded"},
                      std::vector<std::string>{"--threads", "2", "--accept-mode", "reuseport"},
                      std::vector<std::string>{"--threads", "2", "--pin"}),
    [](const auto& info) { return std::string(kModeNames[info.index]); });

TEST_F(HelloServerTest, SigtermClosesOpenConnectionsAndExitsWithStatus0) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "1"}));
  const int idle = client();
  const int partial = client();
  ASSERT_GE(idle, 0);
  ASSERT_GE(partial, 0);
  ASSERT_TRUE(send_all(partial, kRequest.substr(0, 20)));  // part of a request: nothing owed
  // The round trip on `idle` comes after the server read those bytes (one shard, events in
  // order): unread input would turn the close into a reset.
  ASSERT_TRUE(send_all(idle, kRequest));
  ASSERT_EQ(recv_exact(idle, kResponse.size()), kResponse);
  stopped_ = true;
  const int status = server_->stop();
  EXPECT_TRUE(exited_with(status, 0)) << describe(status);
  char c;
  EXPECT_EQ(recv(idle, &c, 1, 0), 0);  // EOF: closed by the server, not reset, not left open
  EXPECT_EQ(recv(partial, &c, 1, 0), 0);
}

TEST_F(HelloServerTest, SigtermClosesConnectionsOnEveryShardAndExitsWithStatus0) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "2", "--accept-mode", "reuseport"}));
  std::vector<int> fds;
  for (int i = 0; i < 16; ++i) {  // the kernel spreads them over both listeners by address
    fds.push_back(client());
    ASSERT_GE(fds.back(), 0);
    ASSERT_TRUE(send_all(fds.back(), kRequest));
    ASSERT_EQ(recv_exact(fds.back(), kResponse.size()), kResponse);
  }
  stopped_ = true;
  const int status = server_->stop();
  EXPECT_TRUE(exited_with(status, 0)) << describe(status);
  for (const int fd : fds) {
    char c;
    EXPECT_EQ(recv(fd, &c, 1, 0), 0);  // EOF, from whichever shard held it
  }
}

// The LISTEN sockets on `port` in this network namespace, from /proc/net/tcp and tcp6
// (columns: "sl local_address rem_address st ..."; addresses are HEX_IP:HEX_PORT; st 0A is
// LISTEN).
int listeners_on(int port) {
  int count = 0;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
      char local[64], remote[64], state[8];
      if (std::sscanf(line.c_str(), "%*s %63s %63s %7s", local, remote, state) != 3) continue;
      const std::string address = local;
      const int local_port = std::stoi(address.substr(address.rfind(':') + 1), nullptr, 16);
      if (local_port == port && std::string(state) == "0A") ++count;
    }
  }
  return count;
}

TEST_F(HelloServerTest, ReuseportModeListensOncePerThread) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "3", "--accept-mode", "reuseport"}));
  EXPECT_EQ(listeners_on(port_), 3);
}

TEST_F(HelloServerTest, AcceptorThreadModeListensOnceWhateverTheThreads) {
  ASSERT_NO_FATAL_FAILURE(start({"--threads", "3", "--accept-mode", "thread"}));
  EXPECT_EQ(listeners_on(port_), 1);
}

// h2o's t/40max-connections.t with docs/reliability.md's numbers: at --max-connections 2, while
// two keep-alive clients hold their connections, a third client's request gets no answer for
// kWaitWindow and the server uses under 5% of a CPU meanwhile (its listener is not watched:
// nothing wakes it); once one of the two leaves, the third is answered. Not with two
// SO_REUSEPORT shards: each holds one, and the third waits on whichever the kernel's hash
// picked, which the leaving client may not free (tests/shards/max_connections_test).
constexpr auto kWaitWindow = std::chrono::seconds(1);
using Flags = std::vector<std::string>;
class HelloServerMaxConnectionsTest : public HelloServerTest,
                                      public ::testing::WithParamInterface<Flags> {};

TEST_P(HelloServerMaxConnectionsTest, TheNextClientWaitsWithoutCpuUntilOneLeavesThenIsAnswered) {
  Flags flags = {"--max-connections", "2"};
  flags.insert(flags.end(), GetParam().begin(), GetParam().end());
  ASSERT_NO_FATAL_FAILURE(start(flags));
  const int first = client();
  const int second = client();
  for (const int fd : {first, second}) {
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_all(fd, kRequest));
    ASSERT_EQ(recv_exact(fd, kResponse.size()), kResponse);
  }
  const int third = client();
  ASSERT_GE(third, 0);
  ASSERT_TRUE(send_all(third, kRequest));
  const double cpu_before = testing_support::cpu_seconds(server_->pid());
  pollfd p{third, POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, static_cast<int>(std::chrono::milliseconds(kWaitWindow).count())), 0)
      << "the third client was answered while two were open";
  const double cpu = testing_support::cpu_seconds(server_->pid()) - cpu_before;
  EXPECT_LT(cpu, 0.05 * std::chrono::duration<double>(kWaitWindow).count()) << cpu << " s";

  close(first);
  clients_.erase(clients_.begin());
  const auto closed = std::chrono::steady_clock::now();
  EXPECT_EQ(recv_exact(third, kResponse.size()), kResponse);
  const auto after = std::chrono::steady_clock::now() - closed;
  std::printf("answered %.1f ms after the close\n",
              std::chrono::duration<double, std::milli>(after).count());
  // Not a speed check: a close must wake the held listener, and a lost wakeup would still be
  // answered at the loop's next tick (REACTOR_TICK, 1 s). The research's bound, 0.5 s, tells
  // the two apart with room (measured: 0.2-0.3 ms).
  EXPECT_LT(after, std::chrono::milliseconds(500)) << "the close did not wake the listener";
}

INSTANTIATE_TEST_SUITE_P(
    Modes, HelloServerMaxConnectionsTest,
    ::testing::Values(Flags{"--threads", "1"}, Flags{"--threads", "2", "--accept-mode", "thread"}),
    [](const auto& info) { return info.index == 0 ? "OneShard" : "TwoShardsAcceptor"; });

TEST(HelloServerFlagsTest, HelpListsEveryFlagAndExitsWith0) {
  ServerProcess server({kBinary, "--help"}, kDeadline);
  ASSERT_TRUE(server.started());
  std::string help = server.first_line();
  EXPECT_EQ(help.rfind("usage: ", 0), 0u);
  for (std::string line; !(line = server.first_line()).empty();) help += "\n" + line;
  for (const char* flag :
       {"--port", "--threads", "--accept-mode", "--placement", "--pin", "--max-connections"}) {
    EXPECT_NE(help.find(flag), std::string::npos) << flag << " missing from:\n" << help;
  }
  const int status = server.wait_exit();
  EXPECT_TRUE(exited_with(status, 0)) << describe(status);
}

// Each command line must be refused with status 2 before anything listens.
constexpr const char* kBadFlagNames[] = {
    "UnknownOption",       "PortWithoutValue",  "ZeroThreads",     "ThreadsNotANumber",
    "ThreadsWithoutValue", "UnknownAcceptMode", "UnknownPlacement", "NegativeMaxConnections",
    "MaxConnectionsPastUnsigned"};
class HelloServerBadFlagsTest : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(HelloServerBadFlagsTest, IsRefusedWithStatus2) {
  std::vector<std::string> args = {kBinary};
  args.insert(args.end(), GetParam().begin(), GetParam().end());
  ServerProcess server(args, kDeadline);
  ASSERT_TRUE(server.started());
  const int status = server.wait_exit();
  EXPECT_TRUE(exited_with(status, 2)) << describe(status);
}

INSTANTIATE_TEST_SUITE_P(CommandLines, HelloServerBadFlagsTest,
                         ::testing::Values(std::vector<std::string>{"--bogus"},
                                           std::vector<std::string>{"--port"},
                                           std::vector<std::string>{"--threads", "0"},
                                           std::vector<std::string>{"--threads", "2x"},
                                           std::vector<std::string>{"--threads"},
                                           std::vector<std::string>{"--accept-mode", "fork"},
                                           std::vector<std::string>{"--placement", "random"},
                                           std::vector<std::string>{"--max-connections", "-1"},
                                           std::vector<std::string>{"--max-connections",
                                                                    "4294967296"}),
                         [](const auto& info) { return std::string(kBadFlagNames[info.index]); });

}  // namespace
