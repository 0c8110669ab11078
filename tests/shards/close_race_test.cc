// Closing connections of the sharded server from every side: inside a callback, twice, from
// another thread while the shard is busy, racing the peer's own close, and by stopping the
// server. Each connection's on_open is matched by exactly one on_close (and, in a stop, by one
// on_shutdown), the shards' pools get every packet back, and no fd, thread or pool chunk
// outlives the server.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "alloc/block_pool.h"
#include "engine/libsock.h"
#include "shards/server.h"
#include "tests/testing/loopback.h"
#include "tests/testing/thread_state.h"
#include "tests/testing/wait_for.h"

namespace {

using Clock = std::chrono::steady_clock;
using testing_support::wait_for;


// What the callbacks saw, per connection. A connection is known by its handle (sock_fd2uuid in
// on_open). on_close receives only the fd number, which another shard may have reused by then,
// so it is matched with the connection its own shard opened on that number: (shard, fd) names
// at most one live connection at a time, because all callbacks of a connection run on the
// shard that owns it, one after the other.
struct Conn {
  Reactor* shard = nullptr;
  int fd = -1;
  int peer_port = 0;  // the client's local port: how the test finds its client
  int opens = 0;
  int shutdowns = 0;
  int closes = 0;
  SockCloseReason reason = SOCK_CLOSE_LOCAL;
  ssize_t pending_at_shutdown = -1;  // sock_pending() inside on_shutdown
  ssize_t farewell_result = 1;       // sock_write() of kFarewell inside on_shutdown
};

// Written by on_shutdown when the test asks for it: a stopping server's last word.
constexpr char kFarewell[] = "\n-- server stopping --\n";

struct Tracker {
  std::mutex mu;
  std::map<intptr_t, Conn> conns;
  std::map<std::pair<Reactor*, int>, intptr_t> live;
  int stray_closes = 0;     // on_close for no live connection of that shard
  int stray_shutdowns = 0;  // on_shutdown for no live connection of that shard
  int reopened = 0;         // on_open for a (shard, fd) that was still live
  bool farewell = false;    // on_shutdown writes kFarewell (set before the server starts)
  std::atomic<int> opens{0};
  std::atomic<int> closes{0};
};
Tracker* g = nullptr;

void track_open(Reactor* r, int fd) {
  const intptr_t uuid = sock_fd2uuid(fd);
  {
    std::lock_guard<std::mutex> lock(g->mu);
    Conn& c = g->conns[uuid];
    c.shard = r;
    c.fd = fd;
    c.peer_port = testing_support::peer_port(fd);
    ++c.opens;
    if (!g->live.emplace(std::make_pair(r, fd), uuid).second) ++g->reopened;
  }
  ++g->opens;
}

void track_close(Reactor* r, int fd) {
  {
    std::lock_guard<std::mutex> lock(g->mu);
    const auto it = g->live.find({r, fd});
    if (it == g->live.end()) {
      ++g->stray_closes;
    } else {
      Conn& c = g->conns[it->second];
      ++c.closes;
      c.reason = sock_close_reason();
      g->live.erase(it);
    }
  }
  ++g->closes;
}

void track_shutdown(Reactor* r, int fd) {
  std::lock_guard<std::mutex> lock(g->mu);
  const auto it = g->live.find({r, fd});
  if (it == g->live.end()) {
    ++g->stray_shutdowns;
    return;
  }
  Conn& c = g->conns[it->second];
  ++c.shutdowns;
  c.pending_at_shutdown = sock_pending(fd);
  if (g->farewell) c.farewell_result = sock_write(fd, kFarewell, sizeof kFarewell - 1);
}

// Reads and echoes everything; writes refused once the connection is closing are dropped.
void echo(Reactor*, int fd) {
  char buf[65536];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) sock_write(fd, buf, static_cast<std::size_t>(n));
}

std::size_t count_entries(const char* dir) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}

// A client's side of one connection.
struct Client {
  int fd = -1;
  intptr_t uuid = -1;  // the server side's handle
  int server_fd = -1;
  std::string got;
  bool closed = false;  // EOF or reset seen

  void pump() {
    if (!closed) closed = !testing_support::drain(fd, &got);
  }
};

class CloseRaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g = &tracker_;
    // ThreadSanitizer starts a helper thread of its own along with the program's first thread:
    // have it running before the baseline is counted. A joined thread stays listed in
    // /proc/self/task for a moment after pthread_join returns (the kernel wakes the joiner
    // before it removes the task), so wait for this one to go.
    pid_t tid = 0;
    std::thread([&tid] { tid = testing_support::current_tid(); }).join();
    const std::string task = "/proc/self/task/" + std::to_string(tid);
    ASSERT_TRUE(wait_for([&] { return !std::filesystem::exists(task); }));
    fds_before_ = count_entries("/proc/self/fd");
    threads_before_ = count_entries("/proc/self/task");
    leaked_before_ = alloc::BlockPool::leaked_chunks_total();
  }

  void TearDown() override {
    if (server_) sock_server_stop(server_);
    close_clients();
    g = nullptr;
  }

  // Starts a 2-shard server that tracks every connection. Idle timeouts off: every close in
  // these tests is one the test asked for.
  void start(void (*on_data)(Reactor*, int), int accept_mode = SOCK_ACCEPT_THREAD,
             void (*on_open)(Reactor*, int) = track_open, unsigned stop_timeout_ms = 0) {
    server_ = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 2,
                                .accept_mode = accept_mode, .on_data = on_data,
                                .on_shutdown = track_shutdown, .on_close = track_close,
                                .on_open = on_open, .idle_timeout_ms = SOCK_NO_TIMEOUT,
                                .stop_timeout_ms = stop_timeout_ms);
    ASSERT_NE(server_, nullptr);
  }

  // Connects n clients, waits until the server opened all of them and pairs each with its
  // server side (by the client's port).
  void connect(std::size_t n, int rcvbuf = 0) {
    const int target = g->opens.load() + static_cast<int>(n);
    const std::size_t first = clients_.size();
    for (std::size_t i = 0; i < n; ++i) {
      Client c;
      c.fd = testing_support::connect_client(sock_server_port(server_), rcvbuf);
      clients_.push_back(std::move(c));
    }
    ASSERT_TRUE(wait_for([&] { return g->opens.load() >= target; }));
    std::lock_guard<std::mutex> lock(g->mu);
    for (std::size_t i = first; i < clients_.size(); ++i) {
      const int port = testing_support::local_port(clients_[i].fd);
      for (const auto& [uuid, c] : g->conns) {
        if (c.peer_port == port && c.closes == 0) {
          clients_[i].uuid = uuid;
          clients_[i].server_fd = c.fd;
        }
      }
      ASSERT_GT(clients_[i].uuid, 0) << "client " << i << " has no server side";
    }
  }

  void close_clients() {
    for (Client& c : clients_) {
      if (c.fd >= 0) close(c.fd);
      c.fd = -1;
    }
  }

  // Pumps every client until all saw the server close (EOF or reset).
  bool pump_until_all_closed() {
    return wait_for([&] {
      bool all = true;
      for (Client& c : clients_) {
        c.pump();
        all = all && c.closed;
      }
      return all;
    });
  }

  // Exactly one on_open and one on_close for every connection the server opened, each close
  // for the reason given, and no callback for a connection that was not live.
  void expect_each_closed_once(SockCloseReason reason, bool check_reason = true) {
    ASSERT_TRUE(wait_for([&] { return g->closes.load() >= g->opens.load(); }))
        << g->closes.load() << " of " << g->opens.load() << " closed";
    std::lock_guard<std::mutex> lock(g->mu);
    EXPECT_EQ(g->closes.load(), g->opens.load());
    EXPECT_EQ(g->stray_closes, 0);
    EXPECT_EQ(g->reopened, 0);
    EXPECT_TRUE(g->live.empty());
    for (const auto& [uuid, c] : g->conns) {
      EXPECT_EQ(c.opens, 1) << "uuid " << uuid;
      EXPECT_EQ(c.closes, 1) << "uuid " << uuid;
      if (check_reason) {
        EXPECT_EQ(c.reason, reason) << "uuid " << uuid;
      }
      // The handle no longer names an open connection.
      errno = 0;
      EXPECT_EQ(sock_uuid2fd(uuid), -1) << "uuid " << uuid;
      EXPECT_EQ(errno, EBADF) << "uuid " << uuid;
    }
  }

  // Every packet is back in its shard's pool (packets return right after on_close, so poll).
  void expect_pools_empty() {
    for (int k = 0; k < 2; ++k) {
      SockPoolStats s{};
      EXPECT_TRUE(wait_for([&] {
        sock_pool_stats(sock_server_shard(server_, k), &s);
        return s.outstanding == 0 && s.checkouts - s.returns == s.outstanding;
      })) << "shard " << k << ": " << s.outstanding << " packets out, " << s.checkouts
          << " checkouts, " << s.returns << " returns";
    }
  }

  // Stops the server (nothing may still be open) and checks that everything it held is gone.
  void stop_and_expect_nothing_left() {
    const int closes = g->closes.load();
    ASSERT_EQ(sock_server_stop(server_), 0);
    server_ = nullptr;
    EXPECT_EQ(g->closes.load(), closes) << "a stop closed connections that were closed already";
    {
      std::lock_guard<std::mutex> lock(g->mu);
      EXPECT_EQ(g->stray_shutdowns, 0);
      EXPECT_EQ(g->stray_closes, 0);
    }
    close_clients();
    expect_process_back_to_baseline();
  }

  void expect_process_back_to_baseline() {
    // Joined threads may linger in /proc for a moment (see SetUp): one that outlived the stop
    // keeps the count up past the deadline.
    EXPECT_TRUE(wait_for([&] { return count_entries("/proc/self/task") == threads_before_; }))
        << "threads outlived the stop: " << count_entries("/proc/self/task") << " running, "
        << threads_before_ << " before";
    EXPECT_EQ(count_entries("/proc/self/fd"), fds_before_) << "fds leaked";
    EXPECT_EQ(alloc::BlockPool::leaked_chunks_total(), leaked_before_)
        << "a shard's pool was destroyed with packets out";
  }

  Tracker tracker_;
  SockServer* server_ = nullptr;
  std::vector<Client> clients_;
  std::size_t fds_before_ = 0;
  std::size_t threads_before_ = 0;
  uint64_t leaked_before_ = 0;
};

