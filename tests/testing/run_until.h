// File: tests/testing/run_until.h
// Drives a reactor until a condition holds, with a deadline: tests never sleep to wait.
#ifndef TESTS_TESTING_RUN_UNTIL_H_
#define TESTS_TESTING_RUN_UNTIL_H_

#include <chrono>

#include "engine/libreact.h"
#include "engine/reactor.h"

namespace testing_support {

// Runs one iteration at a time (each waiting at most 5 ms) until done() is true or the
// deadline passes. Returns done()'s last value. done() may also drive a test client.
template <typename Done>
bool run_until(struct Reactor* api, Done&& done,
               std::chrono::milliseconds deadline = std::chrono::seconds(20)) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  while (!done()) {
    if (std::chrono::steady_clock::now() > end) return false;
    engine::Reactor* r = engine::Reactor::of(api, true);
    if (r->run_once(5) < 0 && errno == 0) return done();  // the reactor stopped
  }
  return true;
}

}  // namespace testing_support

#endif  // TESTS_TESTING_RUN_UNTIL_H_
