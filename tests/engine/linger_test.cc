// The lingering close (engine/linger.cc): a sock_close() whose queue drains while the peer's
// input waits unread shuts the write side, discards input, and closes at the peer's EOF or
// kLingerMs, so that the close is never turned into a reset that destroys the response; a
// close with nothing unread closes at once, as before.
//
// The reactor reads a fake clock (tests/testing/fake_clock.h): the linger's deadline is
// checked to the tick, and no test waits for real time to pass.
#include <gtest/gtest.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "engine/defaults.h"
#include "engine/libreact.h"
#include "engine/libsock.h"
#include "engine/reactor.h"
#include "engine/timer_wheel.h"
#include "tests/testing/fake_clock.h"
#include "tests/testing/loopback.h"
#include "tests/testing/reactor_fixture.h"
#include "tests/testing/run_until.h"

namespace {

using std::chrono::milliseconds;
using testing_support::pattern;
using testing_support::run_until;

// The client's receive buffer: small, so that most of a response still waits in the server's
// kernel when its queue has drained and the close is due.
constexpr int kSmallBuffer = 4096;
// The fake clock moves this much per loop iteration while a test waits on it.
constexpr milliseconds kStep{10};
// A deadline fires at most two wheel ticks late (rounding up, the tick it fell in), plus a step.
constexpr milliseconds kLateness = 2 * milliseconds(engine::TimerWheel::kTickMs) + kStep;

// How a plain client's read ended.
struct Received {
  std::string bytes;
  bool eof = false;
  int error = 0;  // errno of a failed recv (ECONNRESET: the server's close was a reset)
  bool ended() const { return eof || error != 0; }
};

// Reads what is there now; returns whether the stream ended.
bool read_some(int fd, Received* got) {
  char buf[65536];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      got->bytes.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0) {
      got->eof = true;
    } else if (errno == EINTR) {
      continue;
    } else if (errno != EAGAIN) {
      got->error = errno;
    }
    return got->ended();
  }
}

class LingerTest : public testing_support::OneClientFixture {
 protected:
  void SetUp() override {
    OneClientFixture::SetUp();
    clock_.install(&r_);
  }

  // The server reads nothing unless told to: its client's input stays unread.
  void on_connection_data(int fd) override {
    ++data_calls_;
    if (read_input_) OneClientFixture::on_connection_data(fd);
  }

  void on_close(struct Reactor* r, int fd) override {
    OneClientFixture::on_close(r, fd);
    if (fd == server_) reason_ = sock_close_reason();
  }

  // The client's bytes reach the server, which reads none of them (its on_data ran).
  void send_unread_input(const std::string& input) {
    testing_support::write_all(client_, input);
    const int before = data_calls_;
    ASSERT_TRUE(run_until(&r_, [&] { return data_calls_ > before; }));
  }

  // Runs the loop, the fake clock standing still, until the client's stream ended.
  void read_to_end(Received* got) {
    ASSERT_TRUE(run_until(&r_, [&] { return read_some(client_, got); }));
  }

  // Moves the clock `step` at a time, running the loop, until done() or `ms` more passed.
  bool advance_until(const std::function<bool()>& done, milliseconds ms,
                     milliseconds step = kStep) {
    const int64_t until = clock_.now_ms() + ms.count();
    while (!done() && clock_.now_ms() < until) {
      clock_.advance(std::min(step, milliseconds(until - clock_.now_ms())));
      for (int i = 0; i < 2; ++i) engine::Reactor::of(&r_, true)->run_once(0);
    }
    return done();
  }

  // A response the client, its receive buffer small, cannot take at once, then sock_close():
  // with the client's request unread, the close lingers. Reads the response to its EOF.
  void answer_and_close_with_input_unread() {
    client_ = connect_and_accept(&server_, kSmallBuffer);
    ASSERT_GE(server_, 0);
    ASSERT_NO_FATAL_FAILURE(send_unread_input(pattern(1000, 32)));
    const std::string response = pattern(64 * 1024, 35);
    ASSERT_EQ(sock_write(server_, response.data(), response.size()), 0);
    sock_close(&r_, server_);
    Received got;
    ASSERT_NO_FATAL_FAILURE(read_to_end(&got));
    ASSERT_TRUE(got.eof) << "the write side is shut once the response is sent";
    ASSERT_TRUE(got.bytes == response);
    ASSERT_EQ(server_closes_, 0) << "closed instead of lingering";
  }

