// The write queue (engine/write_queue.cc) seen through the C API: coalescing, large copied and
// moved writes, ownership of .move buffers, urgent insertion, errors while writing, flushing
// until EAGAIN, and the direct packet API.
//
// Each test runs a server on a struct Reactor driven in the test thread; the client is a plain
// loopback socket that the run_until() predicate drains, so both ends progress without threads
// and nothing sleeps. SIGPIPE stays at its default action: a write that raised it would kill
// the test binary.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "engine/fd_table.h"
#include "engine/libreact.h"
#include "engine/libsock.h"
#include "tests/testing/checked_stream.h"
#include "tests/testing/loopback.h"
#include "tests/testing/reactor_fixture.h"
#include "tests/testing/run_until.h"

#if defined(__SANITIZE_ADDRESS__)
#define WQ_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define WQ_TEST_ASAN 1
#endif
#endif
#if defined(WQ_TEST_ASAN)
// From <sanitizer/allocator_interface.h>, which GCC does not ship (its libasan exports it).
extern "C" std::size_t __sanitizer_get_current_allocated_bytes(void);
#endif

namespace {

using testing_support::CheckedStream;
using testing_support::expect_bytes;
using testing_support::first_difference;
using testing_support::kNoMismatch;
using testing_support::pattern;
using testing_support::run_until;
using testing_support::set_sndbuf;
using namespace std::chrono_literals;

constexpr std::size_t kPacket = BUFFER_PACKET_SIZE;
constexpr std::size_t kMiB = 1024 * 1024;
constexpr std::size_t kBigWrite = 100 * kMiB;

// Bytes malloc() has handed out and not yet had back, where the allocator can say (ASan's);
// nullopt elsewhere (the default build's malloc is jemalloc, which the tests do not query).
// With ASan the leak checker also proves at exit that every .move buffer was freed.
std::optional<std::size_t> live_heap_bytes() {
#if defined(WQ_TEST_ASAN)
  return __sanitizer_get_current_allocated_bytes();
#else
  return std::nullopt;
#endif
}

// The 100 MB payload of the large-write tests, built once: pattern bytes, so a repeated or
// skipped 17 KB block shows up as a mismatch.
const std::string& big_payload() {
  static const std::string payload = pattern(kBigWrite, 42);
  return payload;
}

// A malloc'd copy of data, for .move writes.
void* malloc_copy(std::string_view data) {
  void* p = std::malloc(data.size());
  std::memcpy(p, data.data(), data.size());
  return p;
}

class WriteQueueTest : public testing_support::OneClientFixture {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(testing_support::assert_sigpipe_default());
    OneClientFixture::SetUp();
  }

  void TearDown() override {
    on_server_data_ = nullptr;  // it captures the test body's locals; the stop runs on_data
    OneClientFixture::TearDown();
  }

  void on_connection_data(int fd) override {
    if (on_server_data_) {
      on_server_data_(fd);
      return;
    }
    OneClientFixture::on_connection_data(fd);
  }

  // Lets the client read until expected.size() bytes arrived, and checks they are `expected`.
  void expect_received(std::string_view expected) {
    std::string got;
    ASSERT_TRUE(read_at_least(client_, &got, expected.size()));
    EXPECT_EQ(got, expected);
  }

  // Lets the client read (at most `per_call` bytes per iteration) until the stream is
  // complete or closed.
  bool receive(CheckedStream& rx, std::size_t per_call = SIZE_MAX,
               std::chrono::milliseconds deadline = 20s) {
    return run_until(
        &r_,
        [&] {
          rx.pump(client_, per_call);
          return rx.complete() || rx.closed;
        },
        deadline);
  }

  // Lets the client read big_payload(), which the server has queued whole, and checks that all
  // of it arrived in order and every packet went back to the pool.
  void expect_big_payload_arrives() {
    const std::string& data = big_payload();
    CheckedStream rx = expect_bytes(data);
    ASSERT_TRUE(receive(rx, SIZE_MAX, 120s));
    EXPECT_EQ(rx.got, data.size());
    EXPECT_EQ(rx.first_mismatch, kNoMismatch) << "first wrong byte at " << rx.first_mismatch;
    EXPECT_EQ(pool_stats().outstanding, 0u);
  }

