// File writes (sock_write2 with .file: a FILE* streamed with sendfile, engine/write_queue.cc):
// large and exactly packet-aligned files, the FILE*'s offset and .length, who closes the
// FILE*, ordering with memory writes, errors while sending, a blocking socket and a file that
// shrinks.
//
// Each test runs a server on a struct Reactor driven in the test thread; the client is a plain
// loopback socket that the run_until() predicate drains, checking bytes as they arrive. Files
// live in TEST_TMPDIR and are unlinked as soon as they are open. SIGPIPE stays at its default
// action: sendfile has no MSG_NOSIGNAL, so a regression there kills the binary.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "tests/testing/block_watchdog.h"
#include "tests/testing/checked_stream.h"
#include "tests/testing/loopback.h"
#include "tests/testing/reactor_fixture.h"
#include "tests/testing/run_until.h"

namespace {

using testing_support::BlockWatchdog;
using testing_support::CheckedStream;
using testing_support::kNoMismatch;
using testing_support::pattern;
using testing_support::run_until;
using namespace std::chrono_literals;

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;

// A file of `size` bytes in TEST_TMPDIR, open for reading and writing and already unlinked.
// Writes `content` at offset 0 (a shorter content leaves the rest a hole of zeros).
FILE* make_file(std::string_view content, off_t size = -1) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string path = std::string(dir ? dir : "/tmp") + "/file_write_test.XXXXXX";
  const int fd = mkostemp(path.data(), O_CLOEXEC);
  if (fd < 0) return nullptr;
  unlink(path.c_str());
  if (size < 0) size = static_cast<off_t>(content.size());
  if (ftruncate(fd, size) < 0 ||
      pwrite(fd, content.data(), content.size(), 0) != static_cast<ssize_t>(content.size())) {
    close(fd);
    return nullptr;
  }
  return fdopen(fd, "r+");
}

// Open fds of this process (the directory stream's own fd is counted every time alike).
int open_fd_count() {
  DIR* d = opendir("/proc/self/fd");
  int n = 0;
  while (readdir(d)) ++n;
  closedir(d);
  return n;
}

// The large sparse files: zeros, with an 8-byte marker naming its index every 64 KiB, so a
// duplicated, skipped or reordered block shows at the client without keeping the stream.
constexpr std::size_t kMarkerEvery = 64 * kKiB;
constexpr std::size_t kMarkerBytes = 8;

uint64_t marker(uint64_t index) { return 0x4d41524b00000000ull | index; }  // "MARK" + index

FILE* make_marked_file(off_t size) {
  FILE* f = make_file("", size);
  if (!f) return nullptr;
  for (off_t at = 0; at + static_cast<off_t>(kMarkerBytes) <= size; at += kMarkerEvery) {
    const uint64_t m = marker(static_cast<uint64_t>(at) / kMarkerEvery);
    if (pwrite(fileno(f), &m, sizeof m, at) != sizeof m) {
      fclose(f);
      return nullptr;
    }
  }
  return f;
}

CheckedStream expect_marked(uint64_t size) {
  auto verify = [size](const char* data, std::size_t n, uint64_t at) -> std::size_t {
    static const char zeros[kMarkerEvery] = {};
    std::size_t i = 0;
    while (i < n) {
      const uint64_t pos = at + i;
      if (pos >= size) return i;
      const uint64_t in_block = pos % kMarkerEvery;
      if (in_block < kMarkerBytes) {
        const uint64_t m = marker(pos / kMarkerEvery);
        if (data[i] != reinterpret_cast<const char*>(&m)[in_block]) return i;
        ++i;
        continue;
      }
      const std::size_t run = std::min<uint64_t>(n - i, kMarkerEvery - in_block);
      if (std::memcmp(data + i, zeros, run) != 0) {
        while (data[i] == 0) ++i;
        return i;
      }
      i += run;
    }
    return n;
  };
  return CheckedStream{verify, size};
}

bool sigpipe_pending() {
  sigset_t pending;
  sigpending(&pending);
  return sigismember(&pending, SIGPIPE);
}

