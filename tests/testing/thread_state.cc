#include "tests/testing/thread_state.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>
#include <string>

namespace testing_support {

pid_t current_tid() { return static_cast<pid_t>(syscall(SYS_gettid)); }

bool sleeps_in(pid_t tid, std::initializer_list<long> numbers) {
  const std::string dir = "/proc/self/task/" + std::to_string(tid);
  std::ifstream stat(dir + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  // The state follows the command name, which is in parentheses and may contain anything.
  const std::size_t paren = line.rfind(')');
  if (paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] != 'S') {
    return false;
  }
  std::ifstream syscall_file(dir + "/syscall");
  long nr = -1;
  if (!(syscall_file >> nr)) return true;
  for (const long n : numbers) {
    if (nr == n) return true;
  }
  return false;
}

}  // namespace testing_support
