// File: tests/testing/reactor_stats.h
// A reactor's sock_stats() as a value, for tests that compare its counters before and after.
#ifndef TESTS_TESTING_REACTOR_STATS_H_
#define TESTS_TESTING_REACTOR_STATS_H_

#include <gtest/gtest.h>

#include "engine/libsock.h"

namespace testing_support {

// r's statistics, whole (size set to the struct's); a failed call is a test failure and
// leaves the fields 0.
inline SockStats stats_of(struct Reactor* r) {
  SockStats s{};
  s.size = sizeof s;
  EXPECT_EQ(sock_stats(r, &s), 0);
  return s;
}

}  // namespace testing_support

#endif  // TESTS_TESTING_REACTOR_STATS_H_
