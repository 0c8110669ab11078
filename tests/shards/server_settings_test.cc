// Settings of the sharded server (shards/server.h) that no other test exercises, each proved
// through sock_server_start() on 127.0.0.1 with a kernel-chosen port:
//   high_watermark / low_watermark: a connection with more than high_watermark bytes queued is
//     not read (its input waits in the kernel, on_data is not called) until its queue drains to
//     low_watermark; then on_ready runs and on_data gets the input that waited, none of it lost
//     or reordered, on every shard;
//   shard_memory_budget: a write that would take a shard past its budget fails with ENOBUFS and
//     queues nothing; the budget is per shard; writes succeed again once the peers have read;
//   accept_batch: the accepts of one wakeup are bounded, so input on an open connection is
//     served while a backlog is still being accepted (and with the default, it is not);
//   defer_accept_s: a connection is opened only once its client sent something;
//   udata: sock_server_udata() returns the settings' udata in every callback on every shard;
// and the C API around them: sock_uuid2fd() maps a live handle back to its fd from another
// thread and stops matching once that connection closed, even after its number was reused;
// sock_server_wait() returns once another thread calls sock_server_request_stop(), and at once
// after that.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/libsock.h"
#include "shards/server.h"
#include "tests/testing/loopback.h"
#include "tests/testing/thread_state.h"
#include "tests/testing/wait_for.h"

namespace {

using testing_support::first_difference;
using testing_support::pattern;
using testing_support::wait_for;

// Bytes waiting unread in fd's kernel receive queue. The server's sockets are fds of this
// process, so the test can look at them without touching the engine's state.
int unread_bytes(int fd) {
  int n = -1;
  return ioctl(fd, FIONREAD, &n) < 0 ? -1 : n;
}

// Reads from a non-blocking client until *sink holds exactly n bytes (never more).
bool read_exactly(int fd, std::size_t n, std::string* sink) {
  return wait_for([&] {
    char buf[65536];
    while (sink->size() < n) {
      const ssize_t r = recv(fd, buf, std::min(sizeof buf, n - sink->size()), 0);
      if (r <= 0) break;
      sink->append(buf, static_cast<std::size_t>(r));
    }
    return sink->size() >= n;
  });
}

// Stops the server (if the test has not) and closes the clients when a test ends, early or
// not. Declared after the callbacks' state, so that state outlives every callback.
struct Running {
  SockServer* server = nullptr;
  std::vector<int> clients;

  Running() = default;
  Running(const Running&) = delete;
  Running& operator=(const Running&) = delete;
  ~Running() {
    if (server) sock_server_stop(server);
    for (const int fd : clients) close(fd);
  }
  int connect(int rcvbuf = 0) {
    clients.push_back(testing_support::connect_client(sock_server_port(server), rcvbuf));
    return clients.back();
  }
  int stop() {
    const int r = sock_server_stop(server);
    server = nullptr;
    return r;
  }
};

// ---- high_watermark / low_watermark -------------------------------------------------------------

// The watermarks differ from the defaults (1 MiB and a quarter of the high one): with them
// ignored, the flood below would not pause reading at all, and reading would resume earlier.
constexpr std::size_t kHigh = 256 << 10;
constexpr std::size_t kLow = 16 << 10;
constexpr std::size_t kFlood = 768 << 10;  // queued at once: above kHigh, below 1 MiB
constexpr std::size_t kInput = 4000;       // what a client sends while its connection is paused
// The kernel buffers on both sides are kept small (SO_SNDBUF on the server side, SO_RCVBUF on
// the client), so what the kernel holds in flight is far less than kHigh - kLow and the engine's
// queue stays between the watermarks after the client has read kFlood - kHigh bytes.
constexpr int kSmallBuffer = 16 << 10;

enum class Role { kUnassigned, kFlood, kBarrier };

struct WmConn {
  Reactor* shard = nullptr;
  int fd = -1;
  int peer_port = 0;
  Role role = Role::kUnassigned;
  bool flooded = false;
  ssize_t flood_result = 1;
  ssize_t pending_after_flood = -1;
  std::string input;  // what on_data read after the flood byte
  // After the flood: every on_data ('d') and on_ready ('r'), with sock_pending() at that moment.
  struct Event {
    char kind;
    ssize_t pending;
  };
  std::vector<Event> events;
};

// What a barrier byte's on_data saw of one flooded connection on its own shard.
struct WmSnapshot {
  int fd;
  ssize_t pending;
  std::size_t events;
  std::size_t input;
};

struct WmState {
  std::mutex mu;
  std::vector<WmConn> conns;
  std::map<std::pair<Reactor*, int>, std::size_t> index;
  std::map<Reactor*, std::vector<std::vector<WmSnapshot>>> barriers;
  std::atomic<int> opens{0};
};
WmState* wm = nullptr;

WmConn* wm_find(Reactor* r, int fd) {
  const auto it = wm->index.find({r, fd});
  return it == wm->index.end() ? nullptr : &wm->conns[it->second];
}

void wm_on_open(Reactor* r, int fd) {
  testing_support::set_sndbuf(fd, kSmallBuffer);
  std::lock_guard<std::mutex> lock(wm->mu);
  WmConn c;
  c.shard = r;
  c.fd = fd;
  c.peer_port = testing_support::peer_port(fd);
  wm->index[{r, fd}] = wm->conns.size();
  wm->conns.push_back(std::move(c));
  ++wm->opens;
}

// A flooded connection's first byte asks for the flood: kFlood bytes queued in one write. Every
// later byte is input, recorded. A barrier connection's bytes each take a snapshot of the
// flooded connections of this shard: sock_pending() is exact here, on their owner thread.
void wm_on_data(Reactor* r, int fd) {
  std::lock_guard<std::mutex> lock(wm->mu);
  WmConn* c = wm_find(r, fd);
  if (!c) return;
  if (c->flooded) c->events.push_back({'d', sock_pending(fd)});
  char buf[8192];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    if (c->role == Role::kBarrier) {
      for (ssize_t i = 0; i < n; ++i) {
        std::vector<WmSnapshot> snap;
        for (const WmConn& f : wm->conns) {
          if (f.shard == r && f.role == Role::kFlood) {
            snap.push_back({f.fd, sock_pending(f.fd), f.events.size(), f.input.size()});
          }
        }
        wm->barriers[r].push_back(std::move(snap));
      }
      continue;
    }
    std::size_t used = 0;
    if (!c->flooded) {
      const std::string flood = pattern(kFlood, static_cast<unsigned>(c->peer_port));
      c->flooded = true;
      c->flood_result = sock_write(fd, flood.data(), flood.size());
      c->pending_after_flood = sock_pending(fd);
      used = 1;
    }
    c->input.append(buf + used, static_cast<std::size_t>(n) - used);
  }
}

