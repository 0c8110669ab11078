// Backpressure on one reactor (engine/reactor.cc: check_high_watermark, resume_if_drained;
// libsock.cc: sock_set_watermarks, sock_pending; libreact.h: ReactorLimits): a connection whose
// queue passes its high watermark stops being read (no on_data) until the queue drains to the
// low one, then on_ready says so and reading resumes; the reactor's memory budget bounds the
// packets out at once, and a write beyond it fails with ENOBUFS, queueing nothing.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "tests/testing/loopback.h"
#include "tests/testing/reactor_fixture.h"
#include "tests/testing/run_until.h"

namespace {

using testing_support::pattern;
using testing_support::run_until;

// Small kernel buffers on both ends: the user-level queue, not the kernel, holds the backlog.
constexpr int kSmallBuffer = 4096;
// The server's receive buffer: room for input to arrive (as edges) while reading is paused.
constexpr int kServerRcvbuf = 64 * 1024;
// The echo server's read buffer: the most one on_data read can add to the queue.
constexpr std::size_t kReadBuffer = 16 * 1024;

// An echo server whose client (client_) sends without reading until told to. It tracks the
// pause as the contract defines it: a write that takes the queue above the high watermark
// pauses reading; the on_ready that follows means the queue is down to the low watermark
// and reading has resumed.
class EchoTest : public testing_support::OneClientFixture {
 protected:
  // Bounded kernel buffers toward the server too (no autotuning; the client's send buffer is
  // shrunk once connected): what the client sends beyond them waits for the server to read,
  // so its sends block soon after reading pauses. Accepted sockets inherit the listener's
  // receive buffer, so the window is sized for it from the handshake on.
  void SetUp() override {
    OneClientFixture::SetUp();
    const int rcvbuf = kServerRcvbuf;
    ASSERT_EQ(setsockopt(listener_.fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
  }

  void on_connection_data(int fd) override {
    ++data_calls_;
    EXPECT_FALSE(paused_) << "on_data while the queue is above the high watermark";
    char buf[kReadBuffer];
    ssize_t n;
    // sock_read returns 0 once paused: the rest waits in the kernel.
    while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
      read_ += static_cast<std::size_t>(n);
      EXPECT_EQ(sock_write(fd, buf, static_cast<std::size_t>(n)), 0);
      note_queue(fd);
    }
  }

  void on_ready(struct Reactor*, int fd) override {
    if (fd != server_) return;
    ++readies_;
    if (!paused_) return;
    EXPECT_LE(sock_pending(fd), static_cast<ssize_t>(low_)) << "resumed above the low watermark";
    paused_ = false;
    ++resumes_;
  }

  void note_queue(int fd) {
    const ssize_t pending = sock_pending(fd);
    ASSERT_GE(pending, 0);
    max_pending_ = std::max(max_pending_, static_cast<std::size_t>(pending));
    EXPECT_LE(static_cast<std::size_t>(pending), high_ + kReadBuffer);
    if (static_cast<std::size_t>(pending) > high_ && !paused_) {
      paused_ = true;
      ++pauses_;
    }
  }

  void on_close(struct Reactor* r, int fd) override {
    OneClientFixture::on_close(r, fd);
    if (fd == server_) close_reason_ = sock_close_reason();
  }

  // Connects the client, with the given watermarks on the server side (0, 0: the reactor's,
  // which high_/low_ must then hold), and prepares `total` bytes to send.
  void start(std::size_t total, std::size_t high, std::size_t low) {
    connect_client(kSmallBuffer);
    ASSERT_GE(server_, 0);
    testing_support::set_sndbuf(client_, kSmallBuffer);
    if (high) {
      ASSERT_EQ(sock_set_watermarks(server_, high, low), 0);
    }
    data_ = pattern(total, 7);
  }

  // Sends what the client's kernel takes now.
  void send_more() {
    while (sent_ < data_.size()) {
      const std::size_t chunk = std::min<std::size_t>(64 * 1024, data_.size() - sent_);
      const ssize_t n = send(client_, data_.data() + sent_, chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
      client_blocked_ = n < 0;
      if (n < 0) {
        EXPECT_EQ(errno, EAGAIN);
        return;
      }
      sent_ += static_cast<std::size_t>(n);
    }
  }

  void check_queue() {
    if (!server_closes_) note_queue(server_);
  }

  // The client only sends: the queue passes the high watermark and reading pauses. Then it
  // goes on sending into the room the server's last reads made, until the kernel buffers are
  // full (or everything is sent): every segment is an edge for the server, yet on_data is not
  // called. Returns how many on_data calls there were.
  int send_until_paused() {
    int calls = -1;
    [&] {
      ASSERT_TRUE(run_until(&r_, [&] {
        if (paused_) return true;
        send_more();
        check_queue();
        return false;
      })) << "never paused; most queued: " << max_pending_;
      calls = data_calls_;
      const std::size_t sent_at_pause = sent_;
      ASSERT_TRUE(run_until(&r_, [&] {
        send_more();
        check_queue();
        return (sent_ > sent_at_pause && client_blocked_) || sent_ == data_.size();
      }));
      run_iterations(20);
      check_queue();
      if (sent_at_pause < data_.size()) {
        EXPECT_GT(sent_, sent_at_pause) << "nothing arrived while paused";
      }
      EXPECT_EQ(data_calls_, calls);
      EXPECT_TRUE(paused_);
      EXPECT_EQ(resumes_, 0);
    }();
    return calls;
  }

  // The client reads (and sends the rest): the queue drains to the low watermark, on_ready
  // runs, reading resumes, and everything comes back in order.
  void read_everything_back(int calls_at_pause) {
    std::string got;
    ASSERT_TRUE(run_until(&r_, [&] {
      send_more();
      testing_support::drain(client_, &got);
      check_queue();
      return got.size() >= data_.size() || server_closes_;
    })) << "echoed " << got.size() << " of " << data_.size();
    EXPECT_GE(resumes_, 1);
    EXPECT_EQ(resumes_, pauses_ - (paused_ ? 1 : 0));
    EXPECT_GT(data_calls_, calls_at_pause);
    EXPECT_GE(readies_, resumes_);
    EXPECT_EQ(got.size(), data_.size());
    EXPECT_EQ(testing_support::first_difference(got, data_), data_.size());
    EXPECT_GT(max_pending_, high_);
    EXPECT_LE(max_pending_, high_ + kReadBuffer);
  }

  std::size_t high_ = std::size_t{1} << 20;
  std::size_t low_ = high_ / 4;
  bool paused_ = false;
  int data_calls_ = 0, readies_ = 0, pauses_ = 0, resumes_ = 0;
  std::size_t max_pending_ = 0;
  std::size_t read_ = 0;  // bytes the server read
  SockCloseReason close_reason_ = SOCK_CLOSE_LOCAL;
  std::string data_;
  std::size_t sent_ = 0;
  bool client_blocked_ = false;
};

TEST_F(EchoTest, SetWatermarksPauseReadingForAClientThatDoesNotReadAndResumeAfterDrain) {
  high_ = 64 * 1024;
  low_ = 16 * 1024;
  start(1024 * 1024, high_, low_);
  const int calls = send_until_paused();
  read_everything_back(calls);
  EXPECT_EQ(server_closes_, 0);
  EXPECT_EQ(sock_pending(server_), 0);
}

TEST_F(EchoTest, DefaultWatermarksAreOneMebibyteAndAQuarterOfIt) {
  start(3 * 1024 * 1024, 0, 0);
  const int calls = send_until_paused();
  read_everything_back(calls);
  EXPECT_EQ(server_closes_, 0);
  EXPECT_EQ(sock_pending(server_), 0);
}

TEST_F(EchoTest, HalfCloseWhilePausedLosesNothingAndClosesWithPeer) {
  // Everything fits in the kernel buffers once reading has paused, so the client sends it all
  // and shuts down its side: the EOF waits behind the paused input.
  high_ = 16 * 1024;
  low_ = 4 * 1024;
  start(64 * 1024, high_, low_);
  const int calls = send_until_paused();
  ASSERT_EQ(sent_, data_.size());
  ASSERT_EQ(shutdown(client_, SHUT_WR), 0);
  run_iterations(20);
  EXPECT_EQ(data_calls_, calls);
  EXPECT_EQ(server_closes_, 0);
  read_everything_back(calls);
  std::string rest;
  ASSERT_TRUE(run_until(&r_, [&] { return !testing_support::drain(client_, &rest); }));
  EXPECT_EQ(rest, "");
  EXPECT_EQ(server_closes_, 1);
  EXPECT_EQ(close_reason_, SOCK_CLOSE_PEER);
}

TEST_F(EchoTest, PeerResetWhilePausedClosesWithErrorWithoutOnData) {
  high_ = 64 * 1024;
  low_ = 16 * 1024;
  start(1024 * 1024, high_, low_);
  const int calls = send_until_paused();
  reset_client();
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ > 0; }));
  settle();
  EXPECT_EQ(server_closes_, 1);
  EXPECT_EQ(close_reason_, SOCK_CLOSE_ERROR);
  EXPECT_EQ(data_calls_, calls);
}

