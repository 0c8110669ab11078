// File: tests/testing/fake_clock.h
// A clock a test steps by hand, for one reactor's timeouts and stop deadline
// (engine::Reactor::set_clock): a timeout is then checked to the tick, and a loaded machine
// pausing the test thread cannot make a connection look idle.
// Threads: the reactor's owner thread (the test thread that drives it) only.
#ifndef TESTS_TESTING_FAKE_CLOCK_H_
#define TESTS_TESTING_FAKE_CLOCK_H_

#include <chrono>
#include <cstdint>

#include "engine/libreact.h"
#include "engine/reactor.h"

namespace testing_support {

class FakeClock {
 public:
  // Makes api's reactor (created if needed) read this clock from now on. Before any connection
  // is open on it; the clock must outlive the reactor's engine state.
  void install(struct Reactor* api) {
    engine::Reactor::of(api, true)->set_clock(&FakeClock::read, this);
  }
  int64_t now_ms() const { return now_ms_; }
  void advance(std::chrono::milliseconds d) { now_ms_ += d.count(); }

 private:
  static int64_t read(void* self) { return static_cast<FakeClock*>(self)->now_ms_; }
  // Far from 0, like a monotonic clock's value: nothing may depend on the origin.
  int64_t now_ms_ = 123'456'789;
};

}  // namespace testing_support

#endif  // TESTS_TESTING_FAKE_CLOCK_H_
