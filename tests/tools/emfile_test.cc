// tools/hello_server out of fds (issue 3: "EMFILE under prlimit --nofile=64"). The server runs
// with RLIMIT_NOFILE 64, soft and hard (so sock_max_capacity cannot raise it). 40 keep-alive
// clients work; then 200 more connect, more than it has fds for: those it cannot accept wait
// in the backlog, and accept4 fails with EMFILE. At the limit, while the first clients keep
// sending requests, the server must (a) answer every one of them, (b) use little more CPU than
// the same load cost it below the limit (a pause, not a spin: a loop that retried accept4 at
// once would use a whole core), (c) log at most one line per second; and once 30 of the first clients leave, (d) exactly 30
// connections waiting in the backlog are accepted and answered.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/testing/server_process.h"

namespace {

using Clock = std::chrono::steady_clock;
using testing_support::cpu_seconds;
using testing_support::describe;
using testing_support::exited_with;
using testing_support::ms_left;
using testing_support::ServerProcess;

// Runfiles path, relative to the test's working directory.
constexpr char kBinary[] = "tools/hello_server";
constexpr rlim_t kFdLimit = 64;
constexpr int kEarlyClients = 40;
constexpr int kLateClients = 200;
constexpr int kLeaving = 30;  // early clients that close, freeing that many server fds
constexpr auto kWindow = std::chrono::seconds(2);
// One request on one early client per kPaceMs during the window: a light, steady load, so the
// CPU the server uses is the cost of being at the limit, not of the load.
constexpr int kPaceMs = 10;
constexpr auto kDeadline = std::chrono::seconds(20);

const std::string kRequest = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
const std::string kResponse =
    "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n"
    "Connection: keep-alive\r\n\r\nHello World!";

int open_fds(pid_t pid) {
  int n = 0;
  for ([[maybe_unused]] const auto& e :
       std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    ++n;
  }
  return n;
}

// One request, and exactly its response back (or what came before a close or a 10 s silence).
std::string round_trip(int fd) {
  if (send(fd, kRequest.data(), kRequest.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(kRequest.size())) {
    return "<send failed>";
  }
  std::string got(kResponse.size(), '\0');
  std::size_t have = 0;
  while (have < got.size()) {
    const ssize_t n = recv(fd, got.data() + have, got.size() - have, 0);
    if (n <= 0) break;
    have += static_cast<std::size_t>(n);
  }
  got.resize(have);
  return got;
}

// A non-blocking connection that sends one request once connected and collects the answer.
struct LateClient {
  int fd = -1;
  bool sent = false;
  std::string in;
  int error = 0;  // a failed connect or a reset: never expected
};

LateClient connect_late(int port) {
  LateClient c;
  c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (c.fd < 0 || (connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 &&
                   errno != EINPROGRESS)) {
    c.error = errno;
  }
  return c;
}

bool answered(const LateClient& c) { return c.in == kResponse; }

int count_answered(const std::vector<LateClient>& late) {
  int n = 0;
  for (const LateClient& c : late) n += answered(c);
  return n;
}

// Waits up to timeout_ms for the late clients or the server's stderr, then moves each late
// client along (sends its request once connected, reads its answer) and reads the stderr.
void pump(std::vector<LateClient>& late, ServerProcess& server, int timeout_ms) {
  std::vector<pollfd> fds;
  for (const LateClient& c : late) {
    const bool waiting = c.error == 0 && c.in.size() < kResponse.size();
    fds.push_back({waiting ? c.fd : -1, static_cast<short>(c.sent ? POLLIN : POLLOUT), 0});
  }
  fds.push_back({server.stderr_fd(), POLLIN, 0});
  if (poll(fds.data(), fds.size(), timeout_ms) <= 0) return;
  server.stderr_lines();
  for (std::size_t i = 0; i < late.size(); ++i) {
    LateClient& c = late[i];
    if (fds[i].revents & (POLLERR | POLLHUP)) {
      socklen_t len = sizeof c.error;
      getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &c.error, &len);
      if (c.error == 0) c.error = ECONNRESET;
    } else if ((fds[i].revents & POLLOUT) && !c.sent) {
      // A fresh connection's send buffer always takes a request this small.
      c.sent = send(c.fd, kRequest.data(), kRequest.size(), MSG_NOSIGNAL) ==
               static_cast<ssize_t>(kRequest.size());
      if (!c.sent) c.error = errno;
    } else if (fds[i].revents & POLLIN) {
      char buf[512];
      const ssize_t n = recv(c.fd, buf, sizeof buf, 0);
      if (n > 0) c.in.append(buf, static_cast<std::size_t>(n));
      if (n == 0) c.error = ECONNRESET;
    }
  }
}

std::string joined(const std::vector<std::string>& lines) {
  std::string s;
  for (const std::string& l : lines) s += "  " + l + "\n";
  return s;
}

// The flags after "--port 0": one shard, two behind the acceptor thread, two with a listener
// each (each shard pauses its own accepts).
constexpr const char* kModeNames[] = {"OneShard", "TwoShards", "TwoShardsReuseport"};
class EmfileTest : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(EmfileTest, AtTheFdLimitServesExistingClientsWithoutSpinningThenAcceptsWhenFdsFree) {
  std::vector<std::string> args = {kBinary, "--port", "0"};
  args.insert(args.end(), GetParam().begin(), GetParam().end());
  ServerProcess server(args, kDeadline,
                       {.stderr_to = testing_support::ChildStderr::kOwnPipe, .fd_limit = kFdLimit});
  ASSERT_TRUE(server.started()) << "spawn: " << std::strerror(server.spawn_error());
  int port = 0;
  const std::string line = server.first_line();
  ASSERT_EQ(std::sscanf(line.c_str(), "hello_server listening on http://0.0.0.0:%d/", &port), 1)
      << "first line: " << line << "\nstderr:\n"
      << joined(server.stderr_lines());

