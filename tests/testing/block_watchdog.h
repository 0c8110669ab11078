// File: tests/testing/block_watchdog.h
// Guards a test's socket calls that must never block. If the guard is still armed at its
// deadline, a second thread does what ends the blocked call, and the test sees a wrong result
// (and fired()): it fails instead of hanging until Bazel's timeout.
//   kEndPeerOutput  shuts down the sending side of the peer of a socket read from: a read
//                   blocked in the kernel (and every later one) returns at EOF.
//   kEndListener    shuts a listener down for reading: an accept blocked on it returns EINVAL.
//   kDrainPeer      reads the peer of a socket written to, until disarmed: a blocked write
//                   (send, sendfile) goes through.
// Threads: made and destroyed on the test thread; its own thread only touches `fd` as above.
#ifndef TESTS_TESTING_BLOCK_WATCHDOG_H_
#define TESTS_TESTING_BLOCK_WATCHDOG_H_

#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace testing_support {

class BlockWatchdog {
 public:
  enum class Unblock { kEndPeerOutput, kEndListener, kDrainPeer };

  // fd: as `how` says (see the top); it must stay open while the guard lives. The deadline
  // only has to tell a blocked call from a slow sanitizer build.
  BlockWatchdog(int fd, Unblock how, std::chrono::milliseconds deadline = std::chrono::seconds(10))
      : thread_([this, fd, how, deadline] {
          std::unique_lock<std::mutex> lock(mutex_);
          if (done_changed_.wait_for(lock, deadline, [this] { return done_; })) return;
          fired_ = true;
          switch (how) {
            case Unblock::kEndPeerOutput:
              shutdown(fd, SHUT_WR);
              return;
            case Unblock::kEndListener:
              shutdown(fd, SHUT_RD);
              return;
            case Unblock::kDrainPeer:
              break;
          }
          lock.unlock();
          char sink[65536];
          while (!done_flag_.load()) {
            pollfd p{fd, POLLIN, 0};
            if (poll(&p, 1, 10) <= 0) continue;
            const ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return;  // nothing more
          }
        }) {}

  // Disarms the guard and waits for its thread.
  ~BlockWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    done_flag_ = true;
    done_changed_.notify_one();
    thread_.join();
  }

  BlockWatchdog(const BlockWatchdog&) = delete;
  BlockWatchdog& operator=(const BlockWatchdog&) = delete;

  // Whether the deadline passed with the guard armed (a call blocked, or the test was too slow).
  bool fired() const { return fired_; }

 private:
  std::mutex mutex_;
  std::condition_variable done_changed_;
  bool done_ = false;
  std::atomic<bool> done_flag_{false};  // done_, for the draining loop, which holds no lock
  std::atomic<bool> fired_{false};
  std::thread thread_;  // last: it starts once the members it uses exist
};

}  // namespace testing_support

#endif  // TESTS_TESTING_BLOCK_WATCHDOG_H_
