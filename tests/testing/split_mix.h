// File: tests/testing/split_mix.h
// A seeded pseudo-random sequence for tests that must replay exactly: splitmix64, whose output
// for a seed is the same on every platform and standard library (std:: distributions are not).
// Not thread-safe: one per thread or under a lock.
#ifndef TESTS_TESTING_SPLIT_MIX_H_
#define TESTS_TESTING_SPLIT_MIX_H_

#include <cstdint>

namespace testing_support {

struct SplitMix64 {
  uint64_t state = 0;

  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double unit() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  // In [0, n) for n > 0 (the modulo bias is irrelevant at test sizes).
  uint64_t below(uint64_t n) { return next() % n; }
  // True with chance 1/n.
  bool one_in(uint64_t n) { return below(n) == 0; }
};

}  // namespace testing_support

#endif  // TESTS_TESTING_SPLIT_MIX_H_
