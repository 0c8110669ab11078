// shards/accept_batch: an accept4 failure other than an empty backlog pauses the listener
// (AcceptPause) rather than ending the batch silently. A listener shut down for reading fails
// every accept4 with EINVAL while it stays readable: without the pause, the reactor would wait
// for a connect's edge that may never come (and a retry at once would spin); with it, the
// listener is tried again once per pause, its wakeups bounded by the pauses.
#include "shards/accept_batch.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <vector>

#include "engine/libreact.h"
#include "shards/accept_pause.h"
#include "tests/testing/loopback.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Server {
  int listener = -1;
  shards::AcceptPause pause;
  int resumes = 0;
  int listener_wakeups = 0;
  std::vector<int> accepted;
};
Server* g_server = nullptr;

void on_data(struct Reactor* r, int fd) {
  Server& s = *g_server;
  if (s.pause.owns(fd)) {
    ++s.resumes;
    s.pause.resume(r);
    return;
  }
  if (fd != s.listener) return;
  ++s.listener_wakeups;
  shards::accept_batch(r, fd, 16, s.pause, [&](int c) { s.accepted.push_back(c); });
}

TEST(AcceptBatchTest, AListenerThatFailsWithAnErrorOtherThanEagainRestsAndIsTriedAgain) {
  Server server;
  g_server = &server;
  struct Reactor r = {};
  r.on_data = on_data;
  const testing_support::Listener l = testing_support::listen_loopback();
  server.listener = l.fd;
  ASSERT_EQ(reactor_add(&r, l.fd), 0);
  ASSERT_TRUE(server.pause.init(&r));
  const int client = testing_support::connect_client(l.port);
  ASSERT_GE(client, 0);
  ASSERT_EQ(shutdown(l.fd, SHUT_RD), 0);  // readable, and every accept4 fails with EINVAL

  const auto end = Clock::now() + std::chrono::seconds(20);
  while (server.resumes < 2 && Clock::now() < end) ASSERT_GE(reactor_review(&r), 0);
  EXPECT_EQ(server.resumes, 2) << "the failed batch did not pause the listener";
  EXPECT_TRUE(server.accepted.empty());
  EXPECT_LE(server.listener_wakeups, server.resumes + 1);

  reactor_stop(&r);
  while (reactor_review(&r) >= 0) {}
  close(client);
  g_server = nullptr;
}

}  // namespace
