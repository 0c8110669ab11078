// No byte ever reaches the wrong connection (issue 3, section 2, test (a)): on a 2-shard server,
// clients churn through connections (some reset, some close normally, some before reading
// anything) while a user thread writes tagged records through the handles (sock_fd2uuid) it
// holds, long-stale ones included. Every client checks every record it receives. In both accept
// modes, and (for handles) again with TCP_DEFER_ACCEPT, where each connection's first read runs
// before its fd enters its shard's epoll set.
//
// Test (b), the deterministic case (in one epoll batch, callback 1 closes socket 2 and a new
// socket takes its fd number: the old event never reaches the new socket), is
// tests/engine/reactor_test.cc's StaleEventInTheSameBatchNeverReachesTheSocketThatReusedTheFd.
// It needs control over one epoll batch, which a shard's thread does not give; a shard runs
// that same reactor loop, so it is not repeated here.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "shards/server.h"
#include "tests/testing/loopback.h"

namespace {

using Clock = std::chrono::steady_clock;

// Connection lifetimes per run: the 100,000; under a sanitizer 20,000, the research
// notes' figure for TSan (ASan's 50,000 took the binary's four runs to 52 s in CI, its
// longest test, on a 2-vCPU machine whose CI should stay under 20 minutes).
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kLifetimes = 20000;
#else
constexpr int kLifetimes = 100000;
#endif

constexpr int kShards = 2;
// A client thread that sees none of its connections end for this long has hung.
constexpr auto kStallLimit = std::chrono::seconds(30);
// Concurrent connections: kClientThreads * kSlotsPerThread, well under the 20,000 fds allowed.
constexpr int kClientThreads = 2;
constexpr int kSlotsPerThread = 128;

// What the user thread sends: 8-byte records {tag, seq}. A connection's records carry its tag
// and consecutive seqs from 0, so a foreign, lost, repeated or reordered record shows.
struct Record {
  uint32_t tag;
  uint32_t seq;
};
static_assert(sizeof(Record) == 8);

// Each fresh handle first gets kBurstWrites writes of kBurstRecords records; a reading client
// waits for at most that many bytes, so it never waits on the random writes.
constexpr int kBurstWrites = 4;
constexpr int kBurstRecords = 10;
constexpr std::size_t kMaxWant = kBurstWrites * kBurstRecords * sizeof(Record);
// Then kRandomWrites writes per fresh handle to held handles, mostly closed ones by now.
constexpr int kRandomWrites = 4;
// Handles the user thread keeps: a ring of the latest kRing (its newest kRecent are the ones
// racing with their close), plus the first kAncient forever (their fd numbers were reused
// thousands of times since).
constexpr std::size_t kRing = 4096;
constexpr std::size_t kRecent = 256;
constexpr std::size_t kAncient = 64;

// Clients connect from these source addresses in turn (to 127.0.0.1), so that the TIME_WAITs
// of normal closes spread over several ephemeral port spaces.
constexpr int kSourceAddresses = 8;

// ---- The server side ---------------------------------------------------------------------

// One shard's view of one of its fds; touched only on that shard's thread (a closed fd's number
// may be reused on the other shard before this shard's on_close runs).
struct Conn {
  intptr_t uuid = -1;
  uint32_t tag = 0;
  unsigned tag_bytes = 0;  // of the tag read so far (the client's first 4 bytes)
};

struct Fresh {
  intptr_t uuid;
  int fd;
  uint32_t tag;
};

// What the user thread writes through.
enum class Via { kHandle, kFdNumber };

struct World {
  Via via = Via::kHandle;
  std::atomic<Reactor*> shard_api[kShards] = {};
  std::unordered_map<int, Conn> conns[kShards];  // shard i's open fds, its thread only

  std::atomic<long> opens{0}, closes{0};
  std::atomic<long> double_opens{0};    // on_open for an fd its shard had open already
  std::atomic<long> orphan_closes{0};   // on_close for an fd its shard did not have open
  std::atomic<long> orphan_data{0};     // on_data for an fd its shard did not have open
  std::atomic<long> bad_handles{0};     // sock_fd2uuid failed in on_open