class FileWriteTest : public testing_support::OneClientFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(testing_support::assert_sigpipe_default());
    OneClientFixture::SetUp();
  }

  void TearDown() override {
    OneClientFixture::TearDown();
    // sendfile_nosignal may block SIGPIPE only for the duration of the call.
    sigset_t blocked;
    pthread_sigmask(SIG_BLOCK, nullptr, &blocked);
    EXPECT_FALSE(sigismember(&blocked, SIGPIPE));
    EXPECT_FALSE(sigpipe_pending());
  }

  // A transport layer that changes nothing: with layers the engine reads files in records
  // (pread) instead of using sendfile.
  void add_pass_through_layer() { ASSERT_EQ(sock_tlc_add(server_, &pass_through_), 0); }

  // Runs the reactor while the client reads (at most `per_call` bytes per iteration) until
  // the stream is complete, ends, or is found wrong.
  bool receive(CheckedStream& rx, uint64_t size, std::size_t per_call = SIZE_MAX,
               std::chrono::milliseconds deadline = 60s) {
    return run_until(
        &r_,
        [&] {
          rx.pump(client_, per_call);
          return rx.got >= size || rx.closed || rx.first_mismatch != kNoMismatch;
        },
        deadline);
  }

  // Lets the client read until `expected` arrived, and checks that it is exactly that.
  void expect_arrives(std::string_view expected) {
    CheckedStream rx = testing_support::expect_bytes(expected);
    ASSERT_TRUE(receive(rx, expected.size()));
    EXPECT_EQ(rx.got, expected.size());
    EXPECT_EQ(rx.first_mismatch, kNoMismatch) << "first wrong byte at " << rx.first_mismatch;
  }

  // A file of `content`, then a memory write: the client must get exactly both, and every
  // packet must be back in the pool.
  void expect_file_then_tail_arrive(const std::string& content) {
    const std::string tail = "after-the-file";
    ASSERT_EQ(sock_write2(.fd = server_, .buffer = make_file(content), .file = 1), 0);
    ASSERT_EQ(sock_write(server_, tail.data(), tail.size()), 0);
    const std::string expected = content + tail;
    ASSERT_NO_FATAL_FAILURE(expect_arrives(expected));
    EXPECT_EQ(pool_stats().outstanding, 0u);
  }

  sockTLC pass_through_ = {};
};

// --- 1, 2. Whole files ---------------------------------------------------------------------------

TEST_F(FileWriteTest, OneGigabyteFileArrivesCompleteAndInOrder) {
  constexpr uint64_t kSize = 1024 * kMiB;
  FILE* f = make_marked_file(kSize);
  ASSERT_NE(f, nullptr);
  connect_client();
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = f, .file = 1), 0);
  CheckedStream rx = expect_marked(kSize);
  ASSERT_TRUE(receive(rx, kSize, SIZE_MAX, 120s)) << "stalled after " << rx.got << " bytes";
  EXPECT_EQ(rx.got, kSize);
  EXPECT_EQ(rx.first_mismatch, kNoMismatch) << "first wrong byte at " << rx.first_mismatch;
  // Nothing more comes: the stream is exactly the file.
  sock_close(&r_, server_);
  ASSERT_TRUE(run_until(&r_, [&] {
    rx.pump(client_);
    return rx.closed;
  }));
  EXPECT_EQ(rx.got, kSize);
  EXPECT_EQ(server_closes_, 1);
}

// The seed freed the queue behind a file packet when the last read of a file whose size is a
// multiple of 16 KB returned 0 bytes.
TEST_F(FileWriteTest, FileOfExactMultipleOf16KBArrivesExactly) {
  const std::string content = pattern(64 * 16 * kKiB, 60);
  connect_client();
  expect_file_then_tail_arrive(content);
}

TEST_F(FileWriteTest, FileOfExactMultipleOf16KBArrivesExactlyThroughATransportLayer) {
  const std::string content = pattern(64 * 16 * kKiB, 61);
  connect_client();
  add_pass_through_layer();
  expect_file_then_tail_arrive(content);
}