TEST_F(EchoTest, WatermarksDoNotPassToTheNextConnectionOnTheSameFd) {
  // The first connection pauses above 100 bytes; the next one on the same fd number gets the
  // reactor's megabyte, so 64 KB stuck in its queue do not stop it from reading.
  connect_client(kSmallBuffer);
  ASSERT_GE(server_, 0);
  ASSERT_EQ(sock_set_watermarks(server_, 100, 10), 0);
  const int first = server_;
  close(client_);
  client_ = -1;
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ > 0; }));
  connect_client(kSmallBuffer);
  ASSERT_EQ(server_, first) << "the number was not reused; the test proves nothing";
  const std::string blob = pattern(64 * 1024, 8);
  ASSERT_EQ(sock_write(server_, blob.data(), blob.size()), 0);
  const std::size_t read_before = read_;
  testing_support::write_all(client_, "x");
  ASSERT_TRUE(run_until(&r_, [&] { return read_ > read_before; }, std::chrono::seconds(2)))
      << "reading paused: the old connection's watermarks applied";
  EXPECT_GT(sock_pending(server_), 100);
}

TEST_F(EchoTest, WatermarksAreValidated) {
  connect_client();
  ASSERT_GE(server_, 0);
  EXPECT_EQ(sock_set_watermarks(server_, 1000, 2000), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(sock_set_watermarks(server_, 0, 10), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(sock_set_watermarks(-1, 1000, 10), -1);
  EXPECT_EQ(errno, EBADF);
  EXPECT_EQ(sock_pending(-1), -1);
  EXPECT_EQ(errno, EBADF);
  EXPECT_EQ(sock_set_watermarks(server_, 0, 0), 0);
  EXPECT_EQ(sock_pending(server_), 0);
  ReactorLimits bad{};
  bad.high_watermark = 1000;
  bad.low_watermark = 2000;
  EXPECT_EQ(reactor_set_limits(&r_, &bad), -1);
  EXPECT_EQ(errno, EINVAL);
  bad.high_watermark = 0;  // the default high, 1 MiB, in effect
  bad.low_watermark = 2 * 1024 * 1024;
  EXPECT_EQ(reactor_set_limits(&r_, &bad), -1);
  EXPECT_EQ(errno, EINVAL);
}

// on_ready once a pause ends, written to and closed in that callback: all it writes before
// the close goes out. It ran in the middle of the flush step, whose close check then freed
// what the kernel had not taken of that write, and came twice when the kernel had also
// refused the queue before.
class ReadyAfterPauseTest : public testing_support::OneClientFixture {
 protected:
  void on_ready(struct Reactor* r, int fd) override {
    ++ready_calls_;
    if (fd == server_) pending_at_ready_ = sock_pending(fd);
    if (fd != server_ || !write_tail_ || wrote_tail_) return;
    wrote_tail_ = true;
    EXPECT_EQ(sock_write(fd, tail_.data(), tail_.size()), 0);  // more than the kernel takes
    sock_close(r, fd);
  }
  int ready_calls_ = 0;
  ssize_t pending_at_ready_ = -1;
  bool write_tail_ = true;  // and close, from on_ready
  bool wrote_tail_ = false;
  const std::string head_ = pattern(256 * 1024, 5);
  const std::string tail_ = pattern(256 * 1024, 6);
};

TEST_F(ReadyAfterPauseTest, WhatOnReadyWritesBeforeClosingIsSentAndOnReadyComesOnce) {
  connect_client(kSmallBuffer);
  ASSERT_EQ(sock_set_watermarks(server_, 100, 10), 0);
  ASSERT_EQ(sock_write(server_, head_.data(), head_.size()), 0);  // mostly queued: paused
  std::string got;
  ASSERT_TRUE(run_until(&r_, [&] { return !testing_support::drain(client_, &got); }));
  EXPECT_EQ(got.size(), head_.size() + tail_.size());
  EXPECT_TRUE(got == head_ + tail_) << "first difference at "
                                    << testing_support::first_difference(got, head_ + tail_);
  EXPECT_EQ(ready_calls_, 1);
  EXPECT_EQ(server_closes_, 1);
}

// A connection's own high watermark with a low of 0 resumes once its queue is empty: it
// resumed at the reactor's low (256 KiB), far above this high, at once.
TEST_F(ReadyAfterPauseTest, OwnHighWithLowZeroResumesOnceTheQueueIsEmpty) {
  connect_client(kSmallBuffer);
  ASSERT_EQ(sock_set_watermarks(server_, 4096, 0), 0);
  write_tail_ = false;
  ASSERT_EQ(sock_write(server_, head_.data(), head_.size()), 0);  // mostly queued: paused
  ASSERT_GT(sock_pending(server_), 4096);
  std::string got;
  ASSERT_TRUE(run_until(&r_, [&] {
    testing_support::drain(client_, &got);
    return ready_calls_ > 0;
  }));
  EXPECT_EQ(pending_at_ready_, 0);
}

// The queue drained by the application's own sock_flush calls (the client reading between
// them, the reactor not run): the pause, or the kernel's refusal, that promised an on_ready
// ended inside sock_flush, which cleared it without the callback, and no later edge brought
// it. It now comes at the next flush step.
TEST_F(ReadyAfterPauseTest, APauseOrARefusalThatEndsInsideSockFlushStillGetsItsOnReady) {
  write_tail_ = false;
  for (const std::size_t high : {std::size_t{4096}, std::size_t{0}}) {  // 0: no pause, EAGAIN
    SCOPED_TRACE(high ? "paused" : "refused by the kernel");
    connect_client(kSmallBuffer);
    if (high) {
      ASSERT_EQ(sock_set_watermarks(server_, high, 0), 0);
    }
    ready_calls_ = 0;
    ASSERT_EQ(sock_write(server_, head_.data(), head_.size()), 0);
    ASSERT_GT(sock_pending(server_), 4096);
    std::string got;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (sock_pending(server_) > 0 && std::chrono::steady_clock::now() < give_up) {
      testing_support::drain(client_, &got);
      ASSERT_GE(sock_flush(server_), 0);
    }
    ASSERT_EQ(sock_pending(server_), 0);
    EXPECT_EQ(ready_calls_, 0) << "on_ready ran inside sock_flush";
    EXPECT_TRUE(run_until(&r_, [&] {
      testing_support::drain(client_, &got);
      return ready_calls_ > 0 && got.size() == head_.size();
    })) << "no on_ready after the queue drained";
    EXPECT_EQ(ready_calls_, 1);
    EXPECT_TRUE(got == head_);
    close(client_);
    client_ = -1;
    ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ > 0; }));
    server_closes_ = 0;
  }
}