  // Shard threads -> the user thread: handles whose tag is known.
  std::mutex mutex;
  std::condition_variable wake;
  std::vector<Fresh> fresh;
  bool done = false;
};

World* g_world = nullptr;

int shard_of(Reactor* r) {
  for (int i = 0; i < kShards; ++i) {
    if (g_world->shard_api[i].load(std::memory_order_acquire) == r) return i;
  }
  ADD_FAILURE() << "callback from an unknown reactor";
  return 0;
}

void on_open(Reactor* r, int fd) {
  World& w = *g_world;
  ++w.opens;
  auto [it, inserted] = w.conns[shard_of(r)].try_emplace(fd);
  if (!inserted) {
    ++w.double_opens;
    it->second = Conn{};
  }
  it->second.uuid = sock_fd2uuid(fd);
  if (it->second.uuid < 0) ++w.bad_handles;
}

void on_close(Reactor* r, int fd) {
  World& w = *g_world;
  ++w.closes;
  if (w.conns[shard_of(r)].erase(fd) != 1) ++w.orphan_closes;
}

// Learns the tag from the first 4 bytes, hands the handle over, and consumes the rest.
void on_data(Reactor* r, int fd) {
  World& w = *g_world;
  auto it = w.conns[shard_of(r)].find(fd);
  if (it == w.conns[shard_of(r)].end()) {
    ++w.orphan_data;
    return;
  }
  Conn& c = it->second;
  unsigned char buf[4096];
  for (;;) {
    const std::size_t want = c.tag_bytes < 4 ? 4 - c.tag_bytes : sizeof buf;
    const ssize_t n = sock_read(fd, buf, want);
    if (n <= 0) return;  // nothing more now, or EOF/error: the engine closes the connection
    if (c.tag_bytes >= 4) continue;
    for (ssize_t i = 0; i < n; ++i) c.tag |= uint32_t{buf[i]} << (8 * c.tag_bytes++);
    if (c.tag_bytes == 4) {
      std::lock_guard<std::mutex> lock(w.mutex);
      w.fresh.push_back(Fresh{c.uuid, fd, c.tag});
      w.wake.notify_one();
    }
  }
}

// ---- The user thread ---------------------------------------------------------------------

struct WriterStats {
  long writes_ok = 0;
  long writes_ebadf = 0;   // the connection (or fd number) was closed at call time
  long writes_other = 0;   // any other failure (must not happen)
  int other_errno = 0;
};

struct Held {
  intptr_t uuid;
  int fd;
  uint32_t tag;
  uint32_t seq;  // the next record's; advances only with writes that were accepted
};

void write_records(Via via, Held& h, int count, WriterStats* stats) {
  Record records[kBurstRecords];
  for (int i = 0; i < count; ++i) records[i] = Record{h.tag, h.seq + static_cast<uint32_t>(i)};
  const std::size_t length = static_cast<std::size_t>(count) * sizeof(Record);
  const ssize_t r = via == Via::kHandle
                        ? sock_write2(.buffer = records, .length = length, .uuid = h.uuid)
                        : sock_write(h.fd, records, length);
  if (r == 0) {
    ++stats->writes_ok;
    h.seq += static_cast<uint32_t>(count);
  } else if (errno == EBADF) {
    ++stats->writes_ebadf;
  } else {
    ++stats->writes_other;
    stats->other_errno = errno;
  }
}

void user_thread(World* w, WriterStats* stats) {
  std::mt19937 rng(7);
  std::vector<Held> ancient, ring;
  std::size_t ring_next = 0;  // ring's oldest entry once it is full; newest is just before
  std::vector<Fresh> batch;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(w->mutex);
      w->wake.wait(lock, [&] { return w->done || !w->fresh.empty(); });
      if (w->fresh.empty()) return;  // done
      batch.swap(w->fresh);
    }
    for (const Fresh& f : batch) {
      Held h{f.uuid, f.fd, f.tag, 0};
      for (int i = 0; i < kBurstWrites; ++i) write_records(w->via, h, kBurstRecords, stats);
      if (ancient.size() < kAncient) {
        ancient.push_back(h);
      } else if (ring.size() < kRing) {
        ring.push_back(h);
      } else {
        ring[ring_next] = h;
        ring_next = (ring_next + 1) % kRing;
      }
      for (int i = 0; i < kRandomWrites && !ring.empty(); ++i) {
        const unsigned pick = rng() % 10;
        Held* target;
        if (pick < 2) {
          target = &ancient[rng() % ancient.size()];
        } else if (pick < 6) {
          const std::size_t back = 1 + rng() % std::min(kRecent, ring.size());
          target = &ring[(ring_next + ring.size() - back) % ring.size()];
        } else {
          target = &ring[rng() % ring.size()];
        }
        write_records(w->via, *target, 1 + static_cast<int>(rng() % 4), stats);
      }
    }
    batch.clear();
  }
}