// --- 3. Offset and length ------------------------------------------------------------------------

TEST_F(FileWriteTest, FileIsSentFromItsCurrentOffsetAndLengthLimitsIt) {
  const std::string content = pattern(100000, 62);
  connect_client();
  std::string expected;

  FILE* from_1000 = make_file(content);
  ASSERT_EQ(fseek(from_1000, 1000, SEEK_SET), 0);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = from_1000, .file = 1), 0);
  expected += content.substr(1000);

  FILE* limited = make_file(content);
  ASSERT_EQ(fseek(limited, 1000, SEEK_SET), 0);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = limited, .length = 5000, .file = 1), 0);
  expected += content.substr(1000, 5000);

  // stdio read ahead (the fd's offset is past 10), but the FILE*'s position is 10.
  FILE* after_fread = make_file(content);
  char first[10];
  ASSERT_EQ(fread(first, 1, sizeof first, after_fread), sizeof first);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = after_fread, .file = 1), 0);
  expected += content.substr(10);

  const std::string tail = "end";
  ASSERT_EQ(sock_write(server_, tail.data(), tail.size()), 0);
  expected += tail;
  expect_arrives(expected);
}

// A length is a promise (an HTTP server's Content-Length, from a stat made before the write):
// a file that holds fewer bytes must not end the stream short and let the next write go on as
// if they had all been sent. The connection fails after the bytes there are.
TEST_F(FileWriteTest, LengthPastTheFilesEndFailsTheConnectionAfterItsBytes) {
  const std::string content = pattern(100000, 63);
  connect_client();
  FILE* near_end = make_file(content);
  ASSERT_EQ(fseek(near_end, 99000, SEEK_SET), 0);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = near_end, .length = 10 * kMiB, .file = 1), 0);
  const std::string tail = "next response";
  ASSERT_EQ(sock_write(server_, tail.data(), tail.size()), 0);
  std::string got;
  ASSERT_TRUE(read_until_closed(client_, &got, content.size()));
  EXPECT_EQ(got, content.substr(99000));
  EXPECT_EQ(server_closes_, 1);
}

// --- 4. The FILE* is closed --------------------------------------------------------------------

TEST_F(FileWriteTest, FileIsClosedOnceSent) {
  connect_client();
  const int fds_before = open_fd_count();
  const std::string content = pattern(300 * kKiB, 63);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = make_file(content), .file = 1), 0);
  EXPECT_EQ(open_fd_count(), fds_before + 1);
  CheckedStream rx = testing_support::expect_bytes(content);
  ASSERT_TRUE(receive(rx, content.size()));
  EXPECT_EQ(rx.got, content.size());
  EXPECT_EQ(open_fd_count(), fds_before);

  // A file with nothing left to send is closed at once.
  FILE* at_end = make_file("abc");
  ASSERT_EQ(fseek(at_end, 0, SEEK_END), 0);
  EXPECT_EQ(sock_write2(.fd = server_, .buffer = at_end, .file = 1), 0);
  EXPECT_EQ(open_fd_count(), fds_before);
}

TEST_F(FileWriteTest, FileIsClosedWhenTheWriteFails) {
  connect_client();
  const int fds_before = open_fd_count();

  errno = 0;
  EXPECT_EQ(sock_write2(.fd = -1, .buffer = make_file("x"), .file = 1), -1);
  EXPECT_EQ(errno, EBADF);
  EXPECT_EQ(open_fd_count(), fds_before);

  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  errno = 0;
  EXPECT_EQ(sock_write2(.fd = pipe_fds[1], .buffer = make_file("x"), .file = 1), -1)
      << "an fd never opened with the sock_ API";
  EXPECT_EQ(errno, EBADF);

  // Not a regular file: refused, and closed.
  FILE* pipe_file = fdopen(pipe_fds[0], "r");
  ASSERT_NE(pipe_file, nullptr);
  errno = 0;
  EXPECT_EQ(sock_write2(.fd = server_, .buffer = pipe_file, .file = 1), -1);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(fcntl(pipe_fds[0], F_GETFD), -1) << "the pipe's FILE* was not closed";
  close(pipe_fds[1]);
  EXPECT_EQ(open_fd_count(), fds_before);

  errno = 0;
  EXPECT_EQ(sock_write2(.fd = server_, .buffer = nullptr, .file = 1), -1);
  EXPECT_EQ(errno, EINVAL);

  // The refused writes left the connection usable.
  ASSERT_EQ(sock_write(server_, "still-open", 10), 0);
  ASSERT_NO_FATAL_FAILURE(expect_arrives("still-open"));

  // A closing connection takes no more writes.
  sock_close(&r_, server_);
  errno = 0;
  EXPECT_EQ(sock_write2(.fd = server_, .buffer = make_file("x"), .file = 1), -1);
  EXPECT_EQ(errno, EPIPE);
  EXPECT_EQ(open_fd_count(), fds_before);
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ == 1; }));
  EXPECT_EQ(open_fd_count(), fds_before - 1) << "the server's socket is closed too";
}

