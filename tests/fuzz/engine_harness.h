// File: tests/fuzz/engine_harness.h
// The reactor the engine fuzz targets drive on the fuzzing thread (so every sock_ call they
// make runs inline, as on an owner thread), with a record of on_close per fd.
// Threads: the fuzzing thread only. Errors: a failed call aborts (FUZZ_CHECK).
#ifndef TESTS_FUZZ_ENGINE_HARNESS_H_
#define TESTS_FUZZ_ENGINE_HARNESS_H_

#include <cstddef>
#include <functional>
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

  struct Reactor* reactor() { return &reactor_; }

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

}  // namespace engine_harness

#endif  // TESTS_FUZZ_ENGINE_HARNESS_H_