  // Sends the client's next bytes without blocking; returns how many went.
  std::size_t send_more() {
    static const std::string more = pattern(64 * 1024, 33);
    const ssize_t n = send(client_, more.data(), more.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    return n > 0 ? static_cast<std::size_t>(n) : 0;
  }

  // Bytes waiting unread in the server's socket.
  int server_unread() const {
    int n = -1;
    EXPECT_EQ(ioctl(server_, SIOCINQ, &n), 0);
    return n;
  }

  testing_support::FakeClock clock_;
  bool read_input_ = false;
  int data_calls_ = 0;
  SockCloseReason reason_ = SOCK_CLOSE_LOCAL;
};

TEST_F(LingerTest, CloseWithInputUnreadDeliversTheWholeResponseThenEofNotAReset) {
  client_ = connect_and_accept(&server_, kSmallBuffer);
  ASSERT_GE(server_, 0);
  ASSERT_NO_FATAL_FAILURE(send_unread_input("a request the server will not read"));
  const std::string response = pattern(256 * 1024, 31);
  ASSERT_EQ(sock_write(server_, response.data(), response.size()), 0);
  sock_close(&r_, server_);
  Received got;
  ASSERT_NO_FATAL_FAILURE(read_to_end(&got));
  EXPECT_EQ(got.error, 0) << "the close was a reset after " << got.bytes.size() << " bytes";
  EXPECT_TRUE(got.eof);
  EXPECT_TRUE(got.bytes == response) << got.bytes.size() << " of " << response.size() << " bytes";
  // Lingering: the fd stays until the client's EOF, then closes once, for the local close.
  EXPECT_EQ(server_closes_, 0);
  close(client_);
  client_ = -1;
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ > 0; }));
  run_iterations(3);
  EXPECT_EQ(server_closes_, 1);
  EXPECT_EQ(reason_, SOCK_CLOSE_LOCAL);
}

TEST_F(LingerTest, LingeringDiscardsInputWithoutOnDataAndEndsAfterTheQuietTime) {
  ASSERT_NO_FATAL_FAILURE(answer_and_close_with_input_unread());
  const int calls_at_close = data_calls_;
  // The client goes on sending: each step's bytes are read and dropped.
  for (int i = 0; i < 20; ++i) {
    ASSERT_GT(send_more(), 0u);
    run_iterations(3);
    ASSERT_EQ(server_unread(), 0) << "input left unread while lingering";
  }
  // Quiet from now: the fd closes kLingerMs later, not sooner.
  const milliseconds quiet(engine::kLingerMs);
  const int64_t quiet_since = clock_.now_ms();
  EXPECT_FALSE(advance_until([&] { return server_closes_ > 0; },
                             quiet - milliseconds(engine::TimerWheel::kTickMs)))
      << "closed " << clock_.now_ms() - quiet_since << " ms into the quiet time";
  EXPECT_TRUE(advance_until([&] { return server_closes_ > 0; }, 2 * kLateness));
  EXPECT_EQ(server_closes_, 1);
  EXPECT_EQ(reason_, SOCK_CLOSE_LOCAL);
  EXPECT_EQ(data_calls_, calls_at_close) << "on_data ran for a closed fd";
}