// --- 5. Ordering with memory writes --------------------------------------------------------------

TEST_F(FileWriteTest, FileInterleavesWithMemoryWritesInOrder) {
  const std::string content = pattern(200 * kKiB + 123, 64);
  connect_client();
  ASSERT_EQ(sock_write(server_, "HEAD", 4), 0);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = make_file(content), .file = 1), 0);
  ASSERT_EQ(sock_write(server_, "TAIL", 4), 0);
  expect_arrives("HEAD" + content + "TAIL");
}

// Without layers, sock_tlc_write(fd, NULL, ...)'s raw bytes are an ordinary write: they follow
// everything queued, a half-sent file included (sendfile's progress is not in slot.sent; they
// went into the middle of the file's bytes), and the file not started after it.
TEST_F(FileWriteTest, RawLayerBytesWithoutLayersFollowAHalfSentFile) {
  const std::string content = pattern(2 * kMiB, 67);
  const std::string second = pattern(50000, 68);
  connect_client(4096);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = make_file(content), .file = 1), 0);
  std::string got;
  ASSERT_TRUE(read_until_closed(client_, &got, 64 * kKiB + 1));
  ASSERT_LT(got.size(), content.size()) << "precondition: the file is partly sent";
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = make_file(second), .file = 1), 0);
  ASSERT_EQ(sock_tlc_write(server_, nullptr, "RAW", 3), 0);
  const std::string expected = content + second + "RAW";
  ASSERT_TRUE(read_until_closed(client_, &got, expected.size()));
  EXPECT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected) << "streams differ at byte "
                               << testing_support::first_difference(got, expected);
}

TEST_F(FileWriteTest, WritesQueuedWhileAFileIsHalfSentFollowIt) {
  // A slow client: the file is partly sent when the next writes are queued.
  const std::string content = pattern(2 * kMiB, 65);
  connect_client(4096);
  ASSERT_EQ(sock_write(server_, "HEAD", 4), 0);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = make_file(content), .file = 1), 0);
  std::string got;
  ASSERT_TRUE(read_until_closed(client_, &got, 64 * kKiB + 1));
  ASSERT_LT(got.size(), 4 + content.size()) << "precondition: the file is partly sent";
  const std::string second = pattern(50000, 66);
  ASSERT_EQ(sock_write(server_, "MID", 3), 0);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = make_file(second), .file = 1), 0);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = "URG", .length = 3, .urgent = 1), 0);
  ASSERT_EQ(sock_write(server_, "TAIL", 4), 0);
  // The urgent write goes after the half-sent file (never inside it) and before MID.
  const std::string expected = "HEAD" + content + "URG" + "MID" + second + "TAIL";
  ASSERT_TRUE(read_until_closed(client_, &got, expected.size()));
  EXPECT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected) << "streams differ at byte " << testing_support::first_difference(got, expected);
}

// --- 6. Errors while sending a file --------------------------------------------------------------