// ---- Close inside on_data --------------------------------------------------------------------

// Each client sends one command byte; the server answers by closing in one of these ways, all
// on the owner thread, inside on_data. Every connection is open before any command is sent,
// so no fd number is reused while a callback still uses it after closing it.
//   'c' write "bye", sock_close                  -> the peer gets "bye", then EOF
//   'f' write "lost", sock_force_close           -> queued output dropped: the peer gets nothing
//   'C' write "bye", sock_close, write (EPIPE), sock_close again        -> "bye"
//   'F' sock_force_close twice (the second finds the fd closed)         -> nothing
//   'x' write "bye", sock_close, then sock_force_close                  -> nothing
//   'u' write "bye", sock_close_uuid twice (0 both times: still open)   -> "bye"
//   'U' sock_force_close_uuid twice (0, then -1 with EBADF)              -> nothing
//   'e' the client also shut its side: write "bye", sock_close, read on to the EOF -> "bye"
constexpr char kCommands[] = "cfCFxuUe";

std::string reply_to(char command) {
  switch (command) {
    case 'c':
    case 'C':
    case 'u':
    case 'e':
    case 'x':  // "bye" went to the kernel before the force close
      return "bye";
    case 'f':
      return "sent";
    default:
      return "";
  }
}

void close_in_callback(Reactor* r, int fd) {
  char cmd;
  if (sock_read(fd, &cmd, 1) != 1) return;
  const intptr_t uuid = sock_fd2uuid(fd);
  switch (cmd) {
    case 'c':
      EXPECT_EQ(sock_write(fd, "bye", 3), 0);
      sock_close(r, fd);
      break;
    case 'f':  // the first write goes straight to the kernel, the second queues and is lost
      EXPECT_EQ(sock_write(fd, "sent", 4), 0);
      EXPECT_EQ(sock_write(fd, "lost", 4), 0);
      sock_force_close(r, fd);
      break;
    case 'C':
      EXPECT_EQ(sock_write(fd, "bye", 3), 0);
      sock_close(r, fd);
      errno = 0;
      EXPECT_EQ(sock_write(fd, "more", 4), -1);
      EXPECT_EQ(errno, EPIPE);
      sock_close(r, fd);
      break;
    case 'F':
      sock_force_close(r, fd);
      errno = 0;
      EXPECT_EQ(sock_status(fd), -1);
      EXPECT_EQ(errno, EBADF);
      sock_force_close(r, fd);
      break;
    case 'x':
      EXPECT_EQ(sock_write(fd, "bye", 3), 0);
      sock_close(r, fd);
      sock_force_close(r, fd);
      break;
    case 'u':
      EXPECT_EQ(sock_write(fd, "bye", 3), 0);
      EXPECT_EQ(sock_close_uuid(uuid), 0);
      EXPECT_EQ(sock_close_uuid(uuid), 0);
      break;
    case 'U':
      EXPECT_EQ(sock_force_close_uuid(uuid), 0);
      errno = 0;
      EXPECT_EQ(sock_force_close_uuid(uuid), -1);
      EXPECT_EQ(errno, EBADF);
      break;
    case 'e': {
      EXPECT_EQ(sock_write(fd, "bye", 3), 0);
      sock_close(r, fd);
      char rest[16];
      ssize_t n;
      while ((n = sock_read(fd, rest, sizeof rest)) > 0) {}
      break;
    }
    default:
      ADD_FAILURE() << "unknown command " << cmd;
  }
}