void wm_on_ready(Reactor* r, int fd) {
  std::lock_guard<std::mutex> lock(wm->mu);
  WmConn* c = wm_find(r, fd);
  if (c && c->flooded) c->events.push_back({'r', sock_pending(fd)});
}

// A low watermark above the high one, or above the default high (1 MiB) that a high of 0
// stands for, is refused before anything starts, as reactor_set_limits refuses it: the
// shards took the pair unchecked, and a connection paused by it resumed at once.
TEST(ServerSettingsTest, WatermarksAreValidatedBeforeAnythingStarts) {
  errno = 0;
  EXPECT_EQ(sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 1,
                              .high_watermark = 1000, .low_watermark = 2000),
            nullptr);
  EXPECT_EQ(errno, EINVAL);
  errno = 0;
  EXPECT_EQ(sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 1,
                              .low_watermark = 2 << 20),
            nullptr);
  EXPECT_EQ(errno, EINVAL);
  SockServer* fine = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 1,
                                       .high_watermark = 1000, .low_watermark = 1000);
  EXPECT_NE(fine, nullptr);
  if (fine) {
    EXPECT_EQ(sock_server_stop(fine), 0);
  }
}

// On each of 2 shards: one barrier connection and two flooded ones. A flooded connection's
// client reads nothing at first, then exactly kFlood - kHigh bytes, then the rest; meanwhile it
// has sent kInput bytes. A barrier byte sent after some event on another connection of the same
// shard is read after that event was handled: epoll reports a shard's ready fds in the order
// they became ready, so the shard dispatched the earlier event first (in the same batch or an
// earlier one). That is how the test knows the paused connections' input had its chance to be
// read, without sleeping.
TEST(ServerSettingsTest, HighWatermarkPausesReadingUntilTheQueueDrainsToTheLowWatermark) {
  WmState state;
  wm = &state;
  Running run;
  run.server = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 2,
                                 .on_data = wm_on_data, .on_ready = wm_on_ready,
                                 .on_open = wm_on_open, .idle_timeout_ms = SOCK_NO_TIMEOUT,
                                 .high_watermark = kHigh, .low_watermark = kLow);
  ASSERT_NE(run.server, nullptr);
  constexpr int kClients = 6;  // round robin: three per shard
  for (int i = 0; i < kClients; ++i) run.connect(kSmallBuffer);
  ASSERT_TRUE(wait_for([&] { return state.opens.load() == kClients; }));

  // Client i <-> its server side (by the client's port), and the roles: per shard, the first
  // connection is the barrier, the others are flooded.
  std::vector<std::size_t> conn_of(kClients);
  std::vector<int> barrier_clients, flood_clients;
  {
    std::lock_guard<std::mutex> lock(state.mu);
    std::set<Reactor*> shards;
    for (int i = 0; i < kClients; ++i) {
      const int port = testing_support::local_port(run.clients[i]);
      const auto it = std::find_if(state.conns.begin(), state.conns.end(),
                                   [&](const WmConn& c) { return c.peer_port == port; });
      ASSERT_NE(it, state.conns.end()) << "client " << i << " has no server side";
      conn_of[i] = static_cast<std::size_t>(it - state.conns.begin());
      const bool first_of_shard = shards.insert(it->shard).second;
      it->role = first_of_shard ? Role::kBarrier : Role::kFlood;
      (first_of_shard ? barrier_clients : flood_clients).push_back(i);
    }
    ASSERT_EQ(shards.size(), 2u) << "every shard owns connections";
    ASSERT_EQ(flood_clients.size(), 4u);
  }
  auto conn = [&](int client) -> WmConn& { return state.conns[conn_of[client]]; };

  // The floods: each is queued beyond the high watermark (the part the kernel took at once, see
  // sock_write2, is far less than kFlood - kHigh).
  for (const int i : flood_clients) testing_support::write_all(run.clients[i], "F");
  ASSERT_TRUE(wait_for([&] {
    std::lock_guard<std::mutex> lock(state.mu);
    return std::all_of(flood_clients.begin(), flood_clients.end(),
                       [&](int i) { return conn(i).flooded; });
  }));
  std::vector<std::string> inputs;
  {
    std::lock_guard<std::mutex> lock(state.mu);
    for (const int i : flood_clients) {
      EXPECT_EQ(conn(i).flood_result, 0) << "client " << i;
      EXPECT_GT(conn(i).pending_after_flood, static_cast<ssize_t>(kHigh)) << "client " << i;
      inputs.push_back(pattern(kInput, 100 + static_cast<unsigned>(i)));
    }
  }

  // Input while above the high watermark: it reaches the server's socket and stays there.
  for (std::size_t k = 0; k < flood_clients.size(); ++k) {
    testing_support::write_all(run.clients[flood_clients[k]], inputs[k]);
  }
  for (const int i : flood_clients) {
    const int fd = conn(i).fd;  // set once, in on_open, before the count waited for above
    ASSERT_TRUE(wait_for([&] { return unread_bytes(fd) == static_cast<int>(kInput); }))
        << "client " << i << ": " << unread_bytes(fd) << " bytes unread";
  }
  auto barrier = [&](std::size_t round) {
    for (const int b : barrier_clients) testing_support::write_all(run.clients[b], "B");
    return wait_for([&] {
      std::lock_guard<std::mutex> lock(state.mu);
      return std::all_of(barrier_clients.begin(), barrier_clients.end(), [&](int b) {
        return state.barriers[conn(b).shard].size() == round;
      });
    });
  };
  ASSERT_TRUE(barrier(1));
  {
    std::lock_guard<std::mutex> lock(state.mu);
    for (const int b : barrier_clients) {
      const std::vector<WmSnapshot>& snap = state.barriers[conn(b).shard][0];
      EXPECT_EQ(snap.size(), 2u);
      for (const WmSnapshot& s : snap) {
        EXPECT_GT(s.pending, static_cast<ssize_t>(kHigh)) << "fd " << s.fd;
        EXPECT_EQ(s.events, 0u) << "fd " << s.fd << ": on_data or on_ready above the high mark";
        EXPECT_EQ(s.input, 0u) << "fd " << s.fd;
      }
    }
  }

  // Between the watermarks reading stays paused. Once a client has read kFlood - kHigh bytes,
  // at most kHigh remain queued (the server wrote at least what was read), and more than kLow
  // (the kernel holds less than kHigh - kLow in flight).
  std::vector<std::string> got(kClients);
  for (const int i : flood_clients) {
    ASSERT_TRUE(read_exactly(run.clients[i], kFlood - kHigh, &got[i])) << "client " << i;
  }
  ASSERT_TRUE(barrier(2));
  {
    std::lock_guard<std::mutex> lock(state.mu);
    for (const int b : barrier_clients) {
      for (const WmSnapshot& s : state.barriers[conn(b).shard][1]) {
        EXPECT_LE(s.pending, static_cast<ssize_t>(kHigh)) << "fd " << s.fd;
        EXPECT_GT(s.pending, static_cast<ssize_t>(kLow)) << "fd " << s.fd;
        EXPECT_EQ(s.events, 0u) << "fd " << s.fd << ": on_data or on_ready between the marks";
        EXPECT_EQ(s.input, 0u) << "fd " << s.fd;
      }
    }
    for (const int i : flood_clients) {
      EXPECT_EQ(unread_bytes(conn(i).fd), static_cast<int>(kInput)) << "client " << i;
    }
  }

  // Drained: on_ready, then on_data with the input that waited, complete and in order.
  for (const int i : flood_clients) {
    ASSERT_TRUE(read_exactly(run.clients[i], kFlood, &got[i])) << "client " << i;
  }
  ASSERT_TRUE(wait_for([&] {
    std::lock_guard<std::mutex> lock(state.mu);
    return std::all_of(flood_clients.begin(), flood_clients.end(),
                       [&](int i) { return conn(i).input.size() >= kInput; });
  }));
  std::lock_guard<std::mutex> lock(state.mu);
  for (std::size_t k = 0; k < flood_clients.size(); ++k) {
    const int i = flood_clients[k];
    const WmConn& c = conn(i);
    const std::string expected =
        pattern(kFlood, static_cast<unsigned>(testing_support::local_port(run.clients[i])));
    EXPECT_TRUE(got[i] == expected) << "client " << i << ": first difference at "
                                    << first_difference(got[i], expected);
    EXPECT_TRUE(c.input == inputs[k]) << "client " << i << ": input " << c.input.size()
                                      << " bytes, first difference at "
                                      << first_difference(c.input, inputs[k]);
    ASSERT_FALSE(c.events.empty()) << "client " << i;
    EXPECT_EQ(c.events[0].kind, 'r') << "client " << i << ": on_data before on_ready";
    std::size_t data_calls = 0;
    for (const WmConn::Event& e : c.events) {
      // The queue only shrinks after the flood, so this holds at every later callback too.
      EXPECT_LE(e.pending, static_cast<ssize_t>(kLow)) << "client " << i << ": " << e.kind;
      data_calls += e.kind == 'd';
    }
    EXPECT_GE(data_calls, 1u) << "client " << i;
  }
}