// ---------------------------------------------------------------------------------------
// The memory budget

class BudgetTest : public testing_support::ServerFixture {
 protected:
  static constexpr uint64_t kBudgetPackets = 8;

  void SetUp() override {
    ServerFixture::SetUp();
    ReactorLimits limits{};
    limits.memory_budget = kBudgetPackets * sizeof(Packet);
    ASSERT_EQ(reactor_set_limits(&r_, &limits), 0);
  }

  void TearDown() override {
    // The hook captures the test body's locals, gone by now, and the stop below still runs
    // on_data (the clients' EOFs).
    data_hook_ = nullptr;
    for (const int c : clients_) close(c);
    ServerFixture::TearDown();
  }

  // A client that does not read (yet), with small buffers on both ends. Returns the server side.
  int open_connection() {
    int server = -1;
    clients_.push_back(connect_and_accept(&server, kSmallBuffer));
    if (server >= 0) testing_support::set_sndbuf(server, kSmallBuffer);
    return server;
  }

  void on_connection_data(int fd) override {
    if (data_hook_) {
      data_hook_(fd);
    } else {
      ServerFixture::on_connection_data(fd);
    }
  }

  uint64_t outstanding() { return pool_stats().outstanding; }

  // Runs the reactor while `client` is read, until it has `size` bytes; the pool's bound
  // is checked on every iteration.
  bool receive(int client, std::string* got, std::size_t size) {
    return run_until(&r_, [&] {
      EXPECT_LE(outstanding(), kBudgetPackets);
      testing_support::drain(client, got);
      return got->size() >= size;
    });
  }