  std::vector<int> early;
  for (int i = 0; i < kEarlyClients; ++i) {
    early.push_back(testing_support::connect_client(port));  // 10 s timeouts
    ASSERT_GE(early.back(), 0);
    ASSERT_EQ(round_trip(early.back()), kResponse) << "early client " << i;
  }

  // kWindow of the paced load on the early clients, with the late clients (if any) pumped
  // meanwhile: the requests answered and the server's CPU and log lines over the wall time.
  std::vector<LateClient> late;
  struct Window {
    int requests = 0;
    double cpu = 0, wall = 0;
    std::size_t lines = 0;
  };
  const auto paced_window = [&](const char* what) {
    Window w;
    const std::size_t lines_before = server.stderr_lines().size();
    const double cpu_before = cpu_seconds(server.pid());
    const auto start = Clock::now();
    while (Clock::now() - start < kWindow) {
      const std::string got = round_trip(early[static_cast<std::size_t>(w.requests % kEarlyClients)]);
      EXPECT_EQ(got, kResponse) << "request " << w.requests << " " << what;
      if (got != kResponse) break;
      ++w.requests;
      pump(late, server, kPaceMs);  // also the pace of the requests
    }
    w.cpu = cpu_seconds(server.pid()) - cpu_before;
    w.wall = std::chrono::duration<double>(Clock::now() - start).count();
    w.lines = server.stderr_lines().size() - lines_before;
    std::printf("%s: %d requests answered, server CPU %.3f s over %.2f s, %zu log lines\n", what,
                w.requests, w.cpu, w.wall, w.lines);
    return w;
  };
  // What the load itself costs this server on this machine now (sanitizers and a busy machine
  // make it dearer), for the comparison at the limit.
  const Window below = paced_window("below the limit");

  // More connections than fds: the server accepts what it can, then accept4 says EMFILE.
  for (int i = 0; i < kLateClients; ++i) {
    late.push_back(connect_late(port));
    ASSERT_EQ(late.back().error, 0)
        << "late client " << i << ": " << std::strerror(late.back().error);
  }
  auto hit_limit = [&] {
    for (const std::string& l : server.stderr_lines()) {
      if (l.find(std::strerror(EMFILE)) != std::string::npos) return true;
    }
    return false;
  };
  for (const auto end = Clock::now() + kDeadline; !hit_limit() && ms_left(end) > 0;) {
    pump(late, server, kPaceMs);
  }
  ASSERT_TRUE(hit_limit()) << "no EMFILE line on stderr:\n" << joined(server.stderr_lines());
  EXPECT_EQ(open_fds(server.pid()), static_cast<int>(kFdLimit));

  // At the limit: the early clients keep asking, the server keeps pausing its accepts. A loop
  // that retried accept4 at once would burn a core; pausing costs next to nothing beside the
  // same load below the limit. The bound scales with that load's own cost, so a slow or busy
  // machine cannot fail it, while a spin (most of a core) still does.
  const Window at = paced_window("at the limit");
  EXPECT_LT(at.cpu, 2 * below.cpu * at.wall / below.wall + 0.05 * at.wall)
      << "server CPU " << at.cpu << " s over " << at.wall << " s at the limit, against "
      << below.cpu << " s over " << below.wall << " s for the same load below it";
  EXPECT_LE(static_cast<double>(at.lines), at.wall + 1) << "stderr lines in " << at.wall
                                                        << " s:\n"
                                                        << joined(server.stderr_lines());
  EXPECT_EQ(open_fds(server.pid()), static_cast<int>(kFdLimit));
  // The late connections it did accept were answered long ago; the others still wait.
  const int answered_at_limit = count_answered(late);
  ASSERT_LT(answered_at_limit + kLeaving, kLateClients);

  for (int i = 0; i < kLeaving; ++i) close(early[static_cast<std::size_t>(i)]);
  early.erase(early.begin(), early.begin() + kLeaving);
  // Each freed fd takes one connection from the backlog.
  const auto end = Clock::now() + kDeadline;
  while (count_answered(late) < answered_at_limit + kLeaving && ms_left(end) > 0) {
    pump(late, server, kPaceMs);
  }
  EXPECT_EQ(count_answered(late), answered_at_limit + kLeaving);
  for (std::size_t i = 0; i < late.size(); ++i) {
    EXPECT_EQ(late[i].error, 0) << "late client " << i << ": " << std::strerror(late[i].error);
  }
  for (std::size_t i = 0; i < early.size(); ++i) {
    EXPECT_EQ(round_trip(early[i]), kResponse) << "early client " << i + kLeaving << " after";
  }

  const int status = server.stop();
  EXPECT_TRUE(exited_with(status, 0)) << describe(status);
  for (const int fd : early) close(fd);
  for (const LateClient& c : late) close(c.fd);
}

INSTANTIATE_TEST_SUITE_P(Modes, EmfileTest,
                         ::testing::Values(std::vector<std::string>{"--threads", "1"},
                                           std::vector<std::string>{"--threads", "2"},
                                           std::vector<std::string>{"--threads", "2",
                                                                    "--accept-mode", "reuseport"}),
                         [](const auto& info) { return std::string(kModeNames[info.index]); });

}  // namespace