// ---- shard_memory_budget ------------------------------------------------------------------------

constexpr std::size_t kBudgetPackets = 8;
// The budget counts the bytes of the packets a shard has out: kBudgetPackets of them fit.
constexpr std::size_t kBudget = kBudgetPackets * sizeof(Packet);
// Smaller than a packet: a write needs at most one more packet, so a shard fills up exactly.
constexpr std::size_t kChunk = 4096;
constexpr std::size_t kStream = 1 << 20;  // each connection's bytes, written in order

struct FillResult {
  std::string error;  // empty unless the fill ended for another reason than ENOBUFS
  ssize_t first_result = 1;
  std::size_t accepted = 0;  // bytes of the writes that succeeded
  int refusals = 0;          // writes refused with ENOBUFS
  int refusals_that_queued = 0;
  ssize_t pending_at_end = -1;     // sock_pending() after the last refusal
  uint64_t outstanding_at_end = 0;  // the shard's packets out then (exact: owner thread)
  // After the fill: one write to each other connection of the same shard.
  struct Probe {
    int fd;
    ssize_t result;
    int err;
    ssize_t pending;
  };
  std::vector<Probe> probes;
};

struct BgConn {
  Reactor* shard = nullptr;
  int fd = -1;
  int peer_port = 0;
  std::string stream;
  std::size_t offset = 0;  // bytes of stream written so far: what the client must receive
  std::vector<FillResult> fills;
};

struct BgState {
  std::mutex mu;
  std::vector<BgConn> conns;
  std::atomic<int> opens{0};
};
BgState* bg = nullptr;

void bg_on_open(Reactor* r, int fd) {
  testing_support::set_sndbuf(fd, kSmallBuffer);
  BgConn c;
  c.shard = r;
  c.fd = fd;
  c.peer_port = testing_support::peer_port(fd);
  c.stream = pattern(kStream, static_cast<unsigned>(c.peer_port));
  std::lock_guard<std::mutex> lock(bg->mu);
  bg->conns.push_back(std::move(c));
  ++bg->opens;
}