  std::vector<int> clients_;
  std::function<void(int)> data_hook_;
};

TEST_F(BudgetTest, WritesBeyondTheBudgetFailWithEnobufsQueueNothingAndSucceedOnceMemoryFrees) {
  const int a = open_connection();
  const int b = open_connection();
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  const std::string a_data = pattern(1024 * 1024, 1);
  const std::string b_data = pattern(64 * 1024, 2);

  // Fill the budget through `a`: the reactor does not run, so nothing leaves the queue.
  constexpr std::size_t kWrite = 10000;
  std::size_t a_queued = 0;
  int err = 0;
  for (;;) {
    if (sock_write(a, a_data.data() + a_queued, kWrite) < 0) {
      err = errno;
      break;
    }
    a_queued += kWrite;
    ASSERT_LE(outstanding(), kBudgetPackets);
  }
  EXPECT_EQ(err, ENOBUFS);
  EXPECT_EQ(outstanding(), kBudgetPackets);
  // The first write found a's queue empty and went straight to the kernel (no packet); all
  // later ones queued.
  const std::size_t a_direct = a_queued - static_cast<std::size_t>(sock_pending(a));
  EXPECT_LE(a_direct, kWrite);
  EXPECT_GT(a_queued - a_direct, (kBudgetPackets - 1) * BUFFER_PACKET_SIZE);

  // All or nothing, whatever the write's kind and size, on any connection of the reactor.
  EXPECT_EQ(sock_write(a, a_data.data() + a_queued, 100000), -1);
  EXPECT_EQ(errno, ENOBUFS);
  void* moved = std::malloc(100);
  ASSERT_NE(moved, nullptr);
  std::memcpy(moved, a_data.data() + a_queued, 100);
  EXPECT_EQ(sock_write2(.fd = a, .buffer = moved, .length = 100, .move = 1), -1);  // freed
  EXPECT_EQ(errno, ENOBUFS);
  // Even b's first write, which could go straight to the kernel, is refused: under a budget
  // that shortcut needs room to queue the whole write, so that ENOBUFS means nothing was sent.
  EXPECT_EQ(sock_write(b, b_data.data(), 1), -1);
  EXPECT_EQ(errno, ENOBUFS);
  EXPECT_EQ(sock_pending(a), static_cast<ssize_t>(a_queued - a_direct));
  EXPECT_EQ(sock_pending(b), 0);
  EXPECT_EQ(outstanding(), kBudgetPackets);
  // A refused write is not a failure of the connection.
  EXPECT_GE(sock_status(a), 0);
  EXPECT_GE(sock_status(b), 0);

  // a's client reads: exactly the writes that returned 0 arrive, and a's packets return.
  std::string a_got;
  ASSERT_TRUE(receive(clients_[0], &a_got, a_queued));
  settle();
  testing_support::drain(clients_[0], &a_got);
  EXPECT_EQ(a_got.size(), a_queued);
  EXPECT_EQ(testing_support::first_difference(a_got, a_data), a_queued);
  EXPECT_EQ(sock_pending(a), 0);
  EXPECT_EQ(outstanding(), 0u);

  // Memory is free again: b writes more than the budget's worth in budget-sized steps while
  // its client reads, and a writes again.
  std::string b_got;
  for (std::size_t off = 0; off < b_data.size(); off += kBudgetPackets * kWrite / 2) {
    const std::size_t n = std::min(kBudgetPackets * kWrite / 2, b_data.size() - off);
    ASSERT_EQ(sock_write(b, b_data.data() + off, n), 0) << "at " << off << ": " << errno;
    ASSERT_TRUE(receive(clients_[1], &b_got, off + n));
  }
  EXPECT_EQ(b_got, b_data);
  ASSERT_EQ(sock_write(a, a_data.data() + a_queued, kWrite), 0);
  ASSERT_TRUE(receive(clients_[0], &a_got, a_queued + kWrite));
  EXPECT_EQ(testing_support::first_difference(a_got, a_data), a_queued + kWrite);

  EXPECT_LE(pool_stats().high_water, kBudgetPackets);
  EXPECT_GE(sock_status(a), 0);
  EXPECT_GE(sock_status(b), 0);
  EXPECT_TRUE(closed_.empty());
}

