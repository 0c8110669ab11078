// A server binary run as a child process for tests, with its stdout read through a pipe and
// every wait on it bounded by a deadline, plus plain loopback clients to talk to it.
//
// Signals and waits reach the child only: every kill() and waitpid() here names the pid this
// object spawned and has not reaped yet. A helper whose spawn failed, or whose child already
// exited, signals nothing (kill(-1, ...) would reach every process the user may signal).
#ifndef TESTS_TESTING_SERVER_PROCESS_H_
#define TESTS_TESTING_SERVER_PROCESS_H_

#include <sys/resource.h>
#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace testing_support {

// Milliseconds from now until `end` as a poll() timeout; 0 once it has passed.
int ms_left(std::chrono::steady_clock::time_point end);

// Where the child's stderr goes.
enum class ChildStderr {
  kLog,         // the test's own stderr (the test log)
  kWithStdout,  // into the stdout pipe, to check a message with first_line()/wait_exit()
  kOwnPipe,     // a pipe of its own, read without blocking by stderr_lines()
};

struct ChildOptions {
  ChildStderr stderr_to = ChildStderr::kLog;
  // RLIMIT_NOFILE for the child, soft and hard (so it cannot raise it); 0 keeps the test's.
  rlim_t fd_limit = 0;
  // A file the child reads as its stdin (a client's input); empty: the test's own stdin. One
  // that cannot be opened fails the spawn (spawn_error()).
  std::string stdin_path{};
};

// The child starts with exactly fds 0, 1 and 2, SIGINT, SIGTERM and SIGPIPE at their default
// actions and no signal blocked, whatever the test runner left open, ignored or blocked. Its
// stdout reaches EOF only when it exits (the child holds the only write end), which is how
// exits are seen without blocking in waitpid.
class ServerProcess {
 public:
  // args[0] is the binary's path (a runfiles path is relative to the test's working
  // directory). `deadline` bounds each of first_line(), wait_exit() and stop().
  ServerProcess(const std::vector<std::string>& args, std::chrono::milliseconds deadline,
                const ChildOptions& options);
  // stderr_too: the child's stderr joins its stdout in the pipe.
  ServerProcess(const std::vector<std::string>& args, std::chrono::milliseconds deadline,
                bool stderr_too = false);
  ~ServerProcess();  // SIGKILLs a child still running, and reaps it
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // True once the binary is running (its exec succeeded); false if the spawn failed, with
  // spawn_error() saying why.
  bool started() const { return pid_ > 0 && out_ >= 0; }
  int spawn_error() const { return spawn_error_; }
  // The child's pid while it runs, else -1.
  pid_t pid() const { return pid_; }
  // False once the child has exited (its stdout pipe hung up), without waiting and without
  // reaping it: wait_exit() still says how it ended. For polling a child that should not exit.
  bool running() const;

  // The first line printed (without its '\n'), or what came before EOF or the deadline.
  std::string first_line();

  // Waits for the exit and returns the wait status, or -1 past the deadline or when there is
  // no child. `output`, if given, receives what the child printed meanwhile (after
  // first_line(), if called).
  int wait_exit(std::string* output = nullptr);

  // Sends `sig` to the child. False, sending nothing, when there is no child to signal.
  bool signal(int sig);

  // SIGTERM, then wait_exit(); -1 at once when there is no child.
  int stop();

  // With ChildStderr::kOwnPipe: the complete lines the child wrote to stderr so far (reads
  // what is there without blocking), and the pipe's fd (to poll on).
  const std::vector<std::string>& stderr_lines();
  int stderr_fd() const { return err_; }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  int err_ = -1;
  int spawn_error_ = 0;
  std::chrono::milliseconds deadline_;
  std::string err_partial_;
  std::vector<std::string> err_lines_;
};

// True if `status` (from wait_exit() or stop()) is a normal exit with `code`.
bool exited_with(int status, int code);

// A wait status in words, for failure messages.
std::string describe(int status);

// A blocking TCP client connected to 127.0.0.1:port, or -1 if the connect fails.
int connect_loopback(int port);

// connect_loopback() with TCP_NODELAY, and reads and writes that give up after 10 s instead of
// hanging a test; -1 if the connect failed.
int connect_client(int port);
// Sends all of data; false if the connection failed first.
bool send_all(int fd, const std::string& data);
// Exactly `count` bytes, or fewer if the peer closed or went quiet for 10 s.
std::string recv_exact(int fd, std::size_t count);
// s, `times` times over.
std::string repeat(const std::string& s, int times);
// utime + stime of all the threads of process `pid`, in seconds (/proc/PID/stat).
double cpu_seconds(pid_t pid);

}  // namespace testing_support

#endif  // TESTS_TESTING_SERVER_PROCESS_H_
