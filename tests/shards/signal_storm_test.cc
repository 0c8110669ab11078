// Signals that interrupt the shards (failure mode 20 of the research notes, "EINTR
// everywhere"): a handler installed without SA_RESTART, and a thread that sends it to every
// shard thread each millisecond, so the shards' epoll_wait (which the kernel never restarts)
// keeps being interrupted; their sockets are non-blocking, so recv, send and accept4 return
// before a signal can interrupt them (EINTR from those is the fault injection's, in
// tests/engine). The acceptor thread is not signalled: nothing names it. Nothing may be lost,
// failed or closed for it: every client's stream comes back whole, in order, on a connection
// that stays open.
#include <gtest/gtest.h>
#include <poll.h>
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

// Sets the flag and joins the storm thread on every way out of the test's scope (an exception
// from a helper included), before the server stops: no signal reaches a thread that ended.
struct StormStopper {
  std::atomic<bool>& stop;
  std::thread& storm;
  ~StormStopper() {
    stop = true;
    if (storm.joinable()) storm.join();
  }
};

TEST_F(SignalStormTest, EveryStreamComesBackWholeWhileSignalsInterruptTheShards) {
  constexpr int kClients = 20;  // on two reuseport listeners: all on one is 1 in 500,000
  constexpr std::size_t kRoundBytes = 3000;
  // At least this many rounds, and on until this many signals were sent to the shards (a
  // busy machine may run the first rounds before the storm thread gets going).
  constexpr int kMinRounds = 40;
  constexpr long kMinSignals = 200;
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
    StormStopper stopper{stop, storm};

    std::vector<int> clients;
    for (int i = 0; i < kClients; ++i) {
      clients.push_back(testing_support::connect_client(sock_server_port(server)));
    }
    // Rounds in lockstep over every client, each its own bytes (the seed names client and
    // round): a round must come back whole before the next is sent, so the shards go back to
    // waiting (and are interrupted there) often.
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    int rounds = 0;
    bool whole = true;
    while (whole && (rounds < kMinRounds || g_signals.load() - signals_before < kMinSignals) &&
           std::chrono::steady_clock::now() < end) {
      std::vector<std::string> sent(kClients), got(kClients);
      for (int i = 0; i < kClients; ++i) {
        sent[i] = testing_support::pattern(kRoundBytes, static_cast<unsigned>(i * 100000 + rounds));
        testing_support::write_all(clients[i], sent[i]);
      }
      for (int i = 0; i < kClients && whole; ++i) {
        while (got[i].size() < kRoundBytes && std::chrono::steady_clock::now() < end) {
          pollfd p{clients[i], POLLIN, 0};
          poll(&p, 1, 100);
          if (!testing_support::drain(clients[i], &got[i])) break;  // closed: fails below
        }
        EXPECT_EQ(got[i].size(), kRoundBytes) << "client " << i << ", round " << rounds;
        EXPECT_EQ(testing_support::first_difference(got[i], sent[i]), got[i].size())
            << "client " << i << ", round " << rounds;
        whole = got[i] == sent[i];
      }
      ++rounds;
    }
    const long signals = g_signals.load() - signals_before;
    stop = true;
    storm.join();
    EXPECT_GE(rounds, kMinRounds);
    EXPECT_GE(signals, kMinSignals) << "in " << rounds << " rounds";
    EXPECT_EQ(g_closed.load(), 0) << "a connection closed under the signals";
    {
      const std::lock_guard<std::mutex> lock(g_threads_mutex);
      EXPECT_EQ(g_shard_threads.size(), 2u) << "connections opened on one shard only";
    }
    EXPECT_EQ(sock_server_stop(server), 0);
    EXPECT_EQ(g_closed.load(), kClients);
    for (int c : clients) close(c);
  }
}

}  // namespace