// A budget below one packet's size is one packet: as a packet count it rounded down to 0,
// which the pool reads as "no bound".
TEST_F(BudgetTest, ABudgetSmallerThanOnePacketHoldsOnePacket) {
  ReactorLimits limits{};
  limits.memory_budget = sizeof(Packet) / 2;
  ASSERT_EQ(reactor_set_limits(&r_, &limits), 0);
  const int a = open_connection();
  ASSERT_GE(a, 0);
  const std::string data = pattern(10000, 3);
  int rc = 0;
  for (int i = 0; i < 1000 && rc == 0; ++i) rc = sock_write(a, data.data(), data.size());
  EXPECT_EQ(rc, -1) << "10 MB queued for a client that reads nothing";
  EXPECT_EQ(errno, ENOBUFS);
  EXPECT_EQ(outstanding(), 1u);
}

// Writes posted from another thread returned 0 ("queued") before the owner tried to queue
// them: one refused there (the budget spent) must not leave a gap that later ones close over.
// The connection fails instead, so its client gets an exact prefix of the stream and then the
// end of the connection.
TEST_F(BudgetTest, APostedWriteTheBudgetRefusesFailsTheConnectionInsteadOfLeavingAGap) {
  const int a = open_connection();
  ASSERT_GE(a, 0);
  constexpr std::size_t kChunk = 16 * 1024;
  constexpr std::size_t kChunks = 4 * kBudgetPackets;  // far past the budget
  const std::string data = pattern(kChunk * kChunks, 4);
  std::thread poster([&] {
    for (std::size_t i = 0; i < kChunks; ++i) {
      EXPECT_EQ(sock_write(a, data.data() + i * kChunk, kChunk), 0) << "posted: queued";
    }
  });
  poster.join();
  ASSERT_TRUE(run_until(&r_, [&] { return !closed_.empty(); }))
      << "the writes past the budget were dropped and the connection went on";
  EXPECT_EQ(closed_.front(), a);
  std::string got;
  const int client = clients_[0];
  ASSERT_TRUE(run_until(&r_, [&] { return !testing_support::drain(client, &got); }));
  EXPECT_LT(got.size(), data.size());
  EXPECT_EQ(testing_support::first_difference(got, data), got.size()) << "a gap or wrong bytes";
  EXPECT_EQ(outstanding(), 0u);
}