TEST_F(CloseRaceTest, CloseInsideOnDataRunsOnCloseOnceForEveryWayOfClosing) {
  constexpr std::size_t kPerCommand = 4;
  constexpr std::size_t kCount = sizeof kCommands - 1;
  start(close_in_callback);
  connect(kCount * kPerCommand);
  for (std::size_t i = 0; i < clients_.size(); ++i) {
    const char cmd = kCommands[i % kCount];
    testing_support::write_all(clients_[i].fd, std::string(1, cmd));
    if (cmd == 'e') shutdown(clients_[i].fd, SHUT_WR);
  }
  ASSERT_TRUE(pump_until_all_closed());
  for (std::size_t i = 0; i < clients_.size(); ++i) {
    EXPECT_EQ(clients_[i].got, reply_to(kCommands[i % kCount])) << "command " << kCommands[i % kCount];
  }
  expect_each_closed_once(SOCK_CLOSE_LOCAL);
  expect_pools_empty();
  stop_and_expect_nothing_left();
}

// ---- Close from another thread while the shard is busy ---------------------------------------

// Clients stream a pattern and read the echo; once every connection has echoed plenty, another
// thread closes them all, four ways round: sock_close and sock_force_close by fd (no fd is
// reused meanwhile: no connection is opened or closed by anyone else), sock_close_uuid and
// sock_force_close_uuid. Every close is posted to the busy owner shard.
TEST_F(CloseRaceTest, CloseFromAnotherThreadWhileTheShardEchoesClosesEachOnce) {
  constexpr std::size_t kClients = 12;
  constexpr std::size_t kStream = 4 << 20;  // a client stops sending after this much
  constexpr std::size_t kEchoedBeforeClose = 128 << 10;
  start(echo);
  connect(kClients);
  std::vector<std::string> streams;
  std::vector<std::size_t> sent(kClients, 0);
  for (std::size_t i = 0; i < kClients; ++i) {
    streams.push_back(testing_support::pattern(kStream, static_cast<unsigned>(i)));
  }

  std::atomic<bool> go{false}, closed_all{false};
  std::vector<int> results(kClients, 0);
  std::thread closer([&] {
    while (!go.load()) std::this_thread::yield();
    for (std::size_t i = 0; i < kClients; ++i) {
      const Client& c = clients_[i];
      switch (i % 4) {
        case 0:
          sock_close(nullptr, c.server_fd);
          break;
        case 1:
          sock_force_close(nullptr, c.server_fd);
          break;
        case 2:
          results[i] = sock_close_uuid(c.uuid);
          break;
        case 3:
          results[i] = sock_force_close_uuid(c.uuid);
          break;
      }
    }
    closed_all = true;
  });

  const bool done = wait_for([&] {
    bool all_closed = true, all_echoed = true;
    for (std::size_t i = 0; i < kClients; ++i) {
      Client& c = clients_[i];
      if (!c.closed && sent[i] < kStream) {
        const std::size_t chunk = std::min<std::size_t>(kStream - sent[i], 64 << 10);
        const ssize_t n = send(c.fd, streams[i].data() + sent[i], chunk, MSG_NOSIGNAL);
        if (n > 0) sent[i] += static_cast<std::size_t>(n);
      }
      c.pump();
      all_closed = all_closed && c.closed;
      all_echoed = all_echoed && (c.got.size() >= kEchoedBeforeClose || c.closed);
    }
    if (all_echoed) go = true;
    return all_closed && closed_all.load();
  });
  go = true;
  closer.join();
  ASSERT_TRUE(done);

  for (std::size_t i = 0; i < kClients; ++i) {
    const Client& c = clients_[i];
    EXPECT_EQ(results[i], 0) << "client " << i;
    EXPECT_GE(c.got.size(), kEchoedBeforeClose) << "client " << i << " closed before the close";
    EXPECT_LE(c.got.size(), sent[i]) << "client " << i;
    EXPECT_EQ(testing_support::first_difference(c.got, streams[i]), c.got.size())
        << "client " << i << ": the echo is not a prefix of what it sent";
  }
  expect_each_closed_once(SOCK_CLOSE_LOCAL);
  expect_pools_empty();
  stop_and_expect_nothing_left();
}

