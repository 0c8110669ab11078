// Cross-thread writes on the sharded server (shards/server.h with libsock.h's "Threads"): every
// sock_write made off a connection's owner shard is posted to that shard's inbox and arrives
// complete and in order, and a packet freed on a thread other than its pool's goes back to
// that pool, whose counters stay exact.
//
// Two connections, one owned by each of two shards. Their clients drive the server with one
// control byte at a time (on_data reads one byte per call, so the reactor calls again on its
// next iteration and a shard that produces writes keeps serving its own inbox between batches):
//   'G'  write one batch of records to the connection owned by the OTHER shard,
//   'S'  snapshot this shard's pool counters (exact: on the owner thread),
//   'P'  check a packet out of this shard's pool and hand it to the test thread,
//   'X'  check a packet out of this shard's pool and sock_send_packet it to the other
//        shard's connection (that shard frees it once sent).
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/libsock.h"
#include "shards/server.h"
#include "tests/testing/loopback.h"
#include "tests/testing/wait_for.h"

namespace {

using testing_support::wait_for;

#if defined(__SANITIZE_THREAD__)
constexpr uint32_t kRecordsPerWriter = 100000;  // TSan runs the same code about 10x slower
#else
constexpr uint32_t kRecordsPerWriter = 1000000;
#endif
// Records one 'G' makes a shard write: enough that posts dominate, few enough that the shard
// drains its own inbox (kDrainBatch = 1024 calls) between two batches.
constexpr uint32_t kBatch = 1000;
static_assert(kRecordsPerWriter % kBatch == 0);
// Records a writer thread may have posted ahead of what its client has read. Without it a
// writer that outruns the shard would park up to a million calls in the inbox; with it the
// test proves delivery and order, not how much an unbounded queue can absorb.
constexpr uint32_t kWindow = 1u << 15;

// The unit every writer posts: one sock_write of 8 bytes.
struct Record {
  uint32_t writer;
  uint32_t seq;
};
static_assert(sizeof(Record) == 8);

// FNV-1a over a byte stream, folded in as the bytes are written or read.
uint64_t fnv(uint64_t h, const void* data, std::size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}
constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ull;

// What the callbacks share with the test. The server's callbacks are plain functions, so this
// is a global, reset by each test before it starts a server.
struct Shared {
  std::array<std::atomic<Reactor*>, 2> shards{};
  // Connections, filled by on_open on the shard threads.
  std::mutex mu;
  struct Opened {
    Reactor* shard;
    int fd;
    intptr_t uuid;
  };
  std::vector<Opened> opened;
  std::atomic<int> opens{0};
  // The server-side fd and handle of the connection each shard owns (set before any 'G').
  std::array<std::atomic<int>, 2> conn_fd{};
  std::array<std::atomic<intptr_t>, 2> conn_uuid{};
  // 'G': what shard k has written (touched by shard k's thread only, read once it is done).
  std::array<std::atomic<uint32_t>, 2> written{};
  std::array<std::atomic<uint64_t>, 2> written_sum{};
  std::atomic<int> write_failures{0};
  // 'S': the latest snapshot of shard k's pool and how many were taken.
  std::array<SockPoolStats, 2> stats{};  // under mu
  std::array<std::atomic<int>, 2> snapshots{};
  // 'P': a packet checked out inside shard k's callback.
  std::array<std::atomic<Packet*>, 2> packet{};
  // 'X': a packet shard k sent to the other shard's connection, and sock_send_packet's result.
  std::array<std::atomic<int>, 2> sent_packets{};
  std::atomic<int> send_failures{0};
};
Shared* g = nullptr;

int shard_index(Reactor* r) {
  for (int k = 0; k < 2; ++k) {
    if (g->shards[static_cast<std::size_t>(k)].load() == r) return k;
  }
  return -1;
}

// The bytes of an 'X' packet from shard k.
std::string packet_bytes(int k) { return testing_support::pattern(5000, 100 + static_cast<unsigned>(k)); }

void on_open(Reactor* r, int fd) {
  {
    std::lock_guard<std::mutex> lock(g->mu);
    g->opened.push_back({r, fd, sock_fd2uuid(fd)});
  }
  ++g->opens;
}

void write_batch(int k) {
  const auto other = static_cast<std::size_t>(1 - k);
  const auto self = static_cast<std::size_t>(k);
  uint32_t seq = g->written[self].load(std::memory_order_relaxed);
  uint64_t sum = g->written_sum[self].load(std::memory_order_relaxed);
  for (uint32_t i = 0; i < kBatch; ++i, ++seq) {
    const Record rec{static_cast<uint32_t>(k), seq};
    sum = fnv(sum, &rec, sizeof rec);
    // Shard 0 names the connection by fd, shard 1 by handle: both routes post to the owner.
    const ssize_t r = k == 0 ? sock_write(g->conn_fd[other].load(), &rec, sizeof rec)
                             : sock_write2(.buffer = &rec, .length = sizeof rec,
                                           .uuid = g->conn_uuid[other].load());
    if (r != 0) ++g->write_failures;
  }
  g->written_sum[self].store(sum, std::memory_order_relaxed);
  g->written[self].store(seq, std::memory_order_release);
}

void on_data(Reactor* r, int fd) {
  const int k = shard_index(r);
  char c;
  if (k < 0 || sock_read(fd, &c, 1) != 1) return;
  const auto self = static_cast<std::size_t>(k);
  switch (c) {
    case 'G':
      write_batch(k);
      break;
    case 'S': {
      SockPoolStats s{};
      sock_pool_stats(r, &s);
      {
        std::lock_guard<std::mutex> lock(g->mu);
        g->stats[self] = s;
      }
      ++g->snapshots[self];
      break;
    }
    case 'P':
      g->packet[self].store(sock_checkout_packet());
      break;
    case 'X': {
      Packet* p = sock_checkout_packet();
      const std::string bytes = packet_bytes(k);
      std::memcpy(p->internal_memory, bytes.data(), bytes.size());
      p->length = static_cast<ssize_t>(bytes.size());
      if (sock_send_packet(g->conn_fd[static_cast<std::size_t>(1 - k)].load(), p) != 0) {
        ++g->send_failures;
        sock_free_packet(p);
      }
      ++g->sent_packets[self];
      break;
    }
    default:
      break;
  }
}

// A client's view of a stream of Records: checked in order per writer as they arrive.
struct RecordReader {
  int fd = -1;
  std::string carry;  // a record split across reads
  std::array<uint32_t, 2> next{};  // next expected seq per writer
  uint64_t records = 0;
  uint64_t sum = kFnvBasis;
  uint64_t bad = 0;  // records out of order or from an unknown writer
  bool closed = false;

