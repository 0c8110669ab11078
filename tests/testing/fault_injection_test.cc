// tests/testing/fault_injection.h: faults reach watched fds only, never lose or invent bytes,
// keep the kernel's promises (an edge after a hidden EAGAIN, a reset that stays reset), follow
// accepted connections until their close, and fail mallocx on the arming thread only.
#include "tests/testing/fault_injection.h"

#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "tests/testing/loopback.h"

// jemalloc's, as the engine's pool calls it (alloc/jemalloc_arena.cc includes the header).
extern "C" void* mallocx(size_t size, int flags);
extern "C" void dallocx(void* ptr, int flags);

namespace {

namespace faults = testing_support::faults;
using faults::Call;

constexpr int kCalls = 200;

faults::Plan plan_for(Call call, double rate, uint64_t seed = 1) {
  faults::Plan plan;
  plan.seed = seed;
  plan.rate[static_cast<std::size_t>(call)] = rate;
  return plan;
}

class FaultInjectionLayerTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pair_), 0); }
  void TearDown() override {
    faults::disarm();
    close(pair_[0]);
    close(pair_[1]);
  }
  int pair_[2] = {-1, -1};
};

TEST_F(FaultInjectionLayerTest, UnwatchedFdsPassThroughWhileArmedAtFullRate) {
  faults::Plan plan;
  plan.rate.fill(1.0);
  plan.fatal_rate = 1.0;
  faults::arm(plan);
  const std::string data = testing_support::pattern(1000, 3);
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_EQ(send(pair_[0], data.data(), data.size(), MSG_NOSIGNAL), 1000);
    char buf[1000];
    ASSERT_EQ(recv(pair_[1], buf, sizeof buf, 0), 1000);
    ASSERT_EQ(std::string(buf, sizeof buf), data);
  }
  EXPECT_EQ(faults::counts().calls[static_cast<std::size_t>(Call::kSend)], 0u);
}

TEST_F(FaultInjectionLayerTest, WatchedSendsFailOrFallShortButDeliverEveryByteInOrder) {
  faults::watch(pair_[0]);
  faults::arm(plan_for(Call::kSend, 0.5));
  const std::string data = testing_support::pattern(64 * 1024, 4);
  std::string got;
  std::size_t sent = 0;
  int shorts = 0, eintr = 0, eagain = 0;
  while (sent < data.size()) {
    const std::size_t asked = std::min<std::size_t>(data.size() - sent, 1000);
    const ssize_t n = send(pair_[0], data.data() + sent, asked, MSG_NOSIGNAL);
    if (n < 0) {
      ASSERT_TRUE(errno == EINTR || errno == EAGAIN) << std::strerror(errno);
      (errno == EINTR ? eintr : eagain)++;
    } else {
      ASSERT_GE(n, 1);
      shorts += static_cast<std::size_t>(n) < asked;
      sent += static_cast<std::size_t>(n);
    }
    testing_support::drain(pair_[1], &got);
  }
  testing_support::drain(pair_[1], &got);
  EXPECT_EQ(got, data);
  EXPECT_GT(shorts, 0);
  EXPECT_GT(eintr, 0);
  EXPECT_GT(eagain, 0);
  const faults::Counts counts = faults::counts();
  EXPECT_EQ(counts.faults[static_cast<std::size_t>(Call::kSend)],
            static_cast<uint64_t>(shorts + eintr + eagain));
  EXPECT_EQ(faults::fd_record(pair_[0]).fatal_errno, 0);
}

TEST_F(FaultInjectionLayerTest, InjectedEagainIsFollowedByAnEdgeForWhatWasReady) {
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  ASSERT_GE(ep, 0);
  faults::watch(pair_[1]);
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLET;
  ev.data.u64 = 42;
  ASSERT_EQ(epoll_ctl(ep, EPOLL_CTL_ADD, pair_[1], &ev), 0);
  ASSERT_EQ(send(pair_[0], "abc", 3, MSG_NOSIGNAL), 3);
  epoll_event out{};
  ASSERT_EQ(epoll_wait(ep, &out, 1, 0), 1);
  ASSERT_EQ(epoll_wait(ep, &out, 1, 0), 0) << "edge-triggered: one report per edge";
  faults::arm(plan_for(Call::kRecv, 1.0, 7));
  char buf[3];
  ssize_t n;
  while ((n = recv(pair_[1], buf, sizeof buf, 0)) < 0 && errno == EINTR) {}
  faults::disarm();
  if (n < 0) {
    ASSERT_EQ(errno, EAGAIN);
  } else {
    ASSERT_LT(n, 3);  // short: the rest still waits, which must raise an edge too
  }
  ASSERT_EQ(epoll_wait(ep, &out, 1, 0), 1) << "the hidden input must be reported again";
  EXPECT_EQ(out.data.u64, 42u);
  EXPECT_TRUE(out.events & EPOLLIN);
  close(ep);
}

TEST_F(FaultInjectionLayerTest, InjectedResetLeavesTheSocketReset) {
  faults::watch(pair_[0]);
  faults::Plan plan;
  plan.fatal_rate = 1.0;
  char buf[16];
  // Seeds until the first fatal fault drawn is ECONNRESET (the others leave the socket alone).
  for (uint64_t seed = 1; faults::fd_record(pair_[0]).fatal_errno != ECONNRESET; ++seed) {
    ASSERT_LT(seed, 100u);
    faults::watch(pair_[0]);  // a fresh record
    plan.seed = seed;
    faults::arm(plan);
    ASSERT_EQ(recv(pair_[0], buf, sizeof buf, 0), -1);
    faults::disarm();
  }
  EXPECT_EQ(recv(pair_[0], buf, sizeof buf, 0), 0) << "a reset socket reads as closed";
  EXPECT_EQ(send(pair_[0], "x", 1, MSG_NOSIGNAL), -1);
  EXPECT_EQ(errno, EPIPE);
}

TEST(FaultInjectionAcceptTest, AcceptedConnectionsAreWatchedUntilClosed) {
  const testing_support::Listener l = testing_support::listen_loopback();
  const int client = testing_support::connect_client(l.port);
  faults::watch(l.fd);
  const std::size_t watched = faults::watched_count();
  faults::arm(plan_for(Call::kAccept4, 0));
  const int fd = accept4(l.fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(faults::counts().accepted, 1u);
  EXPECT_EQ(faults::watched_count(), watched + 1);
  faults::disarm();
  close(fd);
  EXPECT_EQ(faults::watched_count(), watched);
  close(client);
  close(l.fd);
  EXPECT_EQ(faults::watched_count(), watched - 1);
}

TEST(FaultInjectionMallocxTest, FailsOnTheArmingThreadOnly) {
  faults::arm(plan_for(Call::kMallocx, 1.0));
  errno = 0;
  EXPECT_EQ(mallocx(4096, 0), nullptr);
  EXPECT_EQ(errno, ENOMEM);
  void* elsewhere = nullptr;
  std::thread([&] { elsewhere = mallocx(4096, 0); }).join();
  faults::disarm();
  EXPECT_NE(elsewhere, nullptr);
  dallocx(elsewhere, 0);
  void* p = mallocx(4096, 0);
  EXPECT_NE(p, nullptr) << "disarmed";
  dallocx(p, 0);
}

}  // namespace