TEST_F(BudgetTest, EchoServerUnderTheBudgetNeverHoldsMorePacketsThanIt) {
  // Four clients that send and never read, against an echo server whose writes start failing
  // once the shared budget is spent: the pool never passes it, and refused echoes are counted.
  // (Reading pauses only at the per-connection high watermark, set above what the budget
  // allows, so the budget is what stops the queues here.)
  int refused = 0, refused_errno = 0;
  std::size_t echoed = 0;
  data_hook_ = [&](int fd) {
    char buf[kReadBuffer];
    ssize_t n;
    while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
      const ssize_t before = sock_pending(fd);
      if (sock_write(fd, buf, static_cast<std::size_t>(n)) == 0) {
        echoed += static_cast<std::size_t>(n);
      } else {
        ++refused;
        refused_errno = errno;
        EXPECT_EQ(sock_pending(fd), before) << "a refused write queued bytes";
      }
      EXPECT_LE(outstanding(), kBudgetPackets);
    }
  };
  int servers[4];
  for (int& s : servers) {
    s = open_connection();
    ASSERT_GE(s, 0);
  }
  const std::string data = pattern(256 * 1024, 5);
  std::size_t sent[4] = {};
  ASSERT_TRUE(run_until(&r_, [&] {
    for (int i = 0; i < 4; ++i) {
      const ssize_t n = send(clients_[i], data.data() + sent[i], data.size() - sent[i],
                             MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) sent[i] += static_cast<std::size_t>(n);
    }
    EXPECT_LE(outstanding(), kBudgetPackets);
    return refused > 0;
  }));
  EXPECT_EQ(refused_errno, ENOBUFS);
  EXPECT_GT(echoed, 0u);
  EXPECT_LE(pool_stats().high_water, kBudgetPackets);
  for (const int s : servers) EXPECT_GE(sock_status(s), 0);
}

}  // namespace