  // Connects a client that resets the connection at once, waits for the reset to reach the
  // server and consumes it with a plain recv, as a read on the server would: the socket error
  // (ECONNRESET) is gone and every later send fails with EPIPE, which raises SIGPIPE unless
  // the library suppresses it.
  void connect_and_consume_reset() {
    connect_client();
    reset_client();
    pollfd p{server_, POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 5000), 1);
    char byte;
    errno = 0;
    ASSERT_EQ(recv(server_, &byte, 1, MSG_DONTWAIT), -1);
    ASSERT_EQ(errno, ECONNRESET);
  }

  // Replaces the default (read and discard) on the server's connection.
  std::function<void(int fd)> on_server_data_;
};

// --- 1. Coalescing ---------------------------------------------------------------------------

// Record i of the small-write tests: 10 bytes, 'r' + 8 digits + '\n', distinct for each i.
std::string record(int i) {
  char rec[11];
  std::snprintf(rec, sizeof rec, "r%08d\n", i);
  return std::string(rec, 10);
}

TEST_F(WriteQueueTest, ThousandSmallWritesOnTheOwnerThreadShareOnePacket) {
  connect_client();
  const SockPoolStats before = pool_stats();
  ASSERT_EQ(before.high_water, 0u);  // a fresh reactor: nothing checked out yet
  std::string expected;
  for (int i = 0; i < 1000; ++i) {
    const std::string rec = record(i);
    expected += rec;
    ASSERT_EQ(sock_write(server_, rec.data(), rec.size()), 0);
  }
  const SockPoolStats queued = pool_stats();
  EXPECT_EQ(queued.checkouts - before.checkouts, 1u) << "10,000 bytes fit one 17 KB packet";
  EXPECT_EQ(queued.outstanding, 1u);

  ASSERT_NO_FATAL_FAILURE(expect_received(expected));
  const SockPoolStats after = pool_stats();
  EXPECT_EQ(after.high_water, 1u);
  EXPECT_EQ(after.outstanding, 0u);
}

TEST_F(WriteQueueTest, ThousandSmallWritesInOneCallbackShareOnePacket) {
  std::string expected;
  for (int i = 0; i < 1000; ++i) expected += record(i);
  on_server_data_ = [&](int fd) {
    char buf[64];
    while (sock_read(fd, buf, sizeof buf) > 0) {
      for (int i = 0; i < 1000; ++i) {
        ASSERT_EQ(sock_write(fd, expected.data() + 10 * i, 10), 0);
      }
    }
  };
  connect_client();
  testing_support::write_all(client_, "g");
  ASSERT_NO_FATAL_FAILURE(expect_received(expected));
  const SockPoolStats s = pool_stats();
  EXPECT_EQ(s.checkouts, 1u);
  EXPECT_EQ(s.high_water, 1u);
  EXPECT_EQ(s.outstanding, 0u);
}

TEST_F(WriteQueueTest, FirstWriteToAnEmptyQueueGoesStraightToTheKernelWithoutAPacket) {
  connect_client();
  ASSERT_EQ(sock_write(server_, "0123456789", 10), 0);
  EXPECT_EQ(sock_pending(server_), 0);
  EXPECT_EQ(pool_stats().checkouts, 0u);
  // A second write in the same loop iteration queues (to leave with any others in one writev);
  // an explicit flush on the owner thread sends it at once and returns the packet.
  ASSERT_EQ(sock_write(server_, "abcdefghij", 10), 0);
  EXPECT_EQ(sock_pending(server_), 10);
  EXPECT_EQ(pool_stats().outstanding, 1u);
  EXPECT_EQ(sock_flush(server_), 10);
  EXPECT_EQ(pool_stats().outstanding, 0u);

  // The same through the reactor's flush step.
  ASSERT_EQ(sock_write(server_, "ABCDEFGHIJ", 10), 0);
  ASSERT_NO_FATAL_FAILURE(expect_received("0123456789abcdefghijABCDEFGHIJ"));
  EXPECT_EQ(pool_stats().outstanding, 0u);
}