// ---- Close from another thread racing the peer's close ---------------------------------------

// Rounds of 16 connections, each after an echo. Two threads start together: one
// closes the clients (half with a reset), the other closes the server sides, the four ways of
// the previous test. The second thread varies its timing by round: the clients' order, the
// reverse order, or only once every client is closed (still racing the shard's handling of
// those closes). Whoever wins, each connection closes once; a close by handle that loses the
// race finds the connection closed (-1, EBADF). Nothing else opens fds during a round, so the
// closes by fd cannot reach a reused number.
TEST_F(CloseRaceTest, CloseFromAnotherThreadRacingThePeersCloseClosesEachOnce) {
#if defined(__SANITIZE_THREAD__)
  constexpr int kRounds = 9;
#else
  constexpr int kRounds = 42;
#endif
  constexpr std::size_t kPerRound = 16;
  start(echo);
  int uuid_closes_won = 0, uuid_closes_lost = 0;
  for (int round = 0; round < kRounds; ++round) {
    const std::size_t first = clients_.size();
    connect(kPerRound);
    if (HasFatalFailure()) return;
    const std::string hello = testing_support::pattern(1000, static_cast<unsigned>(round));
    for (std::size_t i = first; i < clients_.size(); ++i) testing_support::write_all(clients_[i].fd, hello);
    // Read the echoes: a socket closed with unread input sends a reset, not the FIN that half
    // of the clients close with.
    ASSERT_TRUE(wait_for([&] {
      bool all = true;
      for (std::size_t i = first; i < clients_.size(); ++i) {
        clients_[i].pump();
        all = all && clients_[i].got.size() >= hello.size();
      }
      return all;
    }));

    std::atomic<int> ready{0};
    std::atomic<bool> peer_done{false};
    auto start_together = [&ready] {
      ++ready;
      while (ready.load() < 2) std::this_thread::yield();
    };
    std::vector<int> results(kPerRound, 0), errnos(kPerRound, 0);
    std::thread peer([&] {
      start_together();
      for (std::size_t i = first; i < clients_.size(); ++i) {
        if (i % 2) testing_support::reset_on_close(clients_[i].fd);
        close(clients_[i].fd);
        clients_[i].fd = -1;
      }
      peer_done = true;
    });
    std::thread local([&] {
      start_together();
      while (round % 3 == 2 && !peer_done.load()) std::this_thread::yield();
      for (std::size_t step = 0; step < kPerRound; ++step) {
        const std::size_t j = round % 3 == 1 ? kPerRound - 1 - step : step;
        const Client& c = clients_[first + j];
        errno = 0;
        switch (j % 4) {
          case 0:
            sock_close(nullptr, c.server_fd);
            break;
          case 1:
            sock_force_close(nullptr, c.server_fd);
            break;
          case 2:
            results[j] = sock_close_uuid(c.uuid);
            break;
          case 3:
            results[j] = sock_force_close_uuid(c.uuid);
            break;
        }
        errnos[j] = errno;
      }
    });
    peer.join();
    local.join();
    for (std::size_t j = 0; j < kPerRound; ++j) {
      if (j % 4 < 2) continue;
      if (results[j] == 0) {
        ++uuid_closes_won;
      } else {
        ++uuid_closes_lost;
        EXPECT_EQ(results[j], -1);
        EXPECT_EQ(errnos[j], EBADF);
      }
    }
    // All of this round closed before the next round opens anything.
    ASSERT_TRUE(wait_for([&] { return g->closes.load() >= g->opens.load(); }))
        << "round " << round << ": " << g->closes.load() << " of " << g->opens.load() << " closed";
  }
  std::cout << "closes by handle: " << uuid_closes_won << " found the connection open, "
            << uuid_closes_lost << " found it closed by the peer\n";
  {
    std::lock_guard<std::mutex> lock(g->mu);
    int reasons[4] = {};
    for (const auto& [uuid, c] : g->conns) ++reasons[c.reason & 3];
    std::cout << "on_close reasons: " << reasons[SOCK_CLOSE_LOCAL] << " local, "
              << reasons[SOCK_CLOSE_PEER] << " peer, " << reasons[SOCK_CLOSE_ERROR] << " error, "
              << reasons[SOCK_CLOSE_TIMEOUT] << " timeout\n";
    EXPECT_EQ(reasons[SOCK_CLOSE_TIMEOUT], 0);
  }
  EXPECT_EQ(g->opens.load(), static_cast<int>(kRounds * kPerRound));
  // The reason depends on who won (local, peer, or an error after a reset).
  expect_each_closed_once(SOCK_CLOSE_LOCAL, false);
  expect_pools_empty();
  stop_and_expect_nothing_left();
}

