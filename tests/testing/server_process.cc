#include "tests/testing/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <sstream>

namespace testing_support {

using Clock = std::chrono::steady_clock;

int ms_left(Clock::time_point end) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
  return ms.count() > 0 ? static_cast<int>(ms.count()) : 0;
}

namespace {

// Runs in the forked child, so async-signal-safe calls only (no allocation, no locks): the
// parent built argv. The exec-error pipe stays open across the close below and is closed by
// exec itself (O_CLOEXEC); a failed exec reports its errno through it.
[[noreturn]] void exec_child(char* const* argv, int in, int out, int err, int exec_error,
                             rlim_t fd_limit) {
  if ((in >= 0 && dup2(in, STDIN_FILENO) < 0) || dup2(out, STDOUT_FILENO) < 0 ||
      dup2(err, STDERR_FILENO) < 0) {
    _exit(126);
  }
  if (exec_error > 3) close_range(3, static_cast<unsigned>(exec_error) - 1, 0);
  close_range(static_cast<unsigned>(exec_error) + 1, ~0u, 0);
  struct sigaction dfl = {};
  dfl.sa_handler = SIG_DFL;
  for (const int sig : {SIGINT, SIGTERM, SIGPIPE}) sigaction(sig, &dfl, nullptr);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  const rlimit limit = {fd_limit, fd_limit};
  if (fd_limit && setrlimit(RLIMIT_NOFILE, &limit) < 0) _exit(126);
  execv(argv[0], argv);
  const int e = errno;
  [[maybe_unused]] const ssize_t w = write(exec_error, &e, sizeof e);
  _exit(127);
}

}  // namespace

ServerProcess::ServerProcess(const std::vector<std::string>& args,
                             std::chrono::milliseconds deadline, bool stderr_too)
    : ServerProcess(args, deadline,
                    ChildOptions{stderr_too ? ChildStderr::kWithStdout : ChildStderr::kLog}) {}

ServerProcess::ServerProcess(const std::vector<std::string>& args,
                             std::chrono::milliseconds deadline, const ChildOptions& options)
    : deadline_(deadline) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int out[2] = {-1, -1}, err[2] = {-1, -1}, exec_error[2] = {-1, -1};
  const bool own_err = options.stderr_to == ChildStderr::kOwnPipe;
  const int in =
      options.stdin_path.empty() ? -1 : open(options.stdin_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (args.empty() || (!options.stdin_path.empty() && in < 0) || pipe2(out, O_CLOEXEC) < 0 ||
      (own_err && pipe2(err, O_CLOEXEC) < 0) || pipe2(exec_error, O_CLOEXEC) < 0) {
    spawn_error_ = args.empty() ? EINVAL : errno;
  } else {
    const int child_err = own_err                                           ? err[1]
                          : options.stderr_to == ChildStderr::kWithStdout ? out[1]
                                                                          : STDERR_FILENO;
    pid_ = fork();
    if (pid_ == 0) {
      exec_child(argv.data(), in, out[1], child_err, exec_error[1], options.fd_limit);
    }
    if (pid_ < 0) spawn_error_ = errno;
  }
  // Without these write ends (and the stdin file) in this process, EOF comes once the child is
  // gone.
  for (const int fd : {in, out[1], err[1], exec_error[1]}) {
    if (fd >= 0) close(fd);
  }
  out_ = out[0];
  err_ = err[0];
  if (err_ >= 0) fcntl(err_, F_SETFL, O_NONBLOCK);
  if (pid_ > 0) {
    // EOF: the exec succeeded (it closed the pipe); an errno: it failed, and the child is gone.
    int e = 0;
    ssize_t n;
    while ((n = read(exec_error[0], &e, sizeof e)) < 0 && errno == EINTR) {}
    if (n > 0) {
      spawn_error_ = e;
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  if (exec_error[0] >= 0) close(exec_error[0]);
}

ServerProcess::~ServerProcess() {
  if (signal(SIGKILL)) waitpid(pid_, nullptr, 0);
  if (out_ >= 0) close(out_);
  if (err_ >= 0) close(err_);
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
  if (pid_ <= 0) return -1;
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
  if (waitpid(pid_, &status, 0) != pid_) status = -1;
  pid_ = -1;
  return status;
}

bool ServerProcess::running() const {
  pollfd p = {out_, 0, 0};  // POLLHUP is reported whatever events asks for
  return pid_ > 0 && out_ >= 0 && poll(&p, 1, 0) == 0;
}

bool ServerProcess::signal(int sig) { return pid_ > 0 && kill(pid_, sig) == 0; }

int ServerProcess::stop() { return signal(SIGTERM) ? wait_exit() : -1; }

const std::vector<std::string>& ServerProcess::stderr_lines() {
  char buf[4096];
  ssize_t n;
  while (err_ >= 0 && (n = read(err_, buf, sizeof buf)) > 0) {
    err_partial_.append(buf, static_cast<std::size_t>(n));
  }
  for (std::size_t nl; (nl = err_partial_.find('\n')) != std::string::npos;) {
    err_lines_.push_back(err_partial_.substr(0, nl));
    err_partial_.erase(0, nl + 1);
  }
  return err_lines_;
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

double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Fields 14 and 15, counted after the ")" that ends the command name.
  std::istringstream fields(stat.substr(stat.rfind(')') + 2));
  std::string field;
  unsigned long long ticks = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i >= 14) ticks += std::stoull(field);
  }
  return static_cast<double>(ticks) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

}  // namespace testing_support
