// File: tests/testing/checked_stream.h
// A plain client's view of a long stream, checked as it arrives and never kept, so that
// gigabytes can pass through a test.
#ifndef TESTS_TESTING_CHECKED_STREAM_H_
#define TESTS_TESTING_CHECKED_STREAM_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string_view>

namespace testing_support {

inline constexpr uint64_t kNoMismatch = UINT64_MAX;

struct CheckedStream {
  // Checks n bytes that arrived at stream offset `at`: the index of the first wrong byte, or n.
  std::function<std::size_t(const char* data, std::size_t n, uint64_t at)> verify;
  uint64_t size = 0;  // length of the expected stream
  uint64_t got = 0;
  uint64_t first_mismatch = kNoMismatch;
  bool closed = false;  // EOF or an error (reset) was seen

  // Reads what is available without blocking, at most `max` bytes in this call.
  void pump(int fd, std::size_t max = SIZE_MAX);
  bool complete() const { return got >= size; }
  bool intact() const { return got == size && first_mismatch == kNoMismatch; }
};

// Checks against a stream held in memory, which must outlive the CheckedStream; bytes past its
// end are wrong.
CheckedStream expect_bytes(std::string_view expected);

}  // namespace testing_support

#endif  // TESTS_TESTING_CHECKED_STREAM_H_
