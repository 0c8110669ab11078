#include "tests/testing/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>

extern char** environ;

namespace testing_support {

using Clock = std::chrono::steady_clock;

int ms_left(Clock::time_point end) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
  return ms.count() > 0 ? static_cast<int>(ms.count()) : 0;
}

ServerProcess::ServerProcess(const std::vector<std::string>& args,
                             std::chrono::milliseconds deadline, bool stderr_too)
    : deadline_(deadline) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) < 0) return;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  if (stderr_too) posix_spawn_file_actions_adddup2(&actions, out[1], STDERR_FILENO);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ) != 0) pid_ = -1;
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);  // else this process would hold a write end and EOF would never come
  out_ = out[0];
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_ >= 0) close(out_);
}

std::string ServerProcess::first_line() {
  const auto end = Clock::now() + deadline_;
  std::string line;
  char c;
  pollfd p = {out_, POLLIN, 0};
  while (poll(&p, 1, ms_left(end)) > 0 && read(out_, &c, 1) == 1 && c != '\n') line += c;
  return line;
}

int ServerProcess::wait_exit(std::string* output) {
  const auto end = Clock::now() + deadline_;
  char buf[256];
  pollfd p = {out_, POLLIN, 0};
  for (;;) {
    if (poll(&p, 1, ms_left(end)) <= 0) return -1;
    const ssize_t n = read(out_, buf, sizeof buf);
    if (n <= 0) break;
    if (output) output->append(buf, static_cast<std::size_t>(n));
  }
  int status = -1;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return status;
}

int ServerProcess::stop() {
  kill(pid_, SIGTERM);
  return wait_exit();
}

bool exited_with(int status, int code) {
  return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == code;
}

std::string describe(int status) {
  if (status == -1) return "still running at the deadline";
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "wait status " + std::to_string(status);
}

int connect_loopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

int connect_client(int port) {
  const int fd = connect_loopback(port);
  if (fd < 0) return -1;
  const timeval timeout = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool send_all(int fd, const std::string& data) {
  for (std::size_t off = 0; off < data.size();) {
    const ssize_t n = send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

std::string recv_exact(int fd, std::size_t count) {
  std::string got(count, '\0');
  std::size_t have = 0;
  while (have < count) {
    const ssize_t n = recv(fd, got.data() + have, count - have, 0);
    if (n <= 0) break;
    have += static_cast<std::size_t>(n);
  }
  got.resize(have);
  return got;
}

std::string repeat(const std::string& s, int times) {
  std::string out;
  for (int i = 0; i < times; ++i) out += s;
  return out;
}

}  // namespace testing_support