TEST_F(LingerTest, APeerThatNeverStopsSendingIsClosedAtTheLingerCap) {
  ASSERT_NO_FATAL_FAILURE(answer_and_close_with_input_unread());
  const int64_t lingering_since = clock_.now_ms();
  const milliseconds cap(engine::kLingerMaxMs);
  const milliseconds step(engine::TimerWheel::kTickMs);
  EXPECT_FALSE(advance_until(
      [&] {
        send_more();
        return server_closes_ > 0;
      },
      cap - step, step))
      << "closed " << clock_.now_ms() - lingering_since << " ms into the linger";
  EXPECT_TRUE(advance_until([&] { return server_closes_ > 0; }, 2 * kLateness));
  EXPECT_EQ(server_closes_, 1);
  EXPECT_EQ(reason_, SOCK_CLOSE_LOCAL);
}

TEST_F(LingerTest, CloseWithNothingUnreadClosesAtOnce) {
  read_input_ = true;
  connect_client();
  ASSERT_GE(server_, 0);
  ASSERT_NO_FATAL_FAILURE(send_unread_input("a request the server reads"));
  ASSERT_EQ(sock_write(server_, "bye", 3), 0);
  sock_close(&r_, server_);
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ > 0; }));
  Received got;
  ASSERT_NO_FATAL_FAILURE(read_to_end(&got));
  EXPECT_EQ(got.bytes, "bye");
  EXPECT_TRUE(got.eof);
  EXPECT_EQ(reason_, SOCK_CLOSE_LOCAL);
}

// The reactor only knows that no read reached EAGAIN: a callback that read exactly what came
// leaves nothing in the socket, so close(2) sends a FIN, and nothing is worth a linger.
TEST_F(LingerTest, CloseAfterReadingExactlyWhatCameClosesAtOnce) {
  connect_client();
  ASSERT_GE(server_, 0);
  const std::string request = pattern(4096, 36);
  ASSERT_NO_FATAL_FAILURE(send_unread_input(request));
  ASSERT_TRUE(run_until(&r_, [&] { return server_unread() == 4096; }));
  std::string got_request(request.size(), '\0');
  ASSERT_EQ(sock_read(server_, got_request.data(), got_request.size()), 4096);
  ASSERT_EQ(server_unread(), 0);
  sock_close(&r_, server_);
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ > 0; }));
  Received got;
  ASSERT_NO_FATAL_FAILURE(read_to_end(&got));
  EXPECT_TRUE(got.eof);
}

TEST_F(LingerTest, ASecondCloseKeepsTheLingerAndAStopEndsItOnceAllIsAcknowledged) {
  ASSERT_NO_FATAL_FAILURE(answer_and_close_with_input_unread());
  sock_close(&r_, server_);  // still the lingering connection's number: it goes on lingering
  run_iterations(3);
  EXPECT_EQ(server_closes_, 0);
  // The client has read the whole response: a stop need not wait for its EOF.
  reactor_stop(&r_);
  ASSERT_TRUE(run_until(&r_, [&] { return r_._impl == nullptr; }));
  EXPECT_EQ(server_closes_, 1);
  EXPECT_EQ(reason_, SOCK_CLOSE_LOCAL);
}

TEST_F(LingerTest, AStopKeepsALingerWhoseResponseIsStillUnacknowledged) {
  client_ = connect_and_accept(&server_, kSmallBuffer);
  ASSERT_GE(server_, 0);
  ASSERT_NO_FATAL_FAILURE(send_unread_input("unread"));
  // More than the client's buffer takes, less than the server's kernel does: the queue drains
  // at once, and the linger begins with most of the response unacknowledged.
  const std::string response = pattern(12 * 1024, 37);
  ASSERT_EQ(sock_write(server_, response.data(), response.size()), 0);
  sock_close(&r_, server_);
  ASSERT_TRUE(run_until(&r_, [&] { return sock_pending(server_) == 0; }));
  reactor_stop(&r_);
  run_iterations(3);
  EXPECT_EQ(server_closes_, 0) << "the stop cut the response short";
  Received got;
  ASSERT_NO_FATAL_FAILURE(read_to_end(&got));
  EXPECT_TRUE(got.eof);
  EXPECT_TRUE(got.bytes == response) << got.bytes.size() << " of " << response.size();
  ASSERT_EQ(shutdown(client_, SHUT_WR), 0);
  ASSERT_TRUE(run_until(&r_, [&] { return r_._impl == nullptr; }));
  EXPECT_EQ(server_closes_, 1);
}

