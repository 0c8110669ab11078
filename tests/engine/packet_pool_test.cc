// The packet pool behind sock_checkout_packet()/sock_write(): what one packet really costs in
// jemalloc memory, the counters sock_pool_stats() reports, that idle connections hold no
// packets, that the fd table is paged, and that packets freed on other threads go home.
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/fd_table.h"
#include "engine/libreact.h"
#include "engine/libsock.h"
#include "engine/reactor.h"
#include "tests/testing/loopback.h"
#include "tests/testing/reactor_fixture.h"
#include "tests/testing/run_until.h"

namespace {

using testing_support::run_until;

constexpr double kPacketTarget = 17 * 1024;  // BUFFER_PACKET_SIZE's default: 16 KB + 1 KB headroom
constexpr double kTolerance = 0.05;

class PacketPoolTest : public testing_support::ReactorFixture {
 protected:
  void SetUp() override {
    ReactorFixture::SetUp();
    ASSERT_EQ(reactor_init(&r_), 0);
  }

  void on_data(struct Reactor* r, int fd) override {
    if (fd == task_fd_) {
      if (task_) std::exchange(task_, nullptr)();
      return;
    }
    if (fd == listener_) {
      int client;
      while ((client = sock_accept(r, fd)) >= 0) accepted_.push_back(client);
      return;
    }
    // A connection: answer each 4-byte "ping" with "pong".
    char buf[64];
    ssize_t n;
    while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
      for (ssize_t i = 0; i + 4 <= n; i += 4) EXPECT_EQ(sock_write(fd, "pong", 4), 0);
    }
  }

  void on_close(struct Reactor*, int fd) override {
    if (fd != task_fd_) ++closed_;
  }

  // Runs fn inside a reactor callback (on_data of a readable eventfd), where
  // sock_checkout_packet() draws from this reactor's pool: pool_for() picks the pool of the
  // reactor whose run_once() is executing on the calling thread.
  void in_callback(std::function<void()> fn) {
    task_ = std::move(fn);
    task_fd_ = eventfd(1, EFD_NONBLOCK | EFD_CLOEXEC);
    ASSERT_GE(task_fd_, 0);
    ASSERT_EQ(reactor_add(&r_, task_fd_), 0);
    ASSERT_TRUE(run_until(&r_, [&] { return !task_; }));
    reactor_close(&r_, task_fd_);
    task_fd_ = -1;
  }

  int listen() {
    const auto l = testing_support::listen_loopback();
    listener_ = l.fd;
    EXPECT_EQ(reactor_add(&r_, l.fd), 0);
    return l.port;
  }

  int task_fd_ = -1;
  std::function<void()> task_;
  int listener_ = -1;
  std::vector<int> accepted_;
  int closed_ = 0;
};

TEST(PacketFootprintTest, OnePacketCostsWithinFivePercentOf17KB) {
  const std::size_t footprint = sock_packet_footprint();
  std::cout << "sock_packet_footprint() = " << footprint << " bytes (sizeof(struct Packet) = "
            << sizeof(Packet) << ")\n";
  ::testing::Test::RecordProperty("packet_footprint_bytes", static_cast<int>(footprint));
  // A packet cannot cost less than itself; a plain malloc per packet would cost 20 KiB.
  EXPECT_GE(footprint, sizeof(Packet));
  EXPECT_NEAR(static_cast<double>(footprint), kPacketTarget, kPacketTarget * kTolerance);
}

TEST_F(PacketPoolTest, JemallocMemoryPerHeldPacketStaysWithinFivePercentOf17KB) {
  constexpr int kHeld = 150;  // 10 whole chunks of 15 packets
  std::vector<Packet*> held;
  in_callback([&] {
    for (int i = 0; i < kHeld; ++i) {
      Packet* p = sock_checkout_packet();
      ASSERT_NE(p, nullptr);
      p->internal_memory[0] = 'x';  // touch it: the memory is really there
      p->internal_memory[BUFFER_PACKET_SIZE - 1] = 'y';
      held.push_back(p);
    }
  });
  ASSERT_EQ(held.size(), static_cast<std::size_t>(kHeld));
  const SockPoolStats s = pool_stats();
  EXPECT_EQ(s.outstanding, static_cast<uint64_t>(kHeld));
  const double per_packet = static_cast<double>(s.slab_bytes) / kHeld;
  std::cout << "pool slab_bytes = " << s.slab_bytes << " for " << kHeld << " packets: "
            << per_packet << " bytes per packet\n";
  ::testing::Test::RecordProperty("slab_bytes_per_packet", static_cast<int>(per_packet));
  EXPECT_NEAR(per_packet, kPacketTarget, kPacketTarget * kTolerance);

  // jemalloc's own accounting of the pool's arena agrees: what it counts as allocated is
  // slab_bytes, and the pages it holds (one padding page per chunk more) stay in budget too.
  const alloc::JemallocArena& arena = engine::Reactor::of(&r_, false)->pool().arena();
  if (const auto allocated = arena.allocated_bytes()) {
    EXPECT_EQ(*allocated, s.slab_bytes);
  }
  if (const auto active = arena.active_bytes()) {
    std::cout << "jemalloc active bytes per packet = " << static_cast<double>(*active) / kHeld
              << "\n";
    EXPECT_NEAR(static_cast<double>(*active) / kHeld, kPacketTarget, kPacketTarget * kTolerance);
  }
  for (Packet* p : held) sock_free_packet(p);
  EXPECT_EQ(pool_stats().outstanding, 0u);
}