// Writes the next kChunk bytes of c's stream; its offset moves only when the write succeeded.
ssize_t bg_write_chunk(BgConn& c) {
  errno = 0;
  const ssize_t r = sock_write(c.fd, c.stream.data() + c.offset, kChunk);
  if (r == 0) c.offset += kChunk;
  return r;
}

// Fills the shard to its budget through c: writes until ENOBUFS, pushes what the kernel takes
// (sock_flush) and writes again, until the kernel takes nothing more and the budget is spent.
// The peer never reads meanwhile, so nothing changes between the last refusal and the probes.
FillResult bg_fill(Reactor* r, BgConn& c) {
  FillResult f;
  for (;;) {
    if (c.offset + kChunk > c.stream.size()) {
      f.error = "stream exhausted before the budget";
      break;
    }
    const ssize_t pending_before = sock_pending(c.fd);
    SockPoolStats before{}, after{};
    sock_pool_stats(r, &before);
    const ssize_t w = bg_write_chunk(c);
    const int err = errno;
    if (f.first_result == 1) f.first_result = w;
    if (w == 0) {
      f.accepted += kChunk;
      continue;
    }
    if (err != ENOBUFS) {
      f.error = std::string("write failed: ") + std::strerror(err);
      break;
    }
    ++f.refusals;
    sock_pool_stats(r, &after);
    f.pending_at_end = sock_pending(c.fd);
    f.outstanding_at_end = after.outstanding;
    if (f.pending_at_end != pending_before || after.outstanding != before.outstanding ||
        after.queued_bytes != before.queued_bytes) {
      ++f.refusals_that_queued;
    }
    if (sock_flush(c.fd) > 0) continue;  // the kernel took queued bytes: packets came back
    break;
  }
  for (BgConn& o : bg->conns) {
    if (o.shard != r || o.fd == c.fd) continue;
    const ssize_t w = bg_write_chunk(o);
    const int err = errno;
    f.probes.push_back({o.fd, w, err, sock_pending(o.fd)});
  }
  return f;
}

// Every byte 'F' fills the shard through this connection.
void bg_on_data(Reactor* r, int fd) {
  char buf[256];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    std::lock_guard<std::mutex> lock(bg->mu);
    for (BgConn& c : bg->conns) {
      if (c.shard != r || c.fd != fd) continue;
      for (ssize_t i = 0; i < n; ++i) {
        if (buf[i] == 'F') c.fills.push_back(bg_fill(r, c));
      }
    }
  }
}

// Two connections per shard (a filler and a prober), clients that do not read, small kernel
// buffers: the fill spends the shard's budget, so the shard's other connection cannot queue a
// byte although its own queue and socket are empty; the other shard fills to its own budget
// meanwhile. After the clients read everything, both shards are empty and the probers fill
// their shards in turn. Each client receives exactly its stream's bytes of the writes that
// succeeded: a refused write left nothing behind.
TEST(ServerSettingsTest, ShardMemoryBudgetRefusesWritesPerShardWithEnobufsUntilThePeerDrains) {
  BgState state;
  bg = &state;
  Running run;
  run.server = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 2,
                                 .on_data = bg_on_data, .on_open = bg_on_open,
                                 .idle_timeout_ms = SOCK_NO_TIMEOUT,
                                 .shard_memory_budget = kBudget);
  ASSERT_NE(run.server, nullptr);
  constexpr int kClients = 4;  // round robin: two per shard
  for (int i = 0; i < kClients; ++i) run.connect(kSmallBuffer);
  ASSERT_TRUE(wait_for([&] { return state.opens.load() == kClients; }));

  std::vector<std::size_t> conn_of(kClients);
  std::map<Reactor*, std::vector<int>> clients_of;
  {
    std::lock_guard<std::mutex> lock(state.mu);
    for (int i = 0; i < kClients; ++i) {
      const int port = testing_support::local_port(run.clients[i]);
      const auto it = std::find_if(state.conns.begin(), state.conns.end(),
                                   [&](const BgConn& c) { return c.peer_port == port; });
      ASSERT_NE(it, state.conns.end()) << "client " << i << " has no server side";
      conn_of[i] = static_cast<std::size_t>(it - state.conns.begin());
      clients_of[it->shard].push_back(i);
    }
  }
  Reactor* const shard[2] = {sock_server_shard(run.server, 0), sock_server_shard(run.server, 1)};
  for (Reactor* s : shard) ASSERT_EQ(clients_of[s].size(), 2u) << "two connections per shard";
  auto conn = [&](int client) -> BgConn& { return state.conns[conn_of[client]]; };

  // One fill through `client`, and the checks that hold for every fill.
  auto fill = [&](int client) {
    const std::size_t round = [&] {
      std::lock_guard<std::mutex> lock(state.mu);
      return conn(client).fills.size() + 1;
    }();
    testing_support::write_all(run.clients[client], "F");
    EXPECT_TRUE(wait_for([&] {
      std::lock_guard<std::mutex> lock(state.mu);
      return conn(client).fills.size() == round;
    })) << "client " << client;
    std::lock_guard<std::mutex> lock(state.mu);
    if (conn(client).fills.size() != round) return FillResult{};
    const FillResult f = conn(client).fills.back();
    EXPECT_EQ(f.error, "") << "client " << client;
    EXPECT_EQ(f.first_result, 0) << "client " << client << ": the first write was refused";
    EXPECT_GT(f.refusals, 0) << "client " << client;
    EXPECT_EQ(f.refusals_that_queued, 0) << "client " << client << ": a refused write queued";
    EXPECT_EQ(f.outstanding_at_end, kBudgetPackets) << "client " << client;
    // The budget is all in this queue: kBudgetPackets packets, all full but the last (less than
    // kChunk of room left) and the first (partly sent).
    EXPECT_GT(f.pending_at_end, static_cast<ssize_t>((kBudgetPackets - 2) * BUFFER_PACKET_SIZE))
        << "client " << client;
    EXPECT_LE(f.pending_at_end, static_cast<ssize_t>(kBudgetPackets * BUFFER_PACKET_SIZE))
        << "client " << client;
    EXPECT_EQ(f.probes.size(), 1u) << "client " << client;
    for (const FillResult::Probe& p : f.probes) {
      EXPECT_EQ(p.result, -1) << "probe of fd " << p.fd;
      EXPECT_EQ(p.err, ENOBUFS) << "probe of fd " << p.fd;
      EXPECT_EQ(p.pending, 0) << "probe of fd " << p.fd;
    }
    return f;
  };
  auto outstanding = [&](Reactor* s) {
    SockPoolStats st{};
    sock_pool_stats(s, &st);  // a recent snapshot off the shard's thread
    return st.outstanding;
  };
  std::vector<std::string> got(kClients);
  auto read_all_and_check = [&] {
    for (int i = 0; i < kClients; ++i) {
      std::size_t expected_size;
      std::string expected;
      {
        std::lock_guard<std::mutex> lock(state.mu);
        expected_size = conn(i).offset;
        expected = conn(i).stream.substr(0, expected_size);
      }
      ASSERT_TRUE(read_exactly(run.clients[i], expected_size, &got[i])) << "client " << i;
      EXPECT_TRUE(got[i] == expected) << "client " << i << ": " << got[i].size()
                                      << " bytes, first difference at "
                                      << first_difference(got[i], expected);
    }
    for (Reactor* s : shard) {
      ASSERT_TRUE(wait_for([&] { return outstanding(s) == 0; })) << outstanding(s) << " out";
    }
  };

  const int filler0 = clients_of[shard[0]][0], prober0 = clients_of[shard[0]][1];
  const int filler1 = clients_of[shard[1]][0], prober1 = clients_of[shard[1]][1];
  fill(filler0);
  if (HasFailure()) return;
  // Shard 1 queues its own full budget while shard 0 still holds its packets (its peer reads
  // nothing, and its kernel buffers were full): the budget is not shared between shards.
  fill(filler1);
  EXPECT_GE(outstanding(shard[0]), 1u);
  if (HasFailure()) return;

  // Once the peers have read everything, every byte of the budget is free again.
  read_all_and_check();
  if (HasFailure()) return;
  fill(prober0);
  fill(prober1);
  if (HasFailure()) return;
  read_all_and_check();
  EXPECT_EQ(run.stop(), 0);
}