// An fd that never reads (fed by timers, posted writes or other fds' callbacks) gets no
// on_data to end its direct write's mark: the loop iteration's end does, so each iteration's
// first write to it goes straight to the kernel, not every other one into a packet.
TEST_F(WriteQueueTest, AnFdThatIsOnlyWrittenToGoesDirectInEveryIteration) {
  connect_client();
  std::string expected;
  for (int i = 0; i < 10; ++i) {
    const std::string rec = record(i);
    expected += rec;
    ASSERT_EQ(sock_write(server_, rec.data(), rec.size()), 0);
    EXPECT_EQ(sock_pending(server_), 0) << "write " << i << " was queued";
    run_iterations(1);
  }
  EXPECT_EQ(pool_stats().checkouts, 0u);
  // Within one iteration the writes after the direct one still queue, to leave together.
  ASSERT_EQ(sock_write(server_, "0123456789", 10), 0);
  ASSERT_EQ(sock_write(server_, "abcdefghij", 10), 0);
  EXPECT_EQ(sock_pending(server_), 10);
  ASSERT_NO_FATAL_FAILURE(expect_received(expected + "0123456789abcdefghij"));
  EXPECT_EQ(pool_stats().checkouts, 1u);
  EXPECT_EQ(pool_stats().outstanding, 0u);
}

// The same with the writes made by another connection's on_data (the shape of
// bench/scale_bench's cross variant on one reactor): the mark that a write to a third fd
// leaves is not ended by that fd's on_data, which never comes, but by the iteration's end.
TEST_F(WriteQueueTest, WritesFromAnotherFdsOnDataGoDirectInEveryIteration) {
  connect_client();
  int quiet = -1;
  const int quiet_client = connect_and_accept(&quiet);
  ASSERT_GE(quiet, 0);
  int written = 0;
  // One record for each byte that arrives on server_ (none for its EOF at the end).
  on_server_data_ = [&](int fd) {
    char buf[64];
    ssize_t n;
    while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
      for (ssize_t i = 0; i < n && fd == server_; ++i) {
        const std::string rec = record(written++);
        ASSERT_EQ(sock_write(quiet, rec.data(), rec.size()), 0);
        EXPECT_EQ(sock_pending(quiet), 0) << "write " << written - 1 << " was queued";
      }
    }
  };
  std::string expected;
  for (int i = 0; i < 10; ++i) {
    expected += record(i);
    testing_support::write_all(client_, "g");
    ASSERT_TRUE(run_until(&r_, [&] { return written == i + 1; }));
  }
  EXPECT_EQ(pool_stats().checkouts, 0u);
  std::string got;
  ASSERT_TRUE(read_at_least(quiet_client, &got, expected.size()));
  EXPECT_EQ(got, expected);
  on_server_data_ = nullptr;  // it refers to this test's locals
  close(quiet_client);
}

// --- 2, 3. Large copied and moved writes -------------------------------------------------------

TEST_F(WriteQueueTest, CopiedWriteOf100MBArrivesCompleteAndInOrder) {
  connect_client();
  const std::string& data = big_payload();
  ASSERT_EQ(sock_write(server_, data.data(), data.size()), 0);
  expect_big_payload_arrives();
}

TEST_F(WriteQueueTest, MovedBufferOf100MBArrivesCompleteAndIsFreed) {
  connect_client();
  const std::string& data = big_payload();
  void* buffer = malloc_copy(data);
  const std::optional<std::size_t> heap_with_buffer = live_heap_bytes();
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = buffer, .length = data.size(), .move = 1), 0);
  EXPECT_EQ(pool_stats().outstanding, 1u) << "a moved buffer is linked, not copied";
  ASSERT_NO_FATAL_FAILURE(expect_big_payload_arrives());
  if (heap_with_buffer) {
    EXPECT_LE(*live_heap_bytes() + kBigWrite, *heap_with_buffer + kMiB)
        << "the 100 MB buffer was not freed once sent";
  }
}

// --- 4. .move ownership on error ---------------------------------------------------------------