  void pump() {
    char buf[65536];
    for (;;) {
      const ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) closed = true;
        return;
      }
      sum = fnv(sum, buf, static_cast<std::size_t>(n));
      carry.append(buf, static_cast<std::size_t>(n));
      std::size_t off = 0;
      for (; off + sizeof(Record) <= carry.size(); off += sizeof(Record)) {
        Record rec;
        std::memcpy(&rec, carry.data() + off, sizeof rec);
        if (rec.writer > 1 || rec.seq != next[rec.writer]) {
          ++bad;
        } else {
          ++next[rec.writer];
        }
        ++records;
      }
      carry.erase(0, off);
    }
  }
};

class CrossThreadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g = &shared_;
    server_ = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 2,
                                .on_data = on_data, .on_open = on_open,
                                .idle_timeout_ms = SOCK_NO_TIMEOUT);
    ASSERT_NE(server_, nullptr);
    for (int k = 0; k < 2; ++k) g->shards[static_cast<std::size_t>(k)] = sock_server_shard(server_, k);
    // Connect one client at a time until each shard owns one connection; the shard that ran
    // on_open is the owner (placement is the server's business, so don't assume round-robin).
    for (int attempt = 0; attempt < 32 && (client_[0] < 0 || client_[1] < 0); ++attempt) {
      const int before = g->opens.load();
      const int c = testing_support::connect_client(sock_server_port(server_));
      ASSERT_TRUE(wait_for([&] { return g->opens.load() > before; }));
      Shared::Opened o;
      {
        std::lock_guard<std::mutex> lock(g->mu);
        o = g->opened.back();
      }
      const int k = shard_index(o.shard);
      ASSERT_GE(k, 0) << "on_open ran with a reactor that is not one of the shards";
      const auto kk = static_cast<std::size_t>(k);
      if (client_[kk] >= 0) {
        spare_.push_back(c);
        continue;
      }
      client_[kk] = c;
      ASSERT_GT(o.uuid, 0);
      g->conn_fd[kk] = o.fd;
      g->conn_uuid[kk] = o.uuid;
    }
    ASSERT_GE(client_[0], 0) << "no connection landed on shard 0";
    ASSERT_GE(client_[1], 0) << "no connection landed on shard 1";
  }

  void TearDown() override {
    if (server_) {
      EXPECT_EQ(sock_server_stop(server_), 0);
    }
    for (const int c : client_) {
      if (c >= 0) close(c);
    }
    for (const int c : spare_) close(c);
    g = nullptr;
  }

  // Sends control byte c on the client of shard k.
  void send_control(int k, char c) {
    testing_support::write_all(client_[static_cast<std::size_t>(k)], std::string(1, c));
  }

  // Shard k's pool counters, read on its own thread (exact).
  SockPoolStats snapshot(int k) {
    const auto kk = static_cast<std::size_t>(k);
    const int before = g->snapshots[kk].load();
    send_control(k, 'S');
    EXPECT_TRUE(wait_for([&] { return g->snapshots[kk].load() > before; }));
    std::lock_guard<std::mutex> lock(g->mu);
    return g->stats[kk];
  }

  // Reads client k's stream until it holds `records` records (or it closes, or time is up).
  void read_records(RecordReader& reader, uint64_t records) {
    ASSERT_TRUE(wait_for([&] {
      reader.pump();
      return reader.records >= records || reader.closed;
    }));
  }

  Shared shared_;
  SockServer* server_ = nullptr;
  std::array<int, 2> client_{-1, -1};
  std::vector<int> spare_;  // clients that landed on a shard that already had one
};

