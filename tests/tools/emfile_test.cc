// tools/hello_server out of fds (issue 3: "EMFILE under prlimit --nofile=64"). The server runs
// with RLIMIT_NOFILE 64, soft and hard (so sock_max_capacity cannot raise it). 40 keep-alive
// clients work; then 200 more connect, more than it has fds for: those it cannot accept wait
// in the backlog, and accept4 fails with EMFILE. At the limit, while the first clients keep
// sending requests, the server must (a) answer every one of them, (b) use under 10% of one
// core (a pause, not a spin: a loop that retried accept4 at once would use a whole core),
// (c) log at most one line per second; and once 30 of the first clients leave, (d) exactly 30
// connections waiting in the backlog are accepted and answered.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "tests/testing/server_process.h"

namespace {

using Clock = std::chrono::steady_clock;
using testing_support::describe;
using testing_support::exited_with;
using testing_support::ms_left;

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

// The server as a child with a lowered fd limit and both its stdout and stderr read here
// (ServerProcess leaves stderr to the log and has no limits).
class LimitedServer {
 public:
  LimitedServer(const std::vector<std::string>& args, rlim_t nofile) {
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) < 0) return;
    if (pipe2(err, O_CLOEXEC) < 0) return;
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const rlimit limit = {nofile, nofile};
    pid_ = fork();
    if (pid_ == 0) {  // only async-signal-safe calls until exec
      if (dup2(out[1], STDOUT_FILENO) < 0 || dup2(err[1], STDERR_FILENO) < 0) _exit(126);
      // Start with exactly 0, 1 and 2, whatever the test runner left open without CLOEXEC.
      close_range(3, ~0u, 0);
      if (setrlimit(RLIMIT_NOFILE, &limit) < 0) _exit(126);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out[1]);  // else EOF would never come
    close(err[1]);
    out_ = out[0];
    err_ = err[0];
    fcntl(err_, F_SETFL, O_NONBLOCK);
  }
  ~LimitedServer() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) close(out_);
    if (err_ >= 0) close(err_);
  }
  LimitedServer(const LimitedServer&) = delete;
  LimitedServer& operator=(const LimitedServer&) = delete;

  bool started() const { return pid_ > 0 && out_ >= 0 && err_ >= 0; }
  int stderr_fd() const { return err_; }

  std::string first_line() {
    const auto end = Clock::now() + kDeadline;
    std::string line;
    char c;
    pollfd p = {out_, POLLIN, 0};
    while (poll(&p, 1, ms_left(end)) > 0 && read(out_, &c, 1) == 1 && c != '\n') line += c;
    return line;
  }

  // Reads what stderr has without blocking; returns the complete lines seen so far.
  const std::vector<std::string>& stderr_lines() {
    char buf[4096];
    ssize_t n;
    while ((n = read(err_, buf, sizeof buf)) > 0) partial_.append(buf, static_cast<size_t>(n));
    for (std::size_t nl; (nl = partial_.find('\n')) != std::string::npos;) {
      lines_.push_back(partial_.substr(0, nl));
      partial_.erase(0, nl + 1);
    }
    return lines_;
  }

  // utime + stime of all its threads, in seconds (/proc/PID/stat fields 14 and 15, counted
  // after the ")" that ends the command name).
  double cpu_seconds() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::istringstream fields(stat.substr(stat.rfind(')') + 2));
    std::string field;
    unsigned long long ticks = 0;
    for (int i = 3; i <= 15 && fields >> field; ++i) {
      if (i >= 14) ticks += std::stoull(field);
    }
    return static_cast<double>(ticks) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }

  int open_fds() const {
    int n = 0;
    for ([[maybe_unused]] const auto& e :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid_) + "/fd")) {
      ++n;
    }
    return n;
  }

  // SIGTERM, then the wait status once stdout reaches EOF (-1 past the deadline).
  int stop() {
    kill(pid_, SIGTERM);
    const auto end = Clock::now() + kDeadline;
    char buf[256];
    pollfd p = {out_, POLLIN, 0};
    for (;;) {
      if (poll(&p, 1, ms_left(end)) <= 0) return -1;
      if (read(out_, buf, sizeof buf) <= 0) break;
    }
    int status = -1;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  int err_ = -1;
  std::string partial_;
  std::vector<std::string> lines_;
};

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
void pump(std::vector<LateClient>& late, LimitedServer& server, int timeout_ms) {
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
  LimitedServer server(args, kFdLimit);
  ASSERT_TRUE(server.started());
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

  // More connections than fds: the server accepts what it can, then accept4 says EMFILE.
  std::vector<LateClient> late;
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
  EXPECT_EQ(server.open_fds(), static_cast<int>(kFdLimit));

  // At the limit: the early clients keep asking, the server keeps pausing its accepts.
  const std::size_t lines_before = server.stderr_lines().size();
  const double cpu_before = server.cpu_seconds();
  const auto start = Clock::now();
  int requests = 0;
  while (Clock::now() - start < kWindow) {
    ASSERT_EQ(round_trip(early[static_cast<std::size_t>(requests % kEarlyClients)]), kResponse)
        << "request " << requests << " at the limit";
    ++requests;
    pump(late, server, kPaceMs);  // also the pace of the requests
  }
  const double cpu = server.cpu_seconds() - cpu_before;
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  const std::size_t lines = server.stderr_lines().size() - lines_before;
  std::printf("at the limit: %d requests answered, server CPU %.2f s over %.2f s, %zu log lines\n",
              requests, cpu, wall, lines);
  EXPECT_LT(cpu, 0.10 * wall) << "server CPU " << cpu << " s over " << wall << " s at the limit";
  EXPECT_LE(static_cast<double>(lines), wall + 1) << "stderr lines in " << wall << " s:\n"
                                                  << joined(server.stderr_lines());
  EXPECT_EQ(server.open_fds(), static_cast<int>(kFdLimit));
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
