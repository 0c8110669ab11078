// Signals that interrupt the shards (failure mode 20 of the research notes, "EINTR
// everywhere"): a handler installed without SA_RESTART, and a thread that sends it to every
// shard thread each millisecond, so epoll_wait (which the kernel never restarts), accept4,
// recv and send keep being interrupted. Nothing may be lost, failed or closed for it: every
// client's stream comes back whole, in order, on a connection that stays open.
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shards/server.h"
#include "tests/testing/loopback.h"

namespace {

std::atomic<long> g_signals{0};
std::atomic<int> g_closed{0};
std::mutex g_threads_mutex;
std::vector<pthread_t> g_shard_threads;  // each shard's thread, recorded by its first on_open

void count_signal(int) { g_signals.fetch_add(1, std::memory_order_relaxed); }

void note_shard_thread(Reactor*, int) {
  const std::lock_guard<std::mutex> lock(g_threads_mutex);
  const pthread_t self = pthread_self();
  const bool known = std::any_of(g_shard_threads.begin(), g_shard_threads.end(),
                                 [&](pthread_t t) { return pthread_equal(t, self); });
  if (!known) g_shard_threads.push_back(self);
}

void echo(Reactor*, int fd) {
  char buf[4096];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    EXPECT_EQ(sock_write(fd, buf, static_cast<size_t>(n)), 0);
  }
}

// SIGUSR1's handler for the test's lifetime, installed without SA_RESTART.
class SignalStormTest : public testing::Test {
 protected:
  void SetUp() override {
    struct sigaction sa {};
    sa.sa_handler = count_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    ASSERT_EQ(sigaction(SIGUSR1, &sa, &old_), 0);
  }
  void TearDown() override { sigaction(SIGUSR1, &old_, nullptr); }

  struct sigaction old_ {};
};

TEST_F(SignalStormTest, EveryStreamComesBackWholeWhileSignalsInterruptTheShards) {
  constexpr int kClients = 20;  // on two reuseport listeners: all on one is 1 in 500,000
  constexpr int kRounds = 40;
  constexpr std::size_t kRoundBytes = 3000;
  for (int mode : {SOCK_ACCEPT_THREAD, SOCK_ACCEPT_REUSEPORT}) {
    SCOPED_TRACE(mode == SOCK_ACCEPT_THREAD ? "acceptor thread" : "reuseport");
    g_closed = 0;
    g_shard_threads.clear();
    SockServer* server = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 2,
                                           .accept_mode = mode, .on_data = echo,
                                           .on_close = [](Reactor*, int) { ++g_closed; },
                                           .on_open = note_shard_thread);
    ASSERT_NE(server, nullptr);
    const long signals_before = g_signals.load();
    std::atomic<bool> stop{false};
    // The storm: a signal to each known shard thread every millisecond (the cadence of the
    // stimulus, not a wait for a condition). The threads live until the server stops, which
    // happens only after this thread is joined.
    std::thread storm([&] {
      while (!stop.load()) {
        {
          const std::lock_guard<std::mutex> lock(g_threads_mutex);
          for (pthread_t t : g_shard_threads) pthread_kill(t, SIGUSR1);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });

    std::vector<int> clients;
    for (int i = 0; i < kClients; ++i) {
      clients.push_back(testing_support::connect_client(sock_server_port(server)));
    }
    // Rounds in lockstep over every client: each round's bytes must come back before the
    // next round is sent, so the shards go back to waiting (and are interrupted there) often.
    std::vector<std::string> sent(kClients), got(kClients);
    for (int i = 0; i < kClients; ++i) sent[i] = testing_support::pattern(kRoundBytes * kRounds, i);
    bool whole = true;
    for (int round = 0; round < kRounds && whole; ++round) {
      for (int i = 0; i < kClients; ++i) {
        testing_support::write_all(clients[i], sent[i].substr(kRoundBytes * round, kRoundBytes));
      }
      const std::size_t want = kRoundBytes * (round + 1);
      const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      for (int i = 0; i < kClients; ++i) {
        while (got[i].size() < want && std::chrono::steady_clock::now() < end) {
          if (!testing_support::drain(clients[i], &got[i])) break;  // closed: fails below
        }
        if (got[i].size() != want) whole = false;
      }
    }
    stop = true;
    storm.join();
    for (int i = 0; i < kClients; ++i) {
      EXPECT_EQ(got[i].size(), sent[i].size()) << "client " << i;
      EXPECT_EQ(testing_support::first_difference(got[i], sent[i]), got[i].size())
          << "client " << i;
    }
    EXPECT_EQ(g_closed.load(), 0) << "a connection closed under the signals";
    {
      const std::lock_guard<std::mutex> lock(g_threads_mutex);
      EXPECT_EQ(g_shard_threads.size(), 2u) << "connections opened on one shard only";
    }
    EXPECT_GT(g_signals.load() - signals_before, 0);
    EXPECT_EQ(sock_server_stop(server), 0);
    EXPECT_EQ(g_closed.load(), kClients);
    for (int c : clients) close(c);
  }
}

}  // namespace
