#include "tests/testing/checked_stream.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace testing_support {

void CheckedStream::pump(int fd, std::size_t max) {
  static char buf[256 * 1024];
  while (max > 0 && !closed) {
    const ssize_t n = recv(fd, buf, std::min(max, sizeof buf), MSG_DONTWAIT);
    if (n > 0) {
      const auto len = static_cast<std::size_t>(n);
      if (first_mismatch == kNoMismatch) {
        const std::size_t bad = verify(buf, len, got);
        if (bad < len) first_mismatch = got + bad;
      }
      got += len;
      max -= len;
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      closed = true;
    } else if (errno == EAGAIN) {
      return;
    }
  }
}

CheckedStream expect_bytes(std::string_view expected) {
  auto verify = [expected](const char* data, std::size_t n, uint64_t at) -> std::size_t {
    const std::size_t comparable =
        at < expected.size() ? std::min<uint64_t>(n, expected.size() - at) : 0;
    // memcmp first: the 100 MB streams would crawl through a byte loop under ASan.
    if (comparable == n && std::memcmp(data, expected.data() + at, n) == 0) return n;
    std::size_t i = 0;
    while (i < comparable && data[i] == expected[at + i]) ++i;
    return i;
  };
  return CheckedStream{verify, expected.size()};
}

}  // namespace testing_support