// ---- accept_batch -------------------------------------------------------------------------------

constexpr int kBacklog = 20;     // connections waiting in the listen queue at the release
constexpr std::size_t kEBytes = 16;  // bytes sent on the established connection meanwhile

// Events in callback order: 'o' an on_open, 'd' one byte read by the established connection E.
struct AcceptState {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<char> events;
  std::vector<int> open_fds;
  std::vector<int> open_ports;
  std::string e_input;
  std::atomic<int> e_fd{-1};
  std::atomic<int> opens{0};
  bool hold_next_open = false;
  bool holding = false;
  bool released = false;
  bool hold_timed_out = false;
};
AcceptState* ac = nullptr;

// The connection opened after hold_next_open was set keeps the shard thread inside its on_open
// until the test releases it (or the deadline passes).
void ac_on_open(Reactor*, int fd) {
  std::unique_lock<std::mutex> lock(ac->mu);
  ac->events.push_back('o');
  ac->open_fds.push_back(fd);
  ac->open_ports.push_back(testing_support::peer_port(fd));
  ++ac->opens;
  if (!ac->hold_next_open) return;
  ac->hold_next_open = false;
  ac->holding = true;
  if (!ac->cv.wait_for(lock, testing_support::kWaitDeadline, [] { return ac->released; })) {
    ac->hold_timed_out = true;
  }
}

// E reads one byte per call: the call made progress without draining, so the reactor lists E
// for another call on its next iteration. E's calls thus mark the reactor's iterations.
void ac_on_data(Reactor*, int fd) {
  if (fd == ac->e_fd.load()) {
    char b;
    if (sock_read(fd, &b, 1) == 1) {
      std::lock_guard<std::mutex> lock(ac->mu);
      ac->events.push_back('d');
      ac->e_input.push_back(b);
    }
    return;
  }
  char buf[256];
  while (sock_read(fd, buf, sizeof buf) > 0) {}
}

// Connections that completed their handshake and wait for accept() (TCP_INFO of a listening
// socket reports its accept queue length in tcpi_unacked).
int accept_queue_length(int listener) {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (getsockopt(listener, IPPROTO_TCP, TCP_INFO, &info, &len) < 0) return -1;
  return static_cast<int>(info.tcpi_unacked);
}

// One shard with its own listener (SO_REUSEPORT mode, where the shard accepts in batches of
// accept_batch). E is open and idle. The next connection's on_open holds the shard thread
// while kBacklog more clients connect (they wait in the listen queue) and E's client sends
// kEBytes; then the shard is released. Returns the callbacks' events in order, from E's open.
void run_backlog(unsigned accept_batch, std::vector<char>* events, std::string* e_input) {
  AcceptState state;
  ac = &state;
  Running run;
  run.server = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 1,
                                 .accept_mode = SOCK_ACCEPT_REUSEPORT, .on_data = ac_on_data,
                                 .on_open = ac_on_open, .idle_timeout_ms = SOCK_NO_TIMEOUT,
                                 .accept_batch = accept_batch);
  ASSERT_NE(run.server, nullptr);
  const int listener = testing_support::listening_fd(sock_server_port(run.server));
  ASSERT_GE(listener, 0);

  const int e = run.connect();
  ASSERT_TRUE(wait_for([&] { return state.opens.load() == 1; }));
  {
    std::lock_guard<std::mutex> lock(state.mu);
    ASSERT_EQ(state.open_ports[0], testing_support::local_port(e));
    state.e_fd = state.open_fds[0];
    state.hold_next_open = true;
  }
  // Released before `run` stops the server, whatever happens: the shard must not stay held.
  struct Release {
    AcceptState* st;
    ~Release() {
      std::lock_guard<std::mutex> lock(st->mu);
      st->released = true;
      st->cv.notify_all();
    }
  };
  {
    Release release{&state};
    run.connect();
    ASSERT_TRUE(wait_for([&] {
      std::lock_guard<std::mutex> lock(state.mu);
      return state.holding;
    }));
    for (int i = 0; i < kBacklog; ++i) run.connect();
    ASSERT_TRUE(wait_for([&] { return accept_queue_length(listener) == kBacklog; }))
        << accept_queue_length(listener) << " connections in the listen queue";
    testing_support::write_all(e, pattern(kEBytes, 9));
    const int e_fd = state.e_fd.load();
    ASSERT_TRUE(wait_for([&] { return unread_bytes(e_fd) == static_cast<int>(kEBytes); }));
  }
  ASSERT_TRUE(wait_for([&] {
    std::lock_guard<std::mutex> lock(state.mu);
    return state.opens.load() == kBacklog + 2 && state.e_input.size() == kEBytes;
  })) << state.opens.load() << " opened";
  EXPECT_EQ(run.stop(), 0);
  EXPECT_FALSE(state.hold_timed_out);
  *events = state.events;
  *e_input = state.e_input;
}