// ---- The clients -------------------------------------------------------------------------

struct ClientStats {
  long lifetimes = 0;
  long resets = 0;
  long early_closes = 0;      // closed right after sending the tag, before reading
  long checked_bytes = 0;     // bytes of whole records checked
  long foreign_bytes = 0;     // bytes of records carrying another connection's tag
  long bad_seq = 0;           // own records out of sequence (lost, repeated, reordered)
  long unexpected_ends = 0;   // EOF or an error while still expecting bytes
  long connect_failures = 0;
  int last_errno = 0;
};

std::atomic<int> g_next_tag{1};

struct Slot {
  int fd = -1;
  uint32_t tag = 0;
  bool connecting = false;
  bool reset = false;       // close with a RST (SO_LINGER {1, 0}) rather than a FIN
  std::size_t want = 0;     // bytes to receive before closing; 0: close right after the tag
  std::size_t got = 0;
  uint32_t next_seq = 0;
  unsigned char partial[sizeof(Record)];
  std::size_t partial_len = 0;
};

class Client {
 public:
  Client(int port, int index, ClientStats* stats)
      : port_(port), rng_(1000 + static_cast<unsigned>(index)), stats_(stats) {}

  // Runs connections until every tag is taken and its own connections ended. False if none
  // of its connections ended for kStallLimit: a hang, not a slow machine (the work is fixed,
  // and a sanitizer build on a busy machine only makes it take longer).
  bool run() {
    std::vector<Slot> slots(kSlotsPerThread);
    std::vector<pollfd> fds;
    std::vector<Slot*> polled;
    bool tags_left = true;
    long ended = stats_->lifetimes;
    Clock::time_point last_end = Clock::now();
    for (;;) {
      int active = 0;
      for (Slot& s : slots) {
        if (s.fd < 0 && tags_left) tags_left = start(&s);
        if (s.fd >= 0) ++active;
      }
      if (!active) return true;
      if (stats_->lifetimes != ended) {
        ended = stats_->lifetimes;
        last_end = Clock::now();
      }
      if (Clock::now() - last_end > kStallLimit) {
        for (Slot& s : slots) {
          if (s.fd >= 0) close(s.fd);
        }
        return false;
      }
      fds.clear();
      polled.clear();
      for (Slot& s : slots) {
        if (s.fd < 0) continue;
        fds.push_back(pollfd{s.fd, static_cast<short>(s.connecting ? POLLOUT : POLLIN), 0});
        polled.push_back(&s);
      }
      if (poll(fds.data(), fds.size(), 50) <= 0) continue;
      for (std::size_t i = 0; i < fds.size(); ++i) {
        if (!fds[i].revents) continue;
        Slot& s = *polled[i];
        if (s.connecting) {
          connected(&s);
        } else {
          receive(&s);
        }
      }
    }
  }