TEST_F(FileWriteTest, PeerResetDuringSendfileClosesOnceWithoutSigpipe) {
  constexpr uint64_t kSize = 64 * kMiB;
  connect_client(4096);
  const int fds_before = open_fd_count();
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = make_marked_file(kSize), .file = 1), 0);
  CheckedStream rx = expect_marked(kSize);
  ASSERT_TRUE(receive(rx, 256 * kKiB));
  EXPECT_EQ(rx.first_mismatch, kNoMismatch);
  ASSERT_LT(rx.got, kSize) << "precondition: the file is still being sent";
  reset_client();
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ >= 1; }));
  run_iterations(20);
  EXPECT_EQ(server_closes_, 1);
  EXPECT_EQ(open_fd_count(), fds_before - 2) << "the file, the server socket and the client are closed";
  EXPECT_EQ(pool_stats().outstanding, 0u);
}

// After shutdown(SHUT_WR) every send fails with EPIPE, and sendfile (which has no
// MSG_NOSIGNAL) raises SIGPIPE: the library must keep it from reaching the process.
TEST_F(FileWriteTest, SendfileFailingWithEpipeRaisesNoSigpipe) {
  connect_client();
  ASSERT_EQ(shutdown(server_, SHUT_WR), 0);
  const int fds_before = open_fd_count();
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = make_file(pattern(100 * kKiB, 67)), .file = 1), 0);
  errno = 0;
  EXPECT_EQ(sock_flush(server_), -1);
  EXPECT_EQ(errno, EPIPE);
  EXPECT_FALSE(sigpipe_pending());
  EXPECT_EQ(server_closes_, 1);
  EXPECT_EQ(open_fd_count(), fds_before - 1) << "the server socket is closed, and the file";
  run_iterations(5);
  EXPECT_EQ(server_closes_, 1);
}

// A peer that resets while sendfile is moving data: the call returns the bytes it moved before
// the reset, and the kernel raised SIGPIPE for the write that failed, so the signal is pending
// although the call succeeded. It killed tools/http_server (exit 141) whenever a download's
// client went away mid-file (bench/stall.sh). The reader has a thread of its own, so that its
// reset lands while the test thread is inside sendfile (each call moves up to the flush
// budget); SIGPIPE is SIG_DFL (SetUp), so a signal let through ends the test binary.
TEST_F(FileWriteTest, APeerResetInTheMiddleOfASendfileRaisesNoSigpipe) {
  for (int round = 0; round < 20; ++round) {
    SCOPED_TRACE(round);
    int server = -1;
    const int client = connect_and_accept(&server);
    ASSERT_GE(server, 0);
    ASSERT_EQ(sock_write2(.fd = server, .buffer = make_marked_file(256 * kMiB), .file = 1), 0);
    // Among this round's closes only: an earlier round's server may have had the same number.
    const std::size_t closes_before = closed_.size();
    std::atomic<bool> reset{false};
    std::thread reader([&] {
      // A few MiB as fast as they come (blocking reads of 1 MiB: the server's calls find room
      // and move whole chunks), then a reset with the rest unread.
      static char buf[kMiB];
      // Half-closed first: the server's socket is then in CLOSE_WAIT, where the kernel takes
      // the reset for EPIPE (elsewhere ECONNRESET, which raises no signal).
      shutdown(client, SHUT_WR);
      testing_support::set_blocking(client);
      const timeval timeout{1, 0};
      setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
      std::size_t got = 0;
      const auto end = std::chrono::steady_clock::now() + 20s;
      while (got < 4 * kMiB + round * 64 * kKiB && std::chrono::steady_clock::now() < end) {
        const ssize_t n = recv(client, buf, sizeof buf, 0);
        if (n == 0) break;
        if (n > 0) got += static_cast<std::size_t>(n);
      }
      testing_support::reset_on_close(client);
      close(client);
      reset = true;
    });
    const bool closed = run_until(&r_, [&] {
      return reset && std::find(closed_.begin() + static_cast<std::ptrdiff_t>(closes_before),
                                closed_.end(), server) != closed_.end();
    });
    reader.join();
    ASSERT_TRUE(closed);
    EXPECT_FALSE(sigpipe_pending());
  }
  EXPECT_EQ(pool_stats().outstanding, 0u);
}