TEST_F(WriteQueueTest, MovedBufferIsFreedWhenTheWriteFails) {
  connect_client();
  const std::string data = pattern(kMiB, 4);
  const std::optional<std::size_t> heap_before = live_heap_bytes();

  errno = 0;
  EXPECT_EQ(sock_write2(.fd = -1, .buffer = malloc_copy(data), .length = data.size(), .move = 1), -1);
  EXPECT_EQ(errno, EBADF);

  int never_opened[2];
  ASSERT_EQ(pipe(never_opened), 0);
  errno = 0;
  EXPECT_EQ(sock_write2(.fd = never_opened[1], .buffer = malloc_copy(data), .length = data.size(),
                        .move = 1),
            -1);
  EXPECT_EQ(errno, EBADF);
  close(never_opened[0]);
  close(never_opened[1]);

  // Zero bytes is a no-op that succeeds, and the buffer is still the library's to free.
  EXPECT_EQ(sock_write2(.fd = server_, .buffer = malloc_copy(data), .length = 0, .move = 1), 0);

  // A connection that is closing accepts no new writes.
  sock_close(&r_, server_);
  errno = 0;
  EXPECT_EQ(sock_write2(.fd = server_, .buffer = malloc_copy(data), .length = data.size(), .move = 1),
            -1);
  EXPECT_EQ(errno, EPIPE);
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ == 1; }));

  // After the close the fd is unknown to the library.
  errno = 0;
  EXPECT_EQ(sock_write2(.fd = server_, .buffer = malloc_copy(data), .length = data.size(), .move = 1),
            -1);
  EXPECT_EQ(errno, EBADF);

  if (heap_before) {
    EXPECT_LE(*live_heap_bytes(), *heap_before + kMiB / 2) << "a .move buffer leaked on an error path";
  }
}

TEST_F(WriteQueueTest, MovedBufferStillQueuedWhenThePeerResetsIsFreed) {
  connect_client(4096);
  const std::string data = pattern(8 * kMiB, 5);
  const std::optional<std::size_t> heap_before = live_heap_bytes();
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = malloc_copy(data), .length = data.size(), .move = 1),
            0);
  run_iterations(2);  // part of it goes out; the rest waits for the reader
  reset_client();
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ == 1; }));
  EXPECT_EQ(pool_stats().outstanding, 0u);
  if (heap_before) {
    EXPECT_LE(*live_heap_bytes(), *heap_before + kMiB / 2);
  }
}

// --- 5. Urgent writes --------------------------------------------------------------------------

// Fills the server's socket buffers against a client that does not read: the test shrinks
// both ends' buffers, queues `head`, and runs the flush step once, so `head` is partly sent.
class UrgentWriteTest : public WriteQueueTest {
 protected:
  void SetUp() override {
    WriteQueueTest::SetUp();
    connect_client(4096);
  }
  // Runs until the flush step wrote part of the queue and the kernel refused the rest.
  void flush_until_blocked() {
    run_iterations(2);
    const engine::FdSlot* slot = engine::fd_slot(server_);
    ASSERT_NE(slot, nullptr);
    ASSERT_NE(slot->head, nullptr) << "the kernel took everything: the buffers are too large";
  }
};

TEST_F(UrgentWriteTest, UrgentWriteGoesAfterThePartlySentPacketAndBeforeTheNextWrite) {
  // A is one packet (a moved buffer), so once anything of it is sent the head is A partly sent.
  const std::string a = pattern(kMiB, 10);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = malloc_copy(a), .length = a.size(), .move = 1), 0);
  flush_until_blocked();
  const engine::FdSlot* slot = engine::fd_slot(server_);
  ASSERT_GT(slot->sent, 0u) << "precondition: A is partly sent";
  ASSERT_EQ(slot->head, slot->tail) << "precondition: A is the only packet";

  const std::string b = pattern(40000, 11);  // three packets
  const std::string c = "c-small";           // merges into B's last packet
  const std::string u1 = "URGENT-ONE";
  const std::string u2 = pattern(40000, 12);  // a multi-packet urgent write
  const std::string d = "d-after-urgent";
  ASSERT_EQ(sock_write(server_, b.data(), b.size()), 0);
  ASSERT_EQ(sock_write(server_, c.data(), c.size()), 0);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = u1.data(), .length = u1.size(), .urgent = 1), 0);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = u2.data(), .length = u2.size(), .urgent = 1), 0);
  ASSERT_EQ(sock_write(server_, d.data(), d.size()), 0);

  const std::string expected = a + u1 + u2 + b + c + d;
  const std::string got = read_to_eof(client_, expected.size());
  EXPECT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected) << "streams differ at byte " << first_difference(got, expected)
                               << " (A ends at " << a.size() << ")";
}

