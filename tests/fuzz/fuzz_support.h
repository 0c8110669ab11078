// File: tests/fuzz/fuzz_support.h
// What the libFuzzer targets of tests/fuzz share: a check that aborts with a message (libFuzzer
// then saves the input as a crash), the input read as a stream of small fields, the fd leak
// check, and scratch directories that are removed at exit.
// Threads: the fuzzing thread only (libFuzzer calls a target from one thread).
#ifndef TESTS_FUZZ_FUZZ_SUPPORT_H_
#define TESTS_FUZZ_FUZZ_SUPPORT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace fuzz_support {

// Prints "file:line: check failed: what (detail)" to stderr and aborts.
[[noreturn]] void fail(const char* file, int line, const char* what, const std::string& detail);

// The input, read front to back as bytes and little-endian 16-bit numbers; once it is used up
// every read returns 0, so any input is a valid one (a short input is a short run).
class Input {
 public:
  Input(const uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  bool empty() const { return at_ >= size_; }
  uint8_t byte() { return at_ < size_ ? data_[at_++] : 0; }
  uint16_t u16() {
    const uint16_t low = byte();
    return static_cast<uint16_t>(low | byte() << 8);
  }

 private:
  const uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
};

// The lowest fd number free now (what the next open() would get). An iteration that leaked an
// fd leaves it higher than before: each target compares it with the value at the iteration's
// start (not once for the run: libFuzzer itself may hold a file open between iterations).
int lowest_free_fd();

// A new directory under $TMPDIR (or /tmp), removed with everything in it when the process
// exits normally (a crash leaves it, with the input that made the crash).
std::string make_scratch_dir(std::string_view name);

// Writes `bytes` to the file `path` (created or truncated); aborts on error.
void write_file(const std::string& path, std::string_view bytes);

}  // namespace fuzz_support

// For a harness's own byte loops: not instrumented for coverage. Their comparisons say nothing
// about the code under test, and tracing each byte's costs most of a run's time.
#define FUZZ_NO_COVERAGE __attribute__((no_sanitize("coverage")))

// Aborts with `detail` (a std::string expression, evaluated only on failure) unless `cond`.
#define FUZZ_CHECK(cond, detail)                                            \
  do {                                                                      \
    if (!(cond)) ::fuzz_support::fail(__FILE__, __LINE__, #cond, (detail)); \
  } while (0)

#endif  // TESTS_FUZZ_FUZZ_SUPPORT_H_