 private:
  // Claims the next tag and starts its connection. False once every tag is taken.
  bool start(Slot* s) {
    const int tag = g_next_tag.fetch_add(1);
    if (tag > kLifetimes) return false;
    *s = Slot{};
    s->tag = static_cast<uint32_t>(tag);
    s->reset = rng_() % 2 == 0;
    s->want = rng_() % 5 == 0 ? 0 : 1 + rng_() % kMaxWant;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) return fail(s, errno);
    const int one = 1;
    setsockopt(s->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    const uint32_t source = INADDR_LOOPBACK + 1 + static_cast<uint32_t>(tag % kSourceAddresses);
    addr.sin_addr.s_addr = htonl(source);
    if (bind(s->fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) return fail(s, errno);
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s->fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      send_tag(s);
    } else if (errno == EINPROGRESS) {
      s->connecting = true;
    } else {
      return fail(s, errno);
    }
    return true;
  }

  bool fail(Slot* s, int err) {
    ++stats_->connect_failures;
    stats_->last_errno = err;
    end(s);
    return true;
  }

  void connected(Slot* s) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
      fail(s, err);
      return;
    }
    s->connecting = false;
    send_tag(s);
  }

  // The tag, then a few bytes the server consumes; then an early close for some.
  void send_tag(Slot* s) {
    unsigned char out[4 + 64];
    for (unsigned i = 0; i < 4; ++i) out[i] = static_cast<unsigned char>(s->tag >> (8 * i));
    const std::size_t filler = rng_() % 64;
    std::memset(out + 4, 'x', filler);
    const ssize_t n = send(s->fd, out, 4 + filler, MSG_NOSIGNAL);
    if (n != static_cast<ssize_t>(4 + filler)) {  // a fresh socket's buffer takes it all
      ++stats_->unexpected_ends;
      stats_->last_errno = n < 0 ? errno : 0;
      end(s);
      return;
    }
    if (s->want == 0) {
      ++stats_->early_closes;
      end(s);
    }
  }

  void receive(Slot* s) {
    unsigned char buf[4096];
    for (;;) {
      const ssize_t n = recv(s->fd, buf, sizeof buf, 0);
      if (n > 0) {
        check(s, buf, static_cast<std::size_t>(n));
        if (s->got >= s->want) {
          end(s);
          return;
        }
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
      ++stats_->unexpected_ends;  // the server never closes first
      stats_->last_errno = n < 0 ? errno : 0;
      end(s);
      return;
    }
  }

  void check(Slot* s, const unsigned char* data, std::size_t n) {
    s->got += n;
    while (n) {
      const std::size_t take = std::min(n, sizeof(Record) - s->partial_len);
      std::memcpy(s->partial + s->partial_len, data, take);
      s->partial_len += take;
      data += take;
      n -= take;
      if (s->partial_len < sizeof(Record)) break;
      s->partial_len = 0;
      Record r;
      std::memcpy(&r, s->partial, sizeof r);
      stats_->checked_bytes += sizeof r;
      if (r.tag != s->tag) {
        stats_->foreign_bytes += sizeof r;
      } else if (r.seq != s->next_seq++) {
        ++stats_->bad_seq;
        s->next_seq = r.seq + 1;
      }
    }
  }

  void end(Slot* s) {
    if (s->fd >= 0) {
      if (s->reset) {
        ++stats_->resets;
        testing_support::reset_on_close(s->fd);
      }
      close(s->fd);
    }
    s->fd = -1;
    ++stats_->lifetimes;
  }

  int port_;
  std::mt19937 rng_;
  ClientStats* stats_;
};

// ---- The runs ----------------------------------------------------------------------------

struct Churn {
  bool finished = true;
  ClientStats clients;
  WriterStats writer;
  long opens = 0, closes = 0;  // once every client was gone
  long closes_at_stop = 0;     // on_close calls made by sock_server_stop
  long double_opens = 0, orphan_closes = 0, orphan_data = 0, bad_handles = 0;
  uint64_t packets_out = 0;    // both shard pools, once every client was gone
};

uint64_t packets_out(SockServer* server) {
  uint64_t out = 0;
  for (int i = 0; i < kShards; ++i) {
    SockPoolStats stats{};
    EXPECT_EQ(sock_pool_stats(sock_server_shard(server, i), &stats), 0);
    out += stats.outstanding;
  }
  return out;
}