TEST_F(PacketPoolTest, CountersTrackCheckoutsReturnsHitsAndMisses) {
  std::vector<Packet*> held;
  // A fresh reactor's pool: the 1st and 16th checkouts need a chunk (15 packets per chunk).
  in_callback([&] {
    for (int i = 0; i < 16; ++i) held.push_back(sock_checkout_packet());
  });
  SockPoolStats s = pool_stats();
  EXPECT_EQ(s.checkouts, 16u);
  EXPECT_EQ(s.returns, 0u);
  EXPECT_EQ(s.misses, 2u);
  EXPECT_EQ(s.hits, 14u);
  EXPECT_EQ(s.outstanding, 16u);
  EXPECT_EQ(s.high_water, 16u);
  ASSERT_EQ(held.size(), 16u);
  for (Packet* p : held) {
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(p->buffer, p->internal_memory);
    EXPECT_EQ(p->length, 0);
    EXPECT_EQ(p->metadata.next, nullptr);
  }

  // Six freed one by one, ten as one chain.
  for (int i = 0; i < 6; ++i) sock_free_packet(held[i]);
  for (int i = 6; i < 15; ++i) held[i]->metadata.next = held[i + 1];
  sock_free_packet(held[6]);
  s = pool_stats();
  EXPECT_EQ(s.checkouts, 16u);
  EXPECT_EQ(s.returns, 16u);
  EXPECT_EQ(s.outstanding, s.checkouts - s.returns);
  EXPECT_EQ(s.high_water, 16u);

  // One empty chunk is kept: the next checkout is a hit.
  in_callback([&] { sock_free_packet(sock_checkout_packet()); });
  s = pool_stats();
  EXPECT_EQ(s.checkouts, 17u);
  EXPECT_EQ(s.returns, 17u);
  EXPECT_EQ(s.hits, 15u);
  EXPECT_EQ(s.misses, 2u);
  EXPECT_EQ(s.outstanding, 0u);

  // A write takes its packets from the fd's reactor pool and returns them once sent. (The
  // first write of a loop iteration to an empty queue goes straight to the kernel without a
  // packet; the data follows it, so it is queued.)
  const int port = listen();
  const int client = testing_support::connect_client(port);
  ASSERT_TRUE(run_until(&r_, [&] { return accepted_.size() == 1; }));
  const std::string data = testing_support::pattern(100 * 1024, 3);
  ASSERT_EQ(sock_write(accepted_[0], "<", 1), 0);
  EXPECT_EQ(pool_stats().checkouts, 17u);
  ASSERT_EQ(sock_write(accepted_[0], data.data(), data.size()), 0);
  const uint64_t packets = (data.size() + BUFFER_PACKET_SIZE - 1) / BUFFER_PACKET_SIZE;  // 6
  s = pool_stats();
  EXPECT_EQ(s.checkouts, 17u + packets);
  EXPECT_EQ(s.outstanding, packets);
  EXPECT_EQ(s.outstanding, s.checkouts - s.returns);
  EXPECT_EQ(s.high_water, 16u);
  std::string got;
  ASSERT_TRUE(read_at_least(client, &got, 1 + data.size()));
  EXPECT_TRUE(got == "<" + data);
  s = pool_stats();
  EXPECT_EQ(s.returns, 17u + packets);
  EXPECT_EQ(s.outstanding, 0u);
  close(client);
  ASSERT_TRUE(run_until(&r_, [&] { return closed_ == 1; }));
}

