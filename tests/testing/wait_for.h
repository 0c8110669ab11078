// File: tests/testing/wait_for.h
// Waits for other threads (shards, servers) to make a condition true: polls it, yielding the
// CPU between polls, until it holds or a deadline passes. Tests never sleep for a fixed time.
#ifndef TESTS_TESTING_WAIT_FOR_H_
#define TESTS_TESTING_WAIT_FOR_H_

#include <chrono>
#include <thread>

namespace testing_support {

// Generous: the work waited for takes milliseconds to seconds, but sanitizer builds on a busy
// 2-core machine are slow, and the deadline only has to tell a hang from progress.
inline constexpr std::chrono::seconds kWaitDeadline{90};

// Polls cond() (which may also pump test clients) until it returns true (then true) or
// `deadline` has passed (then false).
template <typename Cond>
bool wait_for(Cond&& cond, std::chrono::milliseconds deadline = kWaitDeadline) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::yield();
  }
  return true;
}

}  // namespace testing_support

#endif  // TESTS_TESTING_WAIT_FOR_H_