// kLifetimes connections through a 2-shard server in accept `mode`, while the user thread
// writes via `via`. Returns once the server has stopped. `defer_accept_s`: the server's setting
// (every client sends its tag at once, so each connection is accepted with its first input
// waiting, read before the shard's epoll set hears of it).
Churn churn(int mode, Via via, unsigned defer_accept_s = 0) {
  Churn run;
  World world;
  world.via = via;
  g_world = &world;
  g_next_tag = 1;
  SockServer* server = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = kShards,
                                         .accept_mode = mode, .on_data = on_data,
                                         .on_close = on_close, .on_open = on_open,
                                         .defer_accept_s = defer_accept_s);
  if (!server || sock_server_shard_count(server) != kShards) {
    ADD_FAILURE() << "sock_server_start: " << std::strerror(errno);
    run.finished = false;
    return run;
  }
  for (int i = 0; i < kShards; ++i) world.shard_api[i] = sock_server_shard(server, i);

  const auto start = Clock::now();
  std::thread user([&] { user_thread(&world, &run.writer); });
  ClientStats clients[kClientThreads];
  bool finished[kClientThreads] = {};
  std::vector<std::thread> client_threads;
  for (int i = 0; i < kClientThreads; ++i) {
    client_threads.emplace_back([&, i] {
      finished[i] = Client(sock_server_port(server), i, &clients[i]).run();
    });
  }
  for (auto& t : client_threads) t.join();
  {
    std::lock_guard<std::mutex> lock(world.mutex);
    world.done = true;
    world.wake.notify_one();
  }
  user.join();
  for (int i = 0; i < kClientThreads; ++i) {
    const ClientStats& c = clients[i];
    run.finished = run.finished && finished[i];
    run.clients.lifetimes += c.lifetimes;
    run.clients.resets += c.resets;
    run.clients.early_closes += c.early_closes;
    run.clients.checked_bytes += c.checked_bytes;
    run.clients.foreign_bytes += c.foreign_bytes;
    run.clients.bad_seq += c.bad_seq;
    run.clients.unexpected_ends += c.unexpected_ends;
    run.clients.connect_failures += c.connect_failures;
    if (c.last_errno) run.clients.last_errno = c.last_errno;
  }

  // Every client is gone: the server sees each connection open and close, and its shards get
  // every packet back (just after on_close: wait for both).
  const auto settle_deadline = Clock::now() + std::chrono::seconds(15);
  while (!(world.opens == kLifetimes && world.closes == world.opens && packets_out(server) == 0) &&
         Clock::now() < settle_deadline) {
    const timespec pause{0, 1000000};  // waiting for the shard threads
    nanosleep(&pause, nullptr);
  }
  run.packets_out = packets_out(server);
  run.opens = world.opens;
  run.closes = world.closes;
  EXPECT_EQ(sock_server_stop(server), 0);
  run.closes_at_stop = world.closes - run.closes;
  run.double_opens = world.double_opens;
  run.orphan_closes = world.orphan_closes;
  run.orphan_data = world.orphan_data;
  run.bad_handles = world.bad_handles;
  g_world = nullptr;

  std::printf(
      "accept %s, writes by %s: %ld lifetimes (%ld reset, %ld closed before reading) in %.1f s; "
      "%ld bytes checked, %ld foreign; writes: %ld accepted, %ld EBADF at call time, %ld other; "
      "server: %ld opens, %ld closes\n",
      mode == SOCK_ACCEPT_THREAD ? "thread" : "reuseport",
      via == Via::kHandle ? "handle" : "fd number", run.clients.lifetimes, run.clients.resets,
      run.clients.early_closes, std::chrono::duration<double>(Clock::now() - start).count(),
      run.clients.checked_bytes, run.clients.foreign_bytes, run.writer.writes_ok,
      run.writer.writes_ebadf, run.writer.writes_other, run.opens, run.closes);
  return run;
}