// The counters are consistent and nothing is left out once every write is delivered: idle
// connections hold no packets.
void expect_pool_settled(const SockPoolStats& s, int k) {
  EXPECT_EQ(s.checkouts - s.returns, s.outstanding) << "shard " << k;
  EXPECT_EQ(s.outstanding, 0u) << "shard " << k;
}

// Each shard thread posts kRecordsPerWriter writes, in batches from inside its callbacks, to
// the connection the other shard owns: every write crosses between the two shard threads,
// both inboxes are busy in both directions at once, and each client must see every record of
// its one writer, in order, with the checksum the writer computed.
TEST_F(CrossThreadTest, ShardThreadsWritingToEachOthersConnectionsDeliverEveryRecordInOrder) {
  for (int k = 0; k < 2; ++k) {
    g->written_sum[static_cast<std::size_t>(k)] = kFnvBasis;
  }
  const std::string go(kRecordsPerWriter / kBatch, 'G');
  // Both shards start producing; each reads its next 'G' only on a later loop iteration.
  for (int k = 0; k < 2; ++k) testing_support::write_all(client_[static_cast<std::size_t>(k)], go);

  std::array<RecordReader, 2> readers;
  for (int k = 0; k < 2; ++k) readers[static_cast<std::size_t>(k)].fd = client_[static_cast<std::size_t>(k)];
  ASSERT_TRUE(wait_for([&] {
    for (auto& r : readers) r.pump();
    return (readers[0].records >= kRecordsPerWriter || readers[0].closed) &&
           (readers[1].records >= kRecordsPerWriter || readers[1].closed);
  }));

  EXPECT_EQ(g->write_failures.load(), 0);
  for (int k = 0; k < 2; ++k) {
    const auto kk = static_cast<std::size_t>(k);
    const auto writer = static_cast<std::size_t>(1 - k);  // client k hears the other shard
    const RecordReader& r = readers[kk];
    EXPECT_FALSE(r.closed) << "client " << k;
    EXPECT_EQ(r.records, kRecordsPerWriter) << "client " << k;
    EXPECT_EQ(r.bad, 0u) << "client " << k;
    EXPECT_EQ(r.next[writer], kRecordsPerWriter) << "client " << k;
    EXPECT_EQ(r.next[kk], 0u) << "client " << k << " got records of its own shard";
    EXPECT_TRUE(r.carry.empty()) << "client " << k;
    EXPECT_EQ(g->written[writer].load(std::memory_order_acquire), kRecordsPerWriter);
    EXPECT_EQ(r.sum, g->written_sum[writer].load()) << "client " << k;
  }
  for (int k = 0; k < 2; ++k) {
    const SockPoolStats s = snapshot(k);
    expect_pool_settled(s, k);
    // Eight megabytes went out through packets of this shard's pool.
    EXPECT_GE(s.checkouts, uint64_t{kRecordsPerWriter} * sizeof(Record) / BUFFER_PACKET_SIZE)
        << "shard " << k;
  }
}