TEST_F(UrgentWriteTest, UrgentWriteNeverSplitsAMultiPacketWrite) {
  // A is a copied write of 30 whole packets; the head is one of them, partly sent, and the
  // packets after it belong to A too: the urgent write must wait for all of A. A fills its last
  // packet, so B starts a packet of its own and the urgent write goes before it.
  const std::string a = pattern(30 * kPacket, 20);
  // A first write that goes straight to the kernel, so that A is queued whole.
  ASSERT_EQ(sock_write(server_, "<", 1), 0);
  ASSERT_EQ(sock_write(server_, a.data(), a.size()), 0);
  flush_until_blocked();
  const engine::FdSlot* slot = engine::fd_slot(server_);
  ASSERT_NE(slot->head, slot->tail) << "precondition: several packets of A are still queued";

  const std::string u = "URGENT";
  const std::string b = pattern(20000, 21);
  ASSERT_EQ(sock_write(server_, b.data(), b.size()), 0);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = u.data(), .length = u.size(), .urgent = 1), 0);

  const std::string expected = "<" + a + u + b;
  const std::string got = read_to_eof(client_, expected.size());
  EXPECT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected) << "streams differ at byte " << first_difference(got, expected);
}

TEST_F(UrgentWriteTest, UrgentWriteNeverCutsTheRestOfAWriteThatWentPartlyToTheKernel) {
  // A finds the queue empty, so its start goes straight to the kernel, which takes only part
  // of it (small buffers); the rest is queued. To the queue that rest looks like a fresh
  // write, but it is the middle of A on the wire: the urgent write must follow it.
  const std::string a = pattern(3 * kPacket, 22);
  ASSERT_EQ(sock_write(server_, a.data(), a.size()), 0);
  const engine::FdSlot* slot = engine::fd_slot(server_);
  ASSERT_GT(slot->queued_bytes, 0u) << "precondition: the kernel took only part of A";
  ASSERT_LT(slot->queued_bytes, a.size()) << "precondition: part of A went straight out";
  const std::string u = "URGENT";
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = u.data(), .length = u.size(), .urgent = 1), 0);

  const std::string expected = a + u;
  const std::string got = read_to_eof(client_, expected.size());
  EXPECT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected) << "streams differ at byte " << first_difference(got, expected);
}

TEST_F(UrgentWriteTest, UrgentWriteNeverLandsInsideWritesThatShareAPacket) {
  // A ends 2,048 bytes into its last packet and B is copied into the rest of that packet
  // (coalescing) and on into one more, which continues B and so starts no write. No packet
  // boundary that starts a write follows A, so the urgent write goes last (libsock.h: "before
  // the first queued packet that starts a write"): never between A and B, never inside either.
  const std::string a = pattern(512 * 1024, 22);
  ASSERT_EQ(a.size() % kPacket, 2048u) << "precondition: A ends inside its last packet";
  // A first write that goes straight to the kernel, so that A is queued whole.
  ASSERT_EQ(sock_write(server_, "<", 1), 0);
  ASSERT_EQ(sock_write(server_, a.data(), a.size()), 0);
  flush_until_blocked();
  const engine::FdSlot* slot = engine::fd_slot(server_);
  ASSERT_NE(slot->head, slot->tail)
      << "precondition: A's last packet has not started sending, so B merges into it";
  const std::string b = pattern(20000, 23);
  const std::string u = "URGENT";
  ASSERT_EQ(sock_write(server_, b.data(), b.size()), 0);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = u.data(), .length = u.size(), .urgent = 1), 0);

  const std::string expected = "<" + a + b + u;
  const std::string got = read_to_eof(client_, expected.size());
  EXPECT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected) << "streams differ at byte " << first_difference(got, expected)
                               << " (A ends at " << 1 + a.size() << ", B at "
                               << 1 + a.size() + b.size() << ")";
}

TEST_F(UrgentWriteTest, UrgentWritesGoBeforeUnstartedWritesInTheirOwnOrder) {
  // The filler is partly sent; W1 and W2 have not started, so urgent writes go before W1.
  const std::string filler = pattern(kMiB, 30);
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = malloc_copy(filler), .length = filler.size(),
                        .move = 1),
            0);
  flush_until_blocked();
  const std::string w1 = "first-normal-write";
  const std::string w2 = pattern(30000, 31);
  ASSERT_EQ(sock_write(server_, w1.data(), w1.size()), 0);
  ASSERT_EQ(sock_write(server_, w2.data(), w2.size()), 0);
  std::string urgent_all;
  for (int i = 0; i < 5; ++i) {
    const std::string u = "<urgent " + std::to_string(i) + ">";
    urgent_all += u;
    ASSERT_EQ(sock_write2(.fd = server_, .buffer = malloc_copy(u), .length = u.size(), .move = 1,
                          .urgent = 1),
              0);
  }
  const std::string expected = filler + urgent_all + w1 + w2;
  const std::string got = read_to_eof(client_, expected.size());
  EXPECT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected) << "streams differ at byte " << first_difference(got, expected)
                               << " (the filler ends at " << filler.size() << ")";
}

