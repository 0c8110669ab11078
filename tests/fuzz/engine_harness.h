// File: tests/fuzz/engine_harness.h
// What the engine fuzz targets share: the reactor they drive on the fuzzing thread (so every
// sock_ call they make runs inline, as on an owner thread), with a record of on_close per fd,
// and the bytes and files they write.
// Threads: the fuzzing thread only. Errors: a failed call aborts (FUZZ_CHECK).
#ifndef TESTS_FUZZ_ENGINE_HARNESS_H_
#define TESTS_FUZZ_ENGINE_HARNESS_H_

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/libreact.h"
#include "engine/libsock.h"

namespace engine_harness {

// One reactor for the whole run (made on first use, never stopped: each input opens and closes
// its own fds on it).
class Harness {
 public:
  static Harness& get();
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  Reactor* reactor() { return &reactor_; }
  // The reactor's on_data (none by default: the targets' peers are plain sockets).
  void set_on_data(void (*on_data)(struct Reactor*, int)) { reactor_.on_data = on_data; }

  // Starts recording fd's on_close calls (forgetting those of earlier fds of that number).
  void watch(int fd);
  // on_close calls for fd since watch(fd), and the reason of the last one.
  int closes(int fd) const;
  enum SockCloseReason reason(int fd) const;

  // Runs n loop iterations that do not wait.
  void turns(int n);
  // Runs iterations (waiting up to 1 ms each) until done() holds; aborts with `what` if it
  // does not within a deadline far beyond what any input needs.
  void drive_until(const std::function<bool()>& done, const char* what);

  // The reactor's counters (sock_stats).
  struct SockStats stats();
  // Aborts unless the reactor holds no connection, no queued byte and no packet out of its
  // pool, and no packet is out of the pool of threads without a reactor.
  void check_nothing_left();

 private:
  Harness();
  static void on_close(struct Reactor*, int fd);

  struct Reactor reactor_ = {};
  std::vector<int> closes_;  // by fd
  std::vector<enum SockCloseReason> reasons_;
};

// The longest write source() gives: a 16-bit length or more than a packet.
inline constexpr std::size_t kLongestWrite = 65536;
static_assert(kLongestWrite >= BUFFER_PACKET_SIZE);

// The bytes of write number `write`, n <= kLongestWrite of them: slices of one pattern at
// offsets that differ from write to write, so that a byte out of place shows. They live as
// long as the process.
std::string_view source(std::size_t n, unsigned write);

// Files for .file writes and file packets (sizes 0, 1, 4095, a packet, 70000 and 200000
// bytes), made once, with their contents.
struct Files {
  std::vector<std::string> paths;
  std::vector<std::string> contents;
};
const Files& files();

}  // namespace engine_harness

#endif  // TESTS_FUZZ_ENGINE_HARNESS_H_