// on_opens between the held one and E's first byte, then between E's consecutive bytes.
std::vector<int> opens_between_reads(const std::vector<char>& events) {
  std::vector<int> gaps{0};
  for (std::size_t i = 2; i < events.size(); ++i) {  // [0]: E's open, [1]: the held one
    if (events[i] == 'o') {
      ++gaps.back();
    } else {
      gaps.push_back(0);
    }
  }
  gaps.pop_back();  // opens after E's last byte
  return gaps;
}

std::string join(const std::vector<int>& v) {
  std::string s;
  for (const int x : v) s += (s.empty() ? "" : " ") + std::to_string(x);
  return s;
}

// With accept_batch = 4, after the release and before E's first on_data the shard accepts at
// most 3 * 4 - 1 connections, of the kBacklog waiting:
//   - the rest of the held batch: 3;
//   - that batch ended without EAGAIN, so the listener got another on_data call in the same
//     iteration (Reactor::want_on_data_again): 4;
//   - in the next iteration epoll reports the listener (its edge came from the connections that
//     queued during the hold) before E (whose input arrived after them): 4; then E.
// After that E's on_data runs once per iteration (it reads one byte per call), and the listener
// runs at most twice per iteration (an edge and its on_data-again turn): at most 2 * 4 accepts
// between two of E's calls. All connections are opened in the end and E's bytes arrive in order.
TEST(ServerSettingsTest, AcceptBatchBoundsTheAcceptsOfOneWakeupSoOtherInputIsServedBetween) {
  constexpr unsigned kBatch = 4;
  std::vector<char> events;
  std::string e_input;
  run_backlog(kBatch, &events, &e_input);
  if (HasFatalFailure()) return;
  EXPECT_EQ(std::count(events.begin(), events.end(), 'o'), kBacklog + 2);
  EXPECT_EQ(e_input, pattern(kEBytes, 9));
  const std::vector<int> gaps = opens_between_reads(events);
  std::cout << "accept_batch " << kBatch << ": on_opens before each of E's reads: "
            << join(gaps) << "\n";
  ASSERT_FALSE(gaps.empty());
  EXPECT_LE(gaps[0], static_cast<int>(3 * kBatch - 1)) << join(gaps);
  for (std::size_t i = 1; i < gaps.size(); ++i) {
    EXPECT_LE(gaps[i], static_cast<int>(2 * kBatch)) << "before read " << i << ": " << join(gaps);
  }
}

// The same scenario with the default accept_batch (64, more than the backlog): the held batch
// goes on to accept every waiting connection before E is served. So the bound above comes from
// the setting, and the scenario does fill the listen queue.
TEST(ServerSettingsTest, DefaultAcceptBatchTakesTheWholeBacklogBeforeOtherInput) {
  std::vector<char> events;
  std::string e_input;
  run_backlog(0, &events, &e_input);
  if (HasFatalFailure()) return;
  EXPECT_EQ(e_input, pattern(kEBytes, 9));
  const std::vector<int> gaps = opens_between_reads(events);
  std::cout << "default accept_batch: on_opens before each of E's reads: " << join(gaps)
            << "\n";
  ASSERT_FALSE(gaps.empty());
  EXPECT_EQ(gaps[0], kBacklog) << join(gaps);
}

// ---- defer_accept_s -----------------------------------------------------------------------------

// The peer ports of the connections the server opened, in order.
std::mutex g_defer_mu;
std::vector<int> g_defer_opened;

void defer_on_open(Reactor*, int fd) {
  std::lock_guard<std::mutex> lock(g_defer_mu);
  g_defer_opened.push_back(testing_support::peer_port(fd));
}

void defer_on_data(Reactor*, int fd) {
  char buf[256];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) sock_write(fd, buf, static_cast<std::size_t>(n));
}

std::vector<int> defer_opened() {
  std::lock_guard<std::mutex> lock(g_defer_mu);
  return g_defer_opened;
}