// --- 6, 7. Errors while writing ----------------------------------------------------------------

TEST_F(WriteQueueTest, PeerResetDuringALargeWriteClosesOnceAndReturnsEveryPacket) {
  connect_client(4096);
  const std::string& data = big_payload();
  const std::size_t size = 16 * kMiB;
  ASSERT_EQ(sock_write(server_, data.data(), size), 0);
  ASSERT_GT(pool_stats().outstanding, 900u);
  // The client reads a little, so the reset arrives while the queue is being written.
  CheckedStream rx = expect_bytes(std::string_view(data.data(), size));
  ASSERT_TRUE(run_until(&r_, [&] {
    rx.pump(client_);
    return rx.got >= 64 * 1024;
  }));
  EXPECT_EQ(rx.first_mismatch, kNoMismatch);
  reset_client();
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ >= 1; }));
  run_iterations(20);
  EXPECT_EQ(server_closes_, 1);
  EXPECT_EQ(pool_stats().outstanding, 0u);
  EXPECT_TRUE(sock_is_closed(server_));
}


TEST_F(WriteQueueTest, WriteAfterPeerResetFailsWithEpipeWithoutSigpipe) {
  connect_and_consume_reset();
  const std::string data = pattern(64 * 1024, 6);
  ASSERT_EQ(sock_write(server_, data.data(), data.size()), 0);  // queued until the flush
  errno = 0;
  EXPECT_EQ(sock_flush(server_), -1);
  EXPECT_EQ(errno, EPIPE);
  EXPECT_EQ(server_closes_, 1);
  EXPECT_TRUE(sock_is_closed(server_));
  EXPECT_EQ(pool_stats().outstanding, 0u);
  run_iterations(5);
  EXPECT_EQ(server_closes_, 1);
}

TEST_F(WriteQueueTest, ReactorFlushAfterPeerResetClosesOnceWithoutSigpipe) {
  connect_and_consume_reset();
  const std::string data = pattern(64 * 1024, 7);
  ASSERT_EQ(sock_write(server_, data.data(), data.size()), 0);
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ >= 1; }));
  run_iterations(5);
  EXPECT_EQ(server_closes_, 1);
  EXPECT_EQ(pool_stats().outstanding, 0u);
}

TEST(WriteQueueNoReactorTest, WriteAfterLocalShutdownFailsWithoutSigpipe) {
  auto l = testing_support::listen_loopback();
  const int client = testing_support::connect_client(l.port);
  const int server = accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  ASSERT_GE(server, 0);
  ASSERT_EQ(sock_open(nullptr, server), 0);
  ASSERT_EQ(shutdown(server, SHUT_WR), 0);  // every send now fails with EPIPE (and SIGPIPE)
  // Without a reactor the write is flushed at once, and its failure is the write's result.
  // The fd stays open, failed, until its caller closes it: sock_flush reports the failure
  // again and closes it.
  errno = 0;
  EXPECT_EQ(sock_write(server, "doomed", 6), -1);
  EXPECT_EQ(errno, EPIPE);
  EXPECT_FALSE(sock_is_closed(server));
  errno = 0;
  EXPECT_EQ(sock_flush(server), -1);
  EXPECT_EQ(errno, EPIPE);
  EXPECT_TRUE(sock_is_closed(server));
  errno = 0;
  EXPECT_EQ(sock_write(server, "again", 5), -1);
  EXPECT_EQ(errno, EBADF);
  close(client);
  close(l.fd);
}