// Two plain threads (no reactor) each post kRecordsPerWriter writes to the connection of the
// shard opposite its index, one by fd and one by handle, while the clients read concurrently.
TEST_F(CrossThreadTest, WritesFromOtherThreadsAreDeliveredInOrderWithMatchingChecksums) {
  std::array<RecordReader, 2> readers;
  for (int k = 0; k < 2; ++k) readers[static_cast<std::size_t>(k)].fd = client_[static_cast<std::size_t>(k)];
  // Records client k has read, for the writers' window.
  std::array<std::atomic<uint64_t>, 2> received{};
  std::array<uint64_t, 2> sums{kFnvBasis, kFnvBasis};
  std::array<int, 2> failures{};
  std::atomic<bool> give_up{false};

  auto writer = [&](int w) {
    const auto target = static_cast<std::size_t>(1 - w);
    const int fd = g->conn_fd[target].load();
    const intptr_t uuid = g->conn_uuid[target].load();
    uint64_t sum = kFnvBasis;
    for (uint32_t seq = 0; seq < kRecordsPerWriter; ++seq) {
      while (seq - received[target].load(std::memory_order_relaxed) >= kWindow) {
        if (give_up.load()) return;
        std::this_thread::yield();
      }
      const Record rec{static_cast<uint32_t>(w), seq};
      sum = fnv(sum, &rec, sizeof rec);
      const ssize_t r = w == 0 ? sock_write(fd, &rec, sizeof rec)
                               : sock_write2(.buffer = &rec, .length = sizeof rec, .uuid = uuid);
      if (r != 0) ++failures[static_cast<std::size_t>(w)];
    }
    sums[static_cast<std::size_t>(w)] = sum;
  };
  std::thread w0(writer, 0), w1(writer, 1);
  const bool done = wait_for([&] {
    for (int k = 0; k < 2; ++k) {
      auto& r = readers[static_cast<std::size_t>(k)];
      r.pump();
      received[static_cast<std::size_t>(k)].store(r.records, std::memory_order_relaxed);
    }
    return (readers[0].records >= kRecordsPerWriter || readers[0].closed) &&
           (readers[1].records >= kRecordsPerWriter || readers[1].closed);
  });
  give_up = true;
  w0.join();
  w1.join();
  ASSERT_TRUE(done);

  for (int k = 0; k < 2; ++k) {
    const auto kk = static_cast<std::size_t>(k);
    const auto w = static_cast<std::size_t>(1 - k);  // the writer that targets client k
    const RecordReader& r = readers[kk];
    EXPECT_EQ(failures[w], 0) << "writer " << w;
    EXPECT_FALSE(r.closed) << "client " << k;
    EXPECT_EQ(r.records, kRecordsPerWriter) << "client " << k;
    EXPECT_EQ(r.bad, 0u) << "client " << k;
    EXPECT_EQ(r.next[w], kRecordsPerWriter) << "client " << k;
    EXPECT_TRUE(r.carry.empty()) << "client " << k;
    EXPECT_EQ(r.sum, sums[w]) << "client " << k;
  }
  for (int k = 0; k < 2; ++k) {
    const SockPoolStats s = snapshot(k);
    expect_pool_settled(s, k);
    EXPECT_GT(s.checkouts, 0u) << "shard " << k;
  }
}

// A packet checked out inside shard k's callback and freed by the test thread goes back to
// shard k's pool, not to the pool of threads without a reactor; the owner takes it back at
// the top of its next loop iteration.
TEST_F(CrossThreadTest, PacketFreedOnTestThreadReturnsToItsShardsPool) {
  for (int k = 0; k < 2; ++k) {
    const auto kk = static_cast<std::size_t>(k);
    send_control(k, 'P');
    ASSERT_TRUE(wait_for([&] { return g->packet[kk].load() != nullptr; }));
    const SockPoolStats before = snapshot(k);
    EXPECT_EQ(before.outstanding, 1u) << "shard " << k;
    SockPoolStats fallback_before{};
    ASSERT_EQ(sock_pool_stats(nullptr, &fallback_before), 0);

    sock_free_packet(g->packet[kk].exchange(nullptr));
    // The owner drains returned blocks at the top of a loop iteration. A snapshot may be
    // served by the iteration that was running when the packet came back, and so may the
    // next one: the iteration's again-list reads the next control byte if it arrived in
    // time (a loaded machine, TSan). So ask until a snapshot sees the return.
    SockPoolStats after{};
    ASSERT_TRUE(wait_for([&] {
      after = snapshot(k);
      return after.returns != before.returns;
    }));
    EXPECT_EQ(after.returns, before.returns + 1) << "shard " << k;
    EXPECT_EQ(after.checkouts, before.checkouts) << "shard " << k;
    expect_pool_settled(after, k);
    SockPoolStats fallback_after{};
    ASSERT_EQ(sock_pool_stats(nullptr, &fallback_after), 0);
    EXPECT_EQ(fallback_after.returns, fallback_before.returns) << "shard " << k;
    EXPECT_EQ(fallback_after.checkouts, fallback_before.checkouts) << "shard " << k;
  }
}