// A silent client connects first and a speaking one second. Without the setting the backlog
// would hand the silent one over first; with it the server opens and serves the speaker alone
// (its first input read at once, its later input through epoll), and the silent one once it
// speaks (within the 5 s the kernel would otherwise hold it).
TEST(ServerSettingsTest, DeferAcceptOpensAConnectionOnlyOnceItsClientSpoke) {
  for (const int mode : {SOCK_ACCEPT_THREAD, SOCK_ACCEPT_REUSEPORT}) {
    SCOPED_TRACE(mode == SOCK_ACCEPT_THREAD ? "acceptor thread" : "reuseport");
    {
      std::lock_guard<std::mutex> lock(g_defer_mu);
      g_defer_opened.clear();
    }
    Running run;
    // Two shards: one would accept on its own listener in either mode.
    run.server = sock_server_start(.port = "0", .threads = 2, .accept_mode = mode,
                                   .on_data = defer_on_data, .on_open = defer_on_open,
                                   .defer_accept_s = 5);
    ASSERT_NE(run.server, nullptr) << std::strerror(errno);
    const int silent = run.connect();
    const int speaker = run.connect();
    testing_support::write_all(speaker, "speak");
    std::string got;
    ASSERT_TRUE(read_exactly(speaker, 5, &got));
    EXPECT_EQ(got, "speak");
    EXPECT_EQ(defer_opened(), std::vector<int>{testing_support::local_port(speaker)});
    // Its first input was read before epoll heard of it; once it outlived that callback it was
    // added, so later input is served too.
    testing_support::write_all(speaker, "again");
    got.clear();
    ASSERT_TRUE(read_exactly(speaker, 5, &got));
    EXPECT_EQ(got, "again");
    testing_support::write_all(silent, "late");
    got.clear();
    ASSERT_TRUE(read_exactly(silent, 4, &got));
    EXPECT_EQ(got, "late");
    EXPECT_EQ(defer_opened(), (std::vector<int>{testing_support::local_port(speaker),
                                                testing_support::local_port(silent)}));
  }
}

// ---- udata --------------------------------------------------------------------------------------

struct UdState {
  std::mutex mu;
  // Per shard reactor and callback ('o' on_open, 'd' on_data, 's' on_shutdown, 'c' on_close):
  // the udata values seen.
  std::map<Reactor*, std::map<char, std::vector<void*>>> seen;
  std::map<std::pair<Reactor*, int>, int> peer_port;  // live connections
  std::atomic<int> opens{0};
  std::atomic<int> closes{0};
  std::atomic<int> echoes{0};
};
UdState* ud = nullptr;

void ud_record(Reactor* r, char callback) {
  void* u = sock_server_udata(r);
  std::lock_guard<std::mutex> lock(ud->mu);
  ud->seen[r][callback].push_back(u);
}

void ud_on_open(Reactor* r, int fd) {
  ud_record(r, 'o');
  {
    std::lock_guard<std::mutex> lock(ud->mu);
    ud->peer_port[{r, fd}] = testing_support::peer_port(fd);
  }
  ++ud->opens;
}

void ud_on_data(Reactor* r, int fd) {
  ud_record(r, 'd');
  char buf[256];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    sock_write(fd, buf, static_cast<std::size_t>(n));
    ++ud->echoes;
  }
}

void ud_on_shutdown(Reactor* r, int) { ud_record(r, 's'); }

void ud_on_close(Reactor* r, int fd) {
  ud_record(r, 'c');
  {
    std::lock_guard<std::mutex> lock(ud->mu);
    ud->peer_port.erase({r, fd});
  }
  ++ud->closes;
}

// Two servers at once, 2 shards each, each with its own udata. On every shard, one connection
// is closed by its peer and one by the stop, so each shard runs on_open, on_data, on_close and
// on_shutdown; each of those sees its own server's udata.
TEST(ServerSettingsTest, SockServerUdataReturnsTheSettingsUdataInEveryCallbackOnEveryShard) {
  UdState state;
  ud = &state;
  int token_a = 0, token_b = 0;
  void* const udata[2] = {&token_a, &token_b};
  Running run[2];
  std::vector<Reactor*> shards[2];
  for (int k = 0; k < 2; ++k) {
    run[k].server = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 2,
                                      .on_data = ud_on_data, .on_shutdown = ud_on_shutdown,
                                      .on_close = ud_on_close, .on_open = ud_on_open,
                                      .idle_timeout_ms = SOCK_NO_TIMEOUT, .udata = udata[k]);
    ASSERT_NE(run[k].server, nullptr);
    for (int i = 0; i < 2; ++i) shards[k].push_back(sock_server_shard(run[k].server, i));
  }
  constexpr int kPerServer = 4;  // round robin: two per shard
  for (int k = 0; k < 2; ++k) {
    for (int i = 0; i < kPerServer; ++i) run[k].connect();
  }
  ASSERT_TRUE(wait_for([&] { return state.opens.load() == 2 * kPerServer; }));
  for (Running& r : run) {
    for (const int fd : r.clients) testing_support::write_all(fd, "x");
  }
  ASSERT_TRUE(wait_for([&] { return state.echoes.load() == 2 * kPerServer; }));

  // Per shard, the peer of its first connection closes.
  std::set<Reactor*> closing;
  std::vector<int> to_close;
  {
    std::lock_guard<std::mutex> lock(state.mu);
    for (const auto& [key, port] : state.peer_port) {
      if (!closing.insert(key.first).second) continue;
      for (Running& r : run) {
        for (const int fd : r.clients) {
          if (testing_support::local_port(fd) == port) to_close.push_back(fd);
        }
      }
    }
  }
  ASSERT_EQ(to_close.size(), 4u);
  for (const int fd : to_close) {
    for (Running& r : run) {
      r.clients.erase(std::remove(r.clients.begin(), r.clients.end(), fd), r.clients.end());
    }
    close(fd);
  }
  ASSERT_TRUE(wait_for([&] { return state.closes.load() == 4; }));
  for (Running& r : run) EXPECT_EQ(r.stop(), 0);

  std::lock_guard<std::mutex> lock(state.mu);
  for (int k = 0; k < 2; ++k) {
    for (Reactor* s : shards[k]) {
      for (const char callback : {'o', 'd', 's', 'c'}) {
        const std::vector<void*>& seen = state.seen[s][callback];
        EXPECT_FALSE(seen.empty()) << "server " << k << ", callback " << callback;
        for (void* u : seen) {
          EXPECT_EQ(u, udata[k]) << "server " << k << ", callback " << callback;
        }
      }
    }
  }
  EXPECT_EQ(state.seen.size(), 4u) << "callbacks ran on a reactor that is no server's shard";
}

// ---- sock_uuid2fd -------------------------------------------------------------------------------

struct UuState {
  std::mutex mu;
  struct Open {
    Reactor* shard;
    int fd;
    int peer_port;
    intptr_t uuid;  // sock_fd2uuid() in on_open
  };
  std::vector<Open> opens;
  std::atomic<int> open_count{0};
  std::atomic<int> close_count{0};
};
UuState* uu = nullptr;

