// File: tests/testing/read_watchdog.h
// Guards a test's socket reads that must never block: if the guard is still armed at its
// deadline, a second thread shuts down the sending side of the peer of the socket read, so
// that a read blocked in the kernel (and every later one) returns at EOF, which the test sees
// as a wrong result: it fails instead of hanging until Bazel's timeout.
// Threads: made and destroyed on the test thread; its own thread only shuts the peer down.
#ifndef TESTS_TESTING_READ_WATCHDOG_H_
#define TESTS_TESTING_READ_WATCHDOG_H_

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace testing_support {

class ReadWatchdog {
 public:
  // peer_fd: the other end of the guarded socket; it must stay open while the guard lives.
  // The deadline only has to tell a blocked read from a slow sanitizer build.
  explicit ReadWatchdog(int peer_fd, std::chrono::milliseconds deadline = std::chrono::seconds(10))
      : thread_([this, peer_fd, deadline] {
          std::unique_lock<std::mutex> lock(mutex_);
          if (done_changed_.wait_for(lock, deadline, [this] { return done_; })) return;
          fired_ = true;
          shutdown(peer_fd, SHUT_WR);
        }) {}

  // Disarms the guard and waits for its thread.
  ~ReadWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    done_changed_.notify_one();
    thread_.join();
  }

  ReadWatchdog(const ReadWatchdog&) = delete;
  ReadWatchdog& operator=(const ReadWatchdog&) = delete;

  // Whether the deadline passed with the guard armed (a read blocked, or the test was too slow).
  bool fired() const { return fired_; }

 private:
  std::mutex mutex_;
  std::condition_variable done_changed_;
  bool done_ = false;
  std::atomic<bool> fired_{false};
  std::thread thread_;  // last: it starts once the members it uses exist
};

}  // namespace testing_support

#endif  // TESTS_TESTING_READ_WATCHDOG_H_