TEST_F(FileWriteTest, ReactorSendfileAfterLocalShutdownClosesOnceWithoutSigpipe) {
  connect_client();
  ASSERT_EQ(shutdown(server_, SHUT_WR), 0);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = make_file(pattern(100 * kKiB, 68)), .file = 1), 0);
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ >= 1; }));
  run_iterations(5);
  EXPECT_EQ(server_closes_, 1);
  EXPECT_EQ(pool_stats().outstanding, 0u);
}

// --- 7. A blocking socket ------------------------------------------------------------------------

// sendfile takes no MSG_DONTWAIT: on a blocking socket whose peer reads nothing it would hold
// the reactor's thread until the whole file had left. sock_open makes the fd non-blocking.
TEST_F(FileWriteTest, FileToABlockingSocketWaitsInTheQueueWhileThePeerReadsNothing) {
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);  // both blocking
  ASSERT_EQ(sock_open(&r_, pair[0]), 0);
  EXPECT_NE(fcntl(pair[0], F_GETFL) & O_NONBLOCK, 0);
  constexpr uint64_t kSize = 8 * kMiB;  // far more than the pair's buffers hold
  {
    const BlockWatchdog watchdog(pair[1], BlockWatchdog::Unblock::kDrainPeer);
    ASSERT_EQ(sock_write2(.fd = pair[0], .buffer = make_marked_file(kSize), .file = 1), 0);
    run_iterations(5);
    EXPECT_FALSE(watchdog.fired());
  }
  EXPECT_GT(sock_pending(pair[0]), 0) << "the file waits for the peer";
  CheckedStream rx = expect_marked(kSize);
  ASSERT_TRUE(run_until(&r_, [&] {
    rx.pump(pair[1]);
    return rx.got >= kSize || rx.closed || rx.first_mismatch != kNoMismatch;
  }));
  EXPECT_TRUE(rx.intact()) << "got " << rx.got << ", first wrong byte at " << rx.first_mismatch;
  sock_close(&r_, pair[0]);
  close(pair[1]);
  ASSERT_TRUE(run_until(&r_, [&] { return sock_is_closed(pair[0]); }));
}

// --- 8. A file that shrinks while it is sent -----------------------------------------------------

class ShrinkingFileTest : public FileWriteTest, public ::testing::WithParamInterface<bool> {};

TEST_P(ShrinkingFileTest, FileThatShrinksWhileSentClosesTheConnectionWithoutPadding) {
  const bool through_layer = GetParam();
  const std::string content = pattern(8 * kMiB, 69);
  FILE* f = make_file(content);
  ASSERT_NE(f, nullptr);
  const int truncate_fd = dup(fileno(f));  // the FILE* is the library's once written
  connect_client(4096);
  if (through_layer) add_pass_through_layer();
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = f, .file = 1), 0);
  CheckedStream rx = testing_support::expect_bytes(content);
  ASSERT_TRUE(receive(rx, 256 * kKiB, 16 * kKiB));
  ASSERT_LT(rx.got, 512 * kKiB) << "precondition: the client reads slowly";
  ASSERT_EQ(ftruncate(truncate_fd, 512 * kKiB), 0);
  close(truncate_fd);
  ASSERT_TRUE(run_until(&r_, [&] {
    rx.pump(client_, 16 * kKiB);
    return rx.closed || rx.got >= content.size();
  })) << "stalled after " << rx.got << " bytes: a file that ended early must fail the connection";
  EXPECT_TRUE(rx.closed);
  EXPECT_LT(rx.got, content.size()) << "the stream must end short, never padded";
  EXPECT_EQ(rx.first_mismatch, kNoMismatch)
      << "what arrived must be the file's prefix; first wrong byte at " << rx.first_mismatch;
  run_iterations(5);
  EXPECT_EQ(server_closes_, 1);
  EXPECT_EQ(pool_stats().outstanding, 0u);
}

INSTANTIATE_TEST_SUITE_P(SendfileAndLayer, ShrinkingFileTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "ThroughLayer" : "Sendfile";
                         });

}  // namespace