namespace {

// The per-shard count (sock_pool_stats().queued_bytes) is the sum of the connections' own
// (sock_pending) through writes, partial flushes and closes.
TEST_F(BudgetTest, ReactorQueuedBytesAreTheSumOfItsConnectionsPendingBytes) {
  ReactorLimits unlimited{};
  ASSERT_EQ(reactor_set_limits(&r_, &unlimited), 0);
  const int a = open_connection();
  const int b = open_connection();
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  const std::string data = testing_support::pattern(300 * 1024, 91);
  ASSERT_EQ(sock_write(a, data.data(), data.size()), 0);
  ASSERT_EQ(sock_write(b, data.data(), 1000), 0);
  run_iterations(3);  // flushes: small buffers keep most of it queued
  EXPECT_GT(sock_pending(a), 0);
  EXPECT_EQ(pool_stats().queued_bytes,
            static_cast<uint64_t>(sock_pending(a)) + static_cast<uint64_t>(sock_pending(b)));
  sock_force_close(&r_, a);
  EXPECT_EQ(pool_stats().queued_bytes, static_cast<uint64_t>(sock_pending(b)));
  std::string got;
  ASSERT_TRUE(receive(clients_[1], &got, 1000));
  ASSERT_TRUE(run_until(&r_, [&] { return sock_pending(b) == 0; }));
  EXPECT_EQ(pool_stats().queued_bytes, 0u);
}

}  // namespace
