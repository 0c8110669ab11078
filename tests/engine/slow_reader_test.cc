// The idle timeout against a reader that keeps reading a large response (engine/reactor.cc,
// peer_took_data): the engine sees no write progress while megabytes drain from the kernel's
// send buffer into such a reader (the kernel reports room only once half of it is free), so
// before, the timeout cut it; the kernel, though, sees the reader's window open and data go
// out. A reader that stops, and one that never reads, are still closed one timeout after their
// last progress.
//
// On the real clock (the kernel's view is in real milliseconds): the reactor runs on the test
// thread, which also reads, at a pace far below the loop's. The clients' receive buffers are
// small, as a slow reader's are on a real network: on loopback a receiver frees memory, and
// so opens its window, a whole 64 KiB packet at a time, and a default 128 KiB buffer shows a
// slow reader's progress only once per 128 KiB read.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "tests/testing/reactor_fixture.h"
#include "tests/testing/run_until.h"

namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;
using testing_support::run_until;

// Long enough that a loaded machine (or TSan) pausing the test thread between two reads does
// not look like a reader that stopped.
constexpr milliseconds kTimeout{600};
// Far more than the kernel buffers on both ends hold (a few MB each on loopback), so that the
// engine's queue still holds most of it when the test ends.
constexpr long kResponseBytes = 256L * 1024 * 1024;
constexpr int kClientBuffer = 16 * 1024;

class SlowReaderTest : public testing_support::ServerFixture {
 protected:
  void SetUp() override {
    ServerFixture::SetUp();
    ReactorLimits limits{};
    limits.idle_timeout_ms = static_cast<unsigned>(kTimeout.count());
    ASSERT_EQ(reactor_set_limits(&r_, &limits), 0);
  }

  void TearDown() override {
    for (const int fd : clients_) close(fd);
    ServerFixture::TearDown();
  }

  // A client with a small receive buffer and its server side, which is sent kResponseBytes
  // (a sparse file: no memory, no disk). Returns the client.
  int connect_and_download(int* server) {
    const int client = connect_and_accept(server, kClientBuffer);
    clients_.push_back(client);
    FILE* file = std::tmpfile();
    EXPECT_NE(file, nullptr);
    EXPECT_EQ(ftruncate(fileno(file), kResponseBytes), 0);
    EXPECT_EQ(sock_write2(.fd = *server, .buffer = file, .length = kResponseBytes, .file = 1), 0);
    return client;
  }

  bool closed(int server) const {
    for (const int fd : closed_) {
      if (fd == server) return true;
    }
    return false;
  }

  // Runs the reactor for `duration`, the client reading up to `chunk` bytes every `pace`.
  // Returns the bytes read.
  std::size_t read_paced(int client, std::size_t chunk, milliseconds pace, milliseconds duration) {
    std::string buf(chunk, '\0');
    std::size_t got = 0;
    const auto end = steady_clock::now() + duration;
    auto next_read = steady_clock::now() + pace;
    run_until(
        &r_,
        [&] {
          if (steady_clock::now() >= next_read) {
            const ssize_t n = recv(client, buf.data(), chunk, MSG_DONTWAIT);
            if (n > 0) got += static_cast<std::size_t>(n);
            next_read += pace;
          }
          return steady_clock::now() >= end;
        },
        duration + std::chrono::seconds(1));
    return got;
  }

  std::vector<int> clients_;
};

TEST_F(SlowReaderTest, ReaderThatKeepsReadingOutlastsTheIdleTimeoutAndOneThatStopsDoesNot) {
  int reading = -1, never = -1;
  const int reader = connect_and_download(&reading);
  connect_and_download(&never);  // its client reads nothing
  ASSERT_GE(reading, 0);
  ASSERT_GE(never, 0);
  // 8 KB every 50 ms (160 KB/s) for four timeouts: far less than half of the kernel's send
  // buffer (megabytes on loopback), so the engine never gets to write more in that time.
  const std::size_t got = read_paced(reader, 8192, milliseconds(50), 4 * kTimeout);
  EXPECT_FALSE(closed(reading)) << "cut off after reading " << got << " bytes";
  EXPECT_GT(sock_pending(reading), 0) << "the engine's queue held the response throughout";
  EXPECT_TRUE(closed(never)) << "a reader that never read outlasted the timeout";
  // Stopped: closed one timeout after its last read.
  EXPECT_TRUE(run_until(&r_, [&] { return closed(reading); }));
}

}  // namespace