// Every lifetime ran to its end, each connection had exactly one on_open and one on_close on
// its shard (none left for the stop), and nothing stayed checked out of the pools.
void expect_every_lifetime_clean(const Churn& run) {
  EXPECT_TRUE(run.finished);
  EXPECT_EQ(run.clients.lifetimes, kLifetimes);
  EXPECT_EQ(run.clients.unexpected_ends, 0) << "last errno " << run.clients.last_errno;
  EXPECT_EQ(run.clients.connect_failures, 0) << "last errno " << run.clients.last_errno;
  EXPECT_GT(run.clients.checked_bytes, 0);
  EXPECT_EQ(run.writer.writes_other, 0) << "errno " << run.writer.other_errno;
  EXPECT_EQ(run.opens, kLifetimes);
  EXPECT_EQ(run.closes, run.opens);
  EXPECT_EQ(run.closes_at_stop, 0);
  EXPECT_EQ(run.double_opens, 0);
  EXPECT_EQ(run.orphan_closes, 0);
  EXPECT_EQ(run.orphan_data, 0);
  EXPECT_EQ(run.bad_handles, 0);
  EXPECT_EQ(run.packets_out, 0u);
}

// ---- The tests ---------------------------------------------------------------------------

class StaleHandleTest : public ::testing::TestWithParam<int> {};

TEST_P(StaleHandleTest, NoByteEverReachesTheWrongConnectionThroughHandlesStaleOnesIncluded) {
  const Churn run = churn(GetParam(), Via::kHandle);
  expect_every_lifetime_clean(run);
  EXPECT_EQ(run.clients.foreign_bytes, 0);
  EXPECT_EQ(run.clients.bad_seq, 0);
  // Most stale writes fail at call time; the rest, posted before their connection closed, are
  // dropped at dispatch (the 0 foreign bytes above).
  EXPECT_GT(run.writer.writes_ebadf, 0);
}

// A write by fd number goes to whichever connection holds the number at call time (handles
// exist for that), but from another thread it always runs on the owner: a call racing with
// the close or re-open of its number never runs inline on the caller's thread, where it
// could flush or close the fd behind its shard's back.
TEST_P(StaleHandleTest, CrossThreadWritesByFdNumberRunOnTheOwnerWhileTheNumberIsReused) {
  const Churn run = churn(GetParam(), Via::kFdNumber);
  expect_every_lifetime_clean(run);
  EXPECT_EQ(run.clients.bad_seq, 0);  // a connection's own records: in order, none lost
  EXPECT_GT(run.writer.writes_ebadf, 0);
}

// The same with TCP_DEFER_ACCEPT: the acceptor's batches carry their fds' waiting input, and
// each connection's first read runs before its fd enters the shard's epoll set.
class StaleHandleDeferredAcceptTest : public ::testing::TestWithParam<int> {};

TEST_P(StaleHandleDeferredAcceptTest, NoByteEverReachesTheWrongConnectionReadBeforeEpollKnowsIt) {
  const Churn run = churn(GetParam(), Via::kHandle, 1);
  expect_every_lifetime_clean(run);
  EXPECT_EQ(run.clients.foreign_bytes, 0);
  EXPECT_EQ(run.clients.bad_seq, 0);
  EXPECT_GT(run.writer.writes_ebadf, 0);
}

std::string mode_name(const ::testing::TestParamInfo<int>& info) {
  return info.param == SOCK_ACCEPT_THREAD ? "AcceptThread" : "AcceptReuseport";
}

INSTANTIATE_TEST_SUITE_P(AcceptModes, StaleHandleTest,
                         ::testing::Values(SOCK_ACCEPT_THREAD, SOCK_ACCEPT_REUSEPORT), mode_name);
INSTANTIATE_TEST_SUITE_P(AcceptModes, StaleHandleDeferredAcceptTest,
                         ::testing::Values(SOCK_ACCEPT_THREAD, SOCK_ACCEPT_REUSEPORT), mode_name);

}  // namespace