TEST_F(PacketPoolTest, ThousandIdleConnectionsHoldNoPackets) {
  constexpr int kConnections = 1000;
  // Each connection costs two fds here (client and server in one process).
  ASSERT_GE(sock_max_capacity(), 2 * kConnections + 64) << "RLIMIT_NOFILE too low for this test";
  const int port = listen();
  std::vector<int> clients;
  while (clients.size() < kConnections) {  // in batches, so the backlog never overflows
    for (int i = 0; i < 100; ++i) clients.push_back(testing_support::connect_client(port));
    ASSERT_TRUE(run_until(&r_, [&] { return accepted_.size() == clients.size(); }));
  }
  for (const int c : clients) testing_support::write_all(c, "ping");
  std::vector<std::string> answers(clients.size());
  std::size_t answered = 0;
  ASSERT_TRUE(run_until(&r_, [&] {
    for (std::size_t i = 0; i < clients.size(); ++i) {
      if (answers[i].size() < 4) {
        testing_support::drain(clients[i], &answers[i]);
        if (answers[i].size() == 4) ++answered;
      }
    }
    return answered == clients.size();
  }));
  for (const std::string& a : answers) ASSERT_EQ(a, "pong");

  // Every response went straight to the kernel (each was its connection's first write with an
  // empty queue), so no packet was used, and no connection holds a byte of queue or any
  // per-connection extra state (layers, buffered input, own timeouts) now.
  const SockPoolStats s = pool_stats();
  EXPECT_EQ(s.checkouts, 0u);
  EXPECT_EQ(s.returns, 0u);
  EXPECT_EQ(s.outstanding, 0u);
  for (const int fd : accepted_) {
    const engine::FdSlot* slot = engine::fd_slot(fd);
    ASSERT_NE(slot, nullptr);
    EXPECT_EQ(slot->head, nullptr);
    EXPECT_EQ(slot->queued_bytes, 0u);
    EXPECT_EQ(slot->extra, nullptr);
  }
  for (const int c : clients) close(c);
  ASSERT_TRUE(run_until(&r_, [&] { return closed_ == kConnections; }));
}

// Pages of the fd table allocated so far.
std::size_t fd_table_pages() {
  std::size_t slots = 0;
  engine::fd_table_for_each([&](int, engine::FdSlot&) { ++slots; });
  return slots / engine::kSlotsPerPage;
}

TEST(FdTableTest, PagesAreAllocatedOnDemandNeverCapacityTimesEntry) {
  constexpr int kHighFd = 4'000'000;
  static_assert(kHighFd < static_cast<int>(engine::kMaxFds));
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(sock_open(nullptr, fd), 0);
  EXPECT_NE(engine::fd_slot(fd), nullptr);
  EXPECT_EQ(engine::fd_slot(kHighFd), nullptr);  // its page was never allocated
  const std::size_t pages = fd_table_pages();
  EXPECT_GE(pages, 1u);
  // Only the pages of fds in use: this process never held more than a few thousand fds.
  EXPECT_LE(pages, 8u);

  // The seed allocated capacity x entry here; now it only validates the bound.
  const ssize_t capacity = sock_max_capacity();
  ASSERT_GT(capacity, 0);
  if (static_cast<std::size_t>(capacity) <= engine::kMaxFds) {
    EXPECT_EQ(init_socklib(static_cast<std::size_t>(capacity)), 0);
  }
  EXPECT_EQ(init_socklib(engine::kMaxFds), 0);
  EXPECT_EQ(fd_table_pages(), pages);
  EXPECT_EQ(engine::fd_slot(kHighFd), nullptr);
  if (capacity > 8 * static_cast<ssize_t>(engine::kSlotsPerPage)) {
    EXPECT_EQ(engine::fd_slot(static_cast<int>(capacity - 1)), nullptr);
  }
  errno = 0;
  EXPECT_EQ(init_socklib(engine::kMaxFds + 1), -1);
  EXPECT_EQ(errno, EINVAL);

  sock_close(nullptr, fd);
  EXPECT_TRUE(sock_is_closed(fd));
}

TEST_F(PacketPoolTest, PacketFreedOnAnotherThreadReturnsToItsOwnersPool) {
  Packet* p = nullptr;
  in_callback([&] { p = sock_checkout_packet(); });
  ASSERT_NE(p, nullptr);
  SockPoolStats before = pool_stats();
  ASSERT_EQ(before.outstanding, 1u);
  SockPoolStats fallback_before{};
  ASSERT_EQ(sock_pool_stats(nullptr, &fallback_before), 0);

  std::thread([p] { sock_free_packet(p); }).join();
  // Queued for the owner: not counted until the owner drains it, and not in the fallback pool.
  SockPoolStats s = pool_stats();
  EXPECT_EQ(s.returns, before.returns);
  EXPECT_EQ(s.outstanding, 1u);
  SockPoolStats fallback{};
  ASSERT_EQ(sock_pool_stats(nullptr, &fallback), 0);
  EXPECT_EQ(fallback.returns, fallback_before.returns);

  // One review drains the remote returns.
  ASSERT_GE(engine::Reactor::of(&r_, false)->run_once(0), 0);
  s = pool_stats();
  EXPECT_EQ(s.returns, before.returns + 1);
  EXPECT_EQ(s.outstanding, 0u);

  // The freed block is reused by the owner: the next checkout is a hit, not a new chunk.
  in_callback([&] { sock_free_packet(sock_checkout_packet()); });
  s = pool_stats();
  EXPECT_EQ(s.misses, before.misses);
  EXPECT_EQ(s.hits, before.hits + 1);
}

}  // namespace
