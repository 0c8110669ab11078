// engine/histogram.h: the log-linear bucket math the profiler's histograms (and their
// Prometheus `le` bounds) rest on.
#include "engine/histogram.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace {

using engine::log_linear_bound;
using engine::log_linear_buckets;
using engine::log_linear_index;

TEST(HistogramTest, BoundsArePowersOfTwoAndTheirMidpoints) {
  const uint64_t expected[] = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64};
  for (std::size_t i = 0; i < std::size(expected); ++i) EXPECT_EQ(log_linear_bound(i), expected[i]) << i;
  for (std::size_t i = 1; i < log_linear_buckets(62); ++i) {
    EXPECT_LT(log_linear_bound(i - 1), log_linear_bound(i)) << i;
  }
  EXPECT_EQ(log_linear_bound(log_linear_buckets(62) - 1), uint64_t{1} << 62);
}

// Every value lands in the first bucket whose upper bound holds it (Prometheus' `le` rule):
// exhaustively up to 2^16, then around every bound up to 2^62.
TEST(HistogramTest, EveryValueLandsInTheFirstBucketThatHoldsIt) {
  auto check = [](uint64_t v) {
    const std::size_t i = log_linear_index(v);
    ASSERT_LE(v, log_linear_bound(i)) << v;
    if (i > 0) {
      ASSERT_GT(v, log_linear_bound(i - 1)) << v;
    }
  };
  for (uint64_t v = 0; v <= (1u << 16); ++v) check(v);
  for (std::size_t i = 0; i < log_linear_buckets(62); ++i) {
    const uint64_t b = log_linear_bound(i);
    check(b - 1);
    check(b);
    check(b + 1);
  }
}

// No bucket is wider than a third of its upper bound (above the exact buckets 1 to 4).
TEST(HistogramTest, RelativeWidthIsBounded) {
  for (std::size_t i = 4; i < log_linear_buckets(62); ++i) {
    const uint64_t width = log_linear_bound(i) - log_linear_bound(i - 1);
    EXPECT_LE(3 * width, log_linear_bound(i)) << i;
  }
}

TEST(HistogramTest, CountsSumAndOverflow) {
  engine::LogLinearHistogram<10> h;  // bounds up to 1024
  h.observe(0);
  h.observe(1);
  h.observe(5);
  h.observe(1024);
  h.observe(1025);
  h.observe(UINT64_MAX / 2);
  EXPECT_EQ(h.count(0), 2u);
  EXPECT_EQ(h.count(log_linear_index(5)), 1u);
  EXPECT_EQ(h.count(decltype(h)::kBuckets - 1), 1u);  // 1024, the last bound, is inside
  EXPECT_EQ(h.count(decltype(h)::kBuckets), 2u);      // above it: the +Inf bucket
  EXPECT_EQ(h.sum(), 0u + 1 + 5 + 1024 + 1025 + UINT64_MAX / 2);
  uint64_t total = 0;
  for (std::size_t i = 0; i <= decltype(h)::kBuckets; ++i) total += h.count(i);
  EXPECT_EQ(total, 6u);
}

}  // namespace