// An fd without a reactor has no on_close to report a failure that its write's own flush
// met: the write returns it, and the fd, still open and still the caller's (another thread may
// get its number once it closes), refuses writes until the caller closes it.
TEST(WriteQueueNoReactorTest, WriteToAPeerThatResetFailsWithEconnresetAndLeavesTheFdToTheCaller) {
  auto l = testing_support::listen_loopback();
  const int client = testing_support::connect_client(l.port);
  const int server = accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  ASSERT_GE(server, 0);
  ASSERT_EQ(sock_open(nullptr, server), 0);
  ASSERT_EQ(testing_support::reset_on_close(client), 0);
  close(client);
  pollfd p{server, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 5000), 1);  // the reset has arrived
  errno = 0;
  EXPECT_EQ(sock_write(server, "doomed", 6), -1);
  EXPECT_EQ(errno, ECONNRESET);
  EXPECT_GE(fcntl(server, F_GETFD), 0) << "the fd was closed inside the write";
  EXPECT_FALSE(sock_is_closed(server));
  errno = 0;
  EXPECT_EQ(sock_write2(.fd = server, .buffer = malloc_copy("moved"), .length = 5, .move = 1), -1);
  EXPECT_EQ(errno, EPIPE) << "the connection failed: later writes are refused";
  sock_close(nullptr, server);
  EXPECT_TRUE(sock_is_closed(server));
  EXPECT_EQ(fcntl(server, F_GETFD), -1) << "sock_close closed it";
  close(l.fd);
}

// --- 8. Flushing until EAGAIN ------------------------------------------------------------------

TEST(WriteQueueNoReactorTest, SockFlushWritesUntilEagainWhileTheClientDrains) {
  auto l = testing_support::listen_loopback();
  const int client = testing_support::connect_client(l.port, 64 * 1024);
  const int server = accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  ASSERT_GE(server, 0);
  set_sndbuf(server, 64 * 1024);
  ASSERT_EQ(sock_open(nullptr, server), 0);

  // Fill the kernel first, so the write below is queued (nearly) whole and sock_flush's
  // results account for it.
  std::string filler;
  for (;;) {
    const std::string chunk = pattern(16 * 1024, static_cast<unsigned>(filler.size()));
    const ssize_t n = send(server, chunk.data(), chunk.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) break;
    filler.append(chunk, 0, static_cast<std::size_t>(n));
  }
  ASSERT_EQ(errno, EAGAIN);
  const std::string data = pattern(2 * kMiB, 8);
  ASSERT_EQ(sock_write(server, data.data(), data.size()), 0);

  const std::string expected = filler + data;
  CheckedStream rx = expect_bytes(expected);
  std::size_t flushed = 0;
  std::size_t largest_flush = 0;
  int flushes = 0;
  // Whether each flush ended at EAGAIN cannot be probed from here without racing the kernel
  // (ACKs free socket space asynchronously). The exact total and a flush larger than one
  // packet prove what matters: no byte lost or repeated, and no single write per flush.
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (!rx.complete() && !rx.closed && std::chrono::steady_clock::now() < deadline) {
    rx.pump(client);
    const ssize_t n = sock_flush(server);
    ASSERT_GE(n, 0) << "errno " << errno;
    flushed += static_cast<std::size_t>(n);
    largest_flush = std::max(largest_flush, static_cast<std::size_t>(n));
    ++flushes;
  }
  EXPECT_TRUE(rx.intact()) << "got " << rx.got << " of " << expected.size()
                           << ", first mismatch at " << rx.first_mismatch;
  // sock_write on an fd without a reactor already tries a flush itself, and the client may
  // have made room by then, so the flushes account for at most the whole write.
  EXPECT_LE(flushed, data.size());
  EXPECT_GT(largest_flush, kPacket) << "one flush should write more than one packet";
  RecordProperty("flushes", flushes);
  sock_force_close(nullptr, server);
  close(client);
  close(l.fd);
}

TEST_F(WriteQueueTest, LargeResponseToASlowReaderCompletesWithoutStalling) {
  connect_client(64 * 1024);
  const std::string& data = big_payload();
  const std::size_t size = 10 * kMiB;
  ASSERT_EQ(sock_write(server_, data.data(), size), 0);
  // The client reads at most 32 KB per loop iteration, so the server's queue blocks and
  // resumes many times; each resumption must come from the reactor, not from a new write.
  CheckedStream rx = expect_bytes(std::string_view(data.data(), size));
  ASSERT_TRUE(receive(rx, 32 * 1024, 60s)) << "stalled after " << rx.got << " bytes";
  EXPECT_TRUE(rx.intact()) << "first mismatch at " << rx.first_mismatch;
  EXPECT_EQ(pool_stats().outstanding, 0u);
}