// ---- Stop --------------------------------------------------------------------------------------

constexpr std::size_t kQueued = 2 << 20;

std::string queued_stream() { return testing_support::pattern(kQueued, 77); }

// Each new connection gets kQueued bytes queued at once, through a small kernel send buffer, so
// most of it waits in the engine's queue.
void open_and_queue(Reactor* r, int fd) {
  track_open(r, fd);
  testing_support::set_sndbuf(fd, 16 << 10);
  static const std::string bytes = queued_stream();
  EXPECT_EQ(sock_write(fd, bytes.data(), bytes.size()), 0);
}

// Half the clients read everything, half never read. The stop calls on_shutdown once per
// connection, on the owner thread like any callback (its sock_pending and farewell write run
// inline), lets the readers' queues drain (they get every byte and the farewell, then EOF),
// closes the non-readers when the drain deadline passes (their queues still held data: the
// stop ends at that deadline, not before and not much after), runs
// on_close once for each, and returns with every shard and acceptor thread joined.
TEST_F(CloseRaceTest, StopWithQueuedOutputShutsDownAndClosesEachConnectionOnce) {
  constexpr std::size_t kReaders = 4, kIdlers = 4;
  constexpr unsigned kStopTimeoutMs = 3000;  // ample for the readers, sanitizers included
  // Closing eight connections and joining three threads after the limit: far less than this
  // even on a loaded machine, and the limit plus this stays under the 5 s default.
  constexpr unsigned kStopSlackMs = 1500;
  static_assert(kStopTimeoutMs + kStopSlackMs < 5000);
  const std::string expected = queued_stream() + kFarewell;
  tracker_.farewell = true;
  for (const int mode : {SOCK_ACCEPT_THREAD, SOCK_ACCEPT_REUSEPORT}) {
    SCOPED_TRACE(mode == SOCK_ACCEPT_THREAD ? "acceptor thread" : "SO_REUSEPORT");
    tracker_.conns.clear();
    tracker_.live.clear();
    tracker_.stray_closes = tracker_.stray_shutdowns = tracker_.reopened = 0;
    tracker_.opens = tracker_.closes = 0;
    clients_.clear();

    start(nullptr, mode, open_and_queue, kStopTimeoutMs);
    connect(kReaders);
    connect(kIdlers, 4096);
    if (HasFatalFailure()) return;

    std::atomic<bool> readers_done{false};
    std::thread reader([&] {
      readers_done = wait_for([&] {
        bool all = true;
        for (std::size_t i = 0; i < kReaders; ++i) {
          clients_[i].pump();
          all = all && clients_[i].closed;
        }
        return all;
      });
    });
    const auto t0 = Clock::now();
    ASSERT_EQ(sock_server_stop(server_), 0);
    const auto stop_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
    server_ = nullptr;
    reader.join();
    std::cout << "stop with " << kReaders + kIdlers << " busy connections took " << stop_ms
              << " ms (drain deadline " << kStopTimeoutMs << " ms)\n";
    // The idlers hold the stop until the drain limit, and not much longer: one that ignored
    // stop_timeout_ms would wait the default 5 s, or for ever on peers that never read.
    EXPECT_GE(stop_ms, kStopTimeoutMs);
    EXPECT_LT(stop_ms, kStopTimeoutMs + kStopSlackMs);

    EXPECT_TRUE(readers_done.load());
    {
      std::lock_guard<std::mutex> lock(g->mu);
      EXPECT_EQ(g->opens.load(), static_cast<int>(kReaders + kIdlers));
      EXPECT_EQ(g->stray_shutdowns, 0);
      EXPECT_EQ(g->stray_closes, 0);
      EXPECT_TRUE(g->live.empty());
      for (std::size_t i = 0; i < clients_.size(); ++i) {
        const Conn& c = g->conns[clients_[i].uuid];
        EXPECT_EQ(c.opens, 1) << "client " << i;
        EXPECT_EQ(c.shutdowns, 1) << "client " << i;
        EXPECT_EQ(c.closes, 1) << "client " << i;
        EXPECT_EQ(c.reason, SOCK_CLOSE_LOCAL) << "client " << i;
        EXPECT_EQ(c.farewell_result, 0) << "client " << i;
        if (i >= kReaders) {
          EXPECT_GT(c.pending_at_shutdown, 0) << "client " << i;
        }
      }
    }
    for (std::size_t i = 0; i < kReaders; ++i) {
      EXPECT_TRUE(clients_[i].got == expected)
          << "reader " << i << " got " << clients_[i].got.size() << " bytes, first difference at "
          << testing_support::first_difference(clients_[i].got, expected);
    }
    for (std::size_t i = kReaders; i < clients_.size(); ++i) {
      Client& c = clients_[i];
      ASSERT_TRUE(wait_for([&] {
        c.pump();
        return c.closed;
      }));
      EXPECT_LT(c.got.size(), expected.size()) << "idler " << i << ": its queue was not dropped";
      EXPECT_EQ(testing_support::first_difference(c.got, expected), c.got.size()) << "idler " << i;
    }
    close_clients();
    expect_process_back_to_baseline();
  }
}

// An idle server stops at once; its time is reported, not asserted.
TEST_F(CloseRaceTest, IdleServerStopsAndJoinsEveryThread) {
  for (const int mode : {SOCK_ACCEPT_THREAD, SOCK_ACCEPT_REUSEPORT}) {
    start(echo, mode);
    EXPECT_GT(count_entries("/proc/self/task"), threads_before_);
    const auto t0 = Clock::now();
    ASSERT_EQ(sock_server_stop(server_), 0);
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
    server_ = nullptr;
    std::cout << "idle stop (" << (mode == SOCK_ACCEPT_THREAD ? "acceptor thread" : "SO_REUSEPORT")
              << ", 2 shards): " << us << " us\n";
    RecordProperty(mode == SOCK_ACCEPT_THREAD ? "idle_stop_us_thread" : "idle_stop_us_reuseport",
                   static_cast<int>(us));
    EXPECT_EQ(g->opens.load(), 0);
    EXPECT_EQ(g->closes.load(), 0);
    EXPECT_EQ(g->stray_shutdowns, 0);
    expect_process_back_to_baseline();
  }
}

}  // namespace