void uu_on_open(Reactor* r, int fd) {
  const intptr_t uuid = sock_fd2uuid(fd);
  std::lock_guard<std::mutex> lock(uu->mu);
  uu->opens.push_back({r, fd, testing_support::peer_port(fd), uuid});
  ++uu->open_count;
}

void uu_on_data(Reactor*, int fd) {
  char buf[256];
  while (sock_read(fd, buf, sizeof buf) > 0) {}
}

void uu_on_close(Reactor*, int) { ++uu->close_count; }

// A client whose own fd is numbered at least 256, so the low numbers the server's sockets take
// are left to the server: a closed server socket's number goes to the next accept.
int connect_from_high_fd(int port) {
  const int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int fd = fcntl(s, F_DUPFD_CLOEXEC, 256);
  close(s);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

// Handles are taken on the shard threads (on_open); the test thread maps them back.
TEST(ServerSettingsTest, SockUuid2fdMapsALiveHandleToItsFdFromAnotherThreadUntilItCloses) {
  UuState state;
  uu = &state;
  Running run;
  run.server = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 2,
                                 .on_data = uu_on_data, .on_close = uu_on_close,
                                 .on_open = uu_on_open, .idle_timeout_ms = SOCK_NO_TIMEOUT);
  ASSERT_NE(run.server, nullptr);
  const int port = sock_server_port(run.server);
  constexpr int kClients = 4;
  for (int i = 0; i < kClients; ++i) {
    run.clients.push_back(connect_from_high_fd(port));
    ASSERT_GE(run.clients.back(), 0);
  }
  ASSERT_TRUE(wait_for([&] { return state.open_count.load() == kClients; }));
  std::vector<UuState::Open> opens;
  {
    std::lock_guard<std::mutex> lock(state.mu);
    opens = state.opens;
  }
  std::set<Reactor*> shards;
  for (const UuState::Open& o : opens) {
    shards.insert(o.shard);
    EXPECT_GE(o.uuid, 0);
    errno = 0;
    EXPECT_EQ(sock_uuid2fd(o.uuid), o.fd);
    EXPECT_EQ(errno, 0);
  }
  EXPECT_EQ(shards.size(), 2u) << "every shard owns connections";

  // The peer of the first connection closes; the server closes its side.
  const UuState::Open old = opens[0];
  const auto client =
      std::find_if(run.clients.begin(), run.clients.end(),
                   [&](int fd) { return testing_support::local_port(fd) == old.peer_port; });
  ASSERT_NE(client, run.clients.end());
  close(*client);
  run.clients.erase(client);
  ASSERT_TRUE(wait_for([&] { return state.close_count.load() == 1; }));
  errno = 0;
  EXPECT_EQ(sock_uuid2fd(old.uuid), -1);
  EXPECT_EQ(errno, EBADF);
  for (std::size_t i = 1; i < opens.size(); ++i) {
    EXPECT_EQ(sock_uuid2fd(opens[i].uuid), opens[i].fd);
  }

  // A later connection on the same fd number has a handle of its own; the old one still fails.
  // (Each accept takes the lowest free number: the closed one, unless something else took it.)
  UuState::Open reused{};
  for (int tries = 0; tries < 8 && reused.fd != old.fd; ++tries) {
    run.clients.push_back(connect_from_high_fd(port));
    ASSERT_GE(run.clients.back(), 0);
    const int target = kClients + 1 + tries;
    ASSERT_TRUE(wait_for([&] { return state.open_count.load() == target; }));
    std::lock_guard<std::mutex> lock(state.mu);
    reused = state.opens.back();
  }
  ASSERT_EQ(reused.fd, old.fd) << "no new connection got fd " << old.fd;
  EXPECT_NE(reused.uuid, old.uuid);
  EXPECT_EQ(sock_uuid2fd(reused.uuid), old.fd);
  errno = 0;
  EXPECT_EQ(sock_uuid2fd(old.uuid), -1);
  EXPECT_EQ(errno, EBADF);

  EXPECT_EQ(run.stop(), 0);
  std::lock_guard<std::mutex> lock(state.mu);
  for (const UuState::Open& o : state.opens) {
    errno = 0;
    EXPECT_EQ(sock_uuid2fd(o.uuid), -1) << "fd " << o.fd << " after the stop";
    EXPECT_EQ(errno, EBADF);
  }
}

// ---- sock_server_request_stop / sock_server_wait ------------------------------------------------

TEST(ServerSettingsTest, SockServerWaitReturnsOnceAnotherThreadRequestsTheStop) {
  SockServer* server = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 2);
  ASSERT_NE(server, nullptr);
  std::atomic<pid_t> tid{0};
  std::atomic<bool> returned{false};
  std::thread waiter([&] {
    tid = testing_support::current_tid();
    sock_server_wait(server);
    returned = true;
  });
  // Blocked: its thread sleeps in read(2) and has not returned.
  // sock_server_wait reads an eventfd.
  const bool blocked = wait_for(
      [&] { return tid.load() != 0 && testing_support::sleeps_in(tid.load(), {SYS_read}); });
  EXPECT_TRUE(blocked);
  EXPECT_FALSE(returned.load());
  std::thread([server] { sock_server_request_stop(server); }).join();
  const bool woke = wait_for([&] { return returned.load(); });
  EXPECT_TRUE(woke) << "sock_server_wait still blocked after sock_server_request_stop";
  if (!woke) sock_server_request_stop(server);  // let the join below fail the test, not hang it
  waiter.join();

  // The request stays: a second wait returns at once.
  std::atomic<bool> second{false};
  std::thread again([&] {
    sock_server_wait(server);
    second = true;
  });
  const bool second_returned = wait_for([&] { return second.load(); });
  EXPECT_TRUE(second_returned) << "a second sock_server_wait blocked";
  if (!second_returned) sock_server_request_stop(server);
  again.join();
  EXPECT_EQ(sock_server_stop(server), 0);
}

}  // namespace