// --- 9. The packet API -------------------------------------------------------------------------

TEST_F(WriteQueueTest, PacketChainIsSentInOrder) {
  connect_client();
  const std::string parts[3] = {pattern(kPacket, 50), pattern(100, 51), pattern(5000, 52)};
  Packet* chain = nullptr;
  Packet** link = &chain;
  for (const std::string& part : parts) {
    Packet* p = sock_checkout_packet();
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(p->buffer, p->internal_memory);
    EXPECT_EQ(p->length, 0);
    EXPECT_EQ(p->metadata.next, nullptr);
    std::memcpy(p->internal_memory, part.data(), part.size());
    p->length = static_cast<ssize_t>(part.size());
    *link = p;
    link = &p->metadata.next;
  }
  ASSERT_EQ(sock_send_packet(server_, chain), 0);
  const std::string expected = parts[0] + parts[1] + parts[2];
  std::string got;
  ASSERT_TRUE(read_at_least(client_, &got, expected.size()));
  EXPECT_TRUE(got == expected) << "streams differ at byte " << first_difference(got, expected);
}

TEST_F(WriteQueueTest, FailedSendPacketLeavesTheChainWithTheCaller) {
  connect_client();
  SockPoolStats fallback_before{};
  ASSERT_EQ(sock_pool_stats(nullptr, &fallback_before), 0);

  Packet* chain = sock_checkout_packet();
  ASSERT_NE(chain, nullptr);
  chain->metadata.next = sock_checkout_packet();
  ASSERT_NE(chain->metadata.next, nullptr);
  std::memcpy(chain->internal_memory, "first", 5);
  chain->length = 5;
  std::memcpy(chain->metadata.next->internal_memory, "second", 6);
  chain->metadata.next->length = 6;

  errno = 0;
  EXPECT_EQ(sock_send_packet(-1, chain), -1);
  EXPECT_EQ(errno, EBADF);
  errno = 0;
  EXPECT_EQ(sock_send_packet(server_, nullptr), -1);
  EXPECT_EQ(errno, EINVAL);

  // A negative length is refused before anything is queued.
  chain->metadata.next->length = -1;
  errno = 0;
  EXPECT_EQ(sock_send_packet(server_, chain), -1);
  EXPECT_EQ(errno, EINVAL);
  chain->metadata.next->length = 6;

  sock_close(&r_, server_);
  errno = 0;
  EXPECT_EQ(sock_send_packet(server_, chain), -1);
  EXPECT_EQ(errno, EPIPE);

  // The chain is still ours: its memory is live (ASan poisons pooled packets once returned).
  EXPECT_EQ(std::string(chain->internal_memory, 5), "first");
  EXPECT_EQ(std::string(chain->metadata.next->internal_memory, 6), "second");
  sock_free_packet(chain);
  SockPoolStats fallback_after{};
  ASSERT_EQ(sock_pool_stats(nullptr, &fallback_after), 0);
  EXPECT_EQ(fallback_after.outstanding, fallback_before.outstanding);
  EXPECT_EQ(fallback_after.returns - fallback_before.returns, 2u);
  sock_free_packet(nullptr);  // a no-op

  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ == 1; }));
  std::string got;
  read_until_closed(client_, &got);
  EXPECT_EQ(got, "") << "nothing of the refused chain was sent";
}

TEST_F(WriteQueueTest, ExternalPacketBufferIsFreedWithThePacket) {
  connect_client();
  const std::string data = pattern(300 * 1024, 53);
  const std::optional<std::size_t> heap_before = live_heap_bytes();
  Packet* p = sock_checkout_packet();
  ASSERT_NE(p, nullptr);
  p->buffer = malloc_copy(data);
  p->length = static_cast<ssize_t>(data.size());
  p->metadata.external = 1;
  ASSERT_EQ(sock_send_packet(server_, p), 0);
  CheckedStream rx = expect_bytes(data);
  ASSERT_TRUE(receive(rx));
  EXPECT_TRUE(rx.intact());
  if (heap_before) {
    EXPECT_LE(*live_heap_bytes(), *heap_before + 64 * 1024);
  }
}

}  // namespace