// A packet shard k checks out and sends to the other shard's connection is queued, written
// and freed by the other shard's thread, and still goes back to shard k's pool: the other
// shard's own pool neither hands it out nor takes it in.
TEST_F(CrossThreadTest, PacketSentToAnotherShardReturnsToTheShardItCameFrom) {
  for (int k = 0; k < 2; ++k) {
    const auto kk = static_cast<std::size_t>(k);
    const int other = 1 - k;
    const SockPoolStats owner_before = snapshot(k);
    const SockPoolStats other_before = snapshot(other);

    send_control(k, 'X');
    ASSERT_TRUE(wait_for([&] { return g->sent_packets[kk].load() > 0; }));
    const std::string expected = packet_bytes(k);
    std::string got;
    ASSERT_TRUE(wait_for([&] {
      testing_support::drain(client_[static_cast<std::size_t>(other)], &got);
      return got.size() >= expected.size();
    }));
    EXPECT_TRUE(got == expected) << "first difference at "
                                 << testing_support::first_difference(got, expected);

    // The other shard frees the packet right after writing it, perhaps a moment after the
    // client read it; shard k takes it back at the top of a loop iteration after that.
    SockPoolStats owner_after{};
    EXPECT_TRUE(wait_for([&] {
      owner_after = snapshot(k);
      return owner_after.returns > owner_before.returns;
    }));
    EXPECT_EQ(owner_after.checkouts, owner_before.checkouts + 1) << "shard " << k;
    EXPECT_EQ(owner_after.returns, owner_before.returns + 1) << "shard " << k;
    expect_pool_settled(owner_after, k);
    const SockPoolStats other_after = snapshot(other);
    EXPECT_EQ(other_after.checkouts, other_before.checkouts) << "shard " << other;
    EXPECT_EQ(other_after.returns, other_before.returns) << "shard " << other;
    expect_pool_settled(other_after, other);
    g->sent_packets[kk] = 0;
  }
  EXPECT_EQ(g->send_failures.load(), 0);
}

// A packet the test thread checks out comes from the pool of threads without a reactor; sent
// with sock_send_packet from that thread (a post to the owner shard), it is written and freed
// on the shard's thread and goes back to that pool, never into the shard's.
TEST_F(CrossThreadTest, PacketFromTheTestThreadIsSentCrossThreadAndReturnsToItsPool) {
  for (int k = 0; k < 2; ++k) {
    const auto kk = static_cast<std::size_t>(k);
    const SockPoolStats shard_before = snapshot(k);
    SockPoolStats fallback_before{};
    ASSERT_EQ(sock_pool_stats(nullptr, &fallback_before), 0);

    Packet* p = sock_checkout_packet();
    ASSERT_NE(p, nullptr);
    const std::string bytes = testing_support::pattern(12000, 200 + static_cast<unsigned>(k));
    std::memcpy(p->internal_memory, bytes.data(), bytes.size());
    p->length = static_cast<ssize_t>(bytes.size());
    ASSERT_EQ(sock_send_packet(g->conn_fd[kk].load(), p), 0);

    std::string got;
    ASSERT_TRUE(wait_for([&] {
      testing_support::drain(client_[kk], &got);
      return got.size() >= bytes.size();
    }));
    EXPECT_TRUE(got == bytes) << "first difference at "
                              << testing_support::first_difference(got, bytes);
    SockPoolStats fallback_after{};
    EXPECT_TRUE(wait_for([&] {
      sock_pool_stats(nullptr, &fallback_after);
      return fallback_after.returns > fallback_before.returns;
    }));
    EXPECT_EQ(fallback_after.checkouts, fallback_before.checkouts + 1);
    EXPECT_EQ(fallback_after.returns, fallback_before.returns + 1);
    EXPECT_EQ(fallback_after.checkouts - fallback_after.returns, fallback_after.outstanding);
    const SockPoolStats shard_after = snapshot(k);
    EXPECT_EQ(shard_after.checkouts, shard_before.checkouts) << "shard " << k;
    EXPECT_EQ(shard_after.returns, shard_before.returns) << "shard " << k;
    expect_pool_settled(shard_after, k);
  }
}

}  // namespace
