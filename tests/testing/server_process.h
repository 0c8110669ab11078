// A server binary run as a child process for tests, with its stdout read through a pipe and
// every wait on it bounded by a deadline, plus plain loopback clients to talk to it.
#ifndef TESTS_TESTING_SERVER_PROCESS_H_
#define TESTS_TESTING_SERVER_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace testing_support {

// Milliseconds from now until `end` as a poll() timeout; 0 once it has passed.
int ms_left(std::chrono::steady_clock::time_point end);

// The child's stderr goes to the test log, or with its stdout into the pipe (to check a
// message). Its stdout reaches EOF only when it exits (the child holds the only write end),
// which is how exits are seen without blocking in waitpid.
class ServerProcess {
 public:
  // args[0] is the binary's path (a runfiles path is relative to the test's working
  // directory). `deadline` bounds each of first_line(), wait_exit() and stop().
  // stderr_too: the child's stderr joins its stdout in the pipe.
  ServerProcess(const std::vector<std::string>& args, std::chrono::milliseconds deadline,
                bool stderr_too = false);
  ~ServerProcess();  // SIGKILLs a child still running
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  bool started() const { return pid_ > 0 && out_ >= 0; }

  // The first line printed (without its '\n'), or what came before EOF or the deadline.
  std::string first_line();

  // Waits for the exit and returns the wait status, or -1 past the deadline. `output`, if
  // given, receives what the child printed meanwhile (after first_line(), if called).
  int wait_exit(std::string* output = nullptr);

  // SIGTERM, then wait_exit().
  int stop();

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::chrono::milliseconds deadline_;
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

}  // namespace testing_support

#endif  // TESTS_TESTING_SERVER_PROCESS_H_