// Input and the ACKs that let the queue drain often come in one event: the flush that drains
// the queue runs first, and its close must already know that input waits.
TEST_F(LingerTest, InputInTheEventThatDrainsTheQueueStillMakesTheCloseLinger) {
  read_input_ = true;  // all input so far is read: only the byte below waits
  client_ = connect_and_accept(&server_, kSmallBuffer);
  ASSERT_GE(server_, 0);
  const std::string response = pattern(64 * 1024, 38);
  ASSERT_EQ(sock_write(server_, response.data(), response.size()), 0);
  sock_close(&r_, server_);
  read_input_ = false;
  Received got;
  // Read, without running the loop, until the server's queue has so little left that one
  // flush sends it; then the client's last read (the window update) and one byte reach the
  // server before its next wait.
  for (int i = 0; i < 10000 && sock_pending(server_) > 2048; ++i) {
    read_some(client_, &got);
    engine::Reactor::of(&r_, true)->run_once(0);
  }
  ASSERT_LE(sock_pending(server_), 2048);
  ASSERT_EQ(server_closes_, 0);
  read_some(client_, &got);
  ASSERT_EQ(send(client_, "x", 1, MSG_NOSIGNAL), 1);
  ASSERT_NO_FATAL_FAILURE(read_to_end(&got));
  EXPECT_EQ(got.error, 0) << "the close was a reset after " << got.bytes.size() << " bytes";
  EXPECT_TRUE(got.eof);
  EXPECT_TRUE(got.bytes == response) << got.bytes.size() << " of " << response.size();
}

TEST_F(LingerTest, CloseLingeringWaitsForThePeersEofEvenWithNothingUnreadYet) {
  read_input_ = true;  // everything the client sent so far is read: a plain close would FIN
  connect_client();
  ASSERT_GE(server_, 0);
  ASSERT_NO_FATAL_FAILURE(send_unread_input("the start of an upload"));
  ASSERT_EQ(sock_write(server_, "413", 3), 0);
  ASSERT_EQ(sock_close_lingering(&r_, server_), 0);
  Received got;
  ASSERT_NO_FATAL_FAILURE(read_to_end(&got));
  EXPECT_EQ(got.bytes, "413");
  EXPECT_TRUE(got.eof);
  // The upload goes on after the answer: without the linger its bytes would meet a closed
  // socket and reset the connection; here they are discarded until the client's EOF.
  for (int i = 0; i < 10; ++i) {
    ASSERT_GT(send_more(), 0u);
    run_iterations(3);
    ASSERT_EQ(server_unread(), 0) << "input left unread while lingering";
  }
  EXPECT_EQ(server_closes_, 0);
  ASSERT_EQ(shutdown(client_, SHUT_WR), 0);
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ > 0; }));
  EXPECT_EQ(reason_, SOCK_CLOSE_LOCAL);
  char c;
  EXPECT_EQ(recv(client_, &c, 1, MSG_DONTWAIT), 0) << "a reset, errno " << errno;
}

TEST_F(LingerTest, CloseLingeringRefusesAClosedFdAnotherThreadAndAnFdWithoutAReactor) {
  connect_client();
  ASSERT_GE(server_, 0);
  int result = 0, err = 0;
  std::thread([&] {
    result = sock_close_lingering(&r_, server_);
    err = errno;
  }).join();
  EXPECT_EQ(result, -1);
  EXPECT_EQ(err, EPERM);
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair), 0);
  ASSERT_EQ(sock_open(nullptr, pair[0]), 0);
  EXPECT_EQ(sock_close_lingering(nullptr, pair[0]), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_FALSE(sock_is_closed(pair[0])) << "the refused call closed the fd";
  sock_force_close(nullptr, pair[0]);
  close(pair[1]);
  EXPECT_EQ(sock_close_lingering(&r_, pair[0]), -1);
  EXPECT_EQ(errno, EBADF);
}

}  // namespace
