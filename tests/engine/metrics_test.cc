// The profiler's C API on one reactor (engine/metrics.h, engine/profile.h): sock_stats and
// its size-prefixed ABI, sock_metrics' snprintf-like buffer rules and prefix filter, the
// counters a slow reader's queue moves, and, with sock_profile on, the histograms and the
// top-connections list that names that reader.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "engine/reactor.h"
#include "tests/testing/loopback.h"
#include "tests/testing/metrics_text.h"
#include "tests/testing/reactor_fixture.h"
#include "tests/testing/reactor_stats.h"
#include "tests/testing/run_until.h"

namespace {

using testing_support::run_until;
using testing_support::stats_of;
constexpr auto series = testing_support::series_value;

// The whole metrics text of r (grown until it fits).
std::string metrics(struct Reactor* r, int format = SOCK_METRICS_PROMETHEUS,
                    const char* prefix = nullptr) {
  struct Reactor* list[] = {r};
  const ssize_t n = sock_metrics(list, 1, format, prefix, nullptr, 0);
  EXPECT_GE(n, 0);
  std::string text(static_cast<std::size_t>(n) + 1, '\0');
  EXPECT_EQ(sock_metrics(list, 1, format, prefix, text.data(), text.size()), n);
  text.resize(static_cast<std::size_t>(n));
  return text;
}

class MetricsTest : public testing_support::OneClientFixture {
 protected:
  void TearDown() override {
    sock_profile(0);
    OneClientFixture::TearDown();
  }
  // Queues `bytes` to a client that does not read (small buffers), then lets it read all.
  void queue_then_drain(std::size_t bytes) {
    connect_client(4096);
    const std::string data = testing_support::pattern(bytes, 1);
    ASSERT_EQ(sock_write(server_, data.data(), data.size()), 0);
    ASSERT_TRUE(run_until(&r_, [&] { return sock_pending(server_) > 0; }));
    queued_ = static_cast<std::size_t>(sock_pending(server_));
    got_.clear();
    ASSERT_TRUE(read_at_least(client_, &got_, bytes));
    ASSERT_EQ(got_, data);
  }
  // With reply_: answers input with two writes, the second of which queues (the first of a
  // callback goes straight to the kernel), so that the flush step reads the profile clock.
  void on_connection_data(int fd) override {
    OneClientFixture::on_connection_data(fd);
    ++data_calls_;
    // A callback that blocks: the stimulus of a stall, not a wait for a condition.
    if (stall_.count()) std::this_thread::sleep_for(stall_);
    if (!reply_) return;
    EXPECT_EQ(sock_write(fd, "a", 1), 0);
    EXPECT_EQ(sock_write(fd, "b", 1), 0);
  }
  std::size_t queued_ = 0;
  std::string got_;
  bool reply_ = false;
  int data_calls_ = 0;
  std::chrono::milliseconds stall_{0};
};

TEST_F(MetricsTest, SockStatsFillsOnlyTheSizeTheCallerKnows) {
  connect_client();
  SockStats s{};
  s.size = offsetof(SockStats, hits);  // an older caller: up to remote_returns
  s.hits = 12345;
  ASSERT_EQ(sock_stats(&r_, &s), 0);
  EXPECT_EQ(s.size, offsetof(SockStats, hits));
  EXPECT_EQ(s.hits, 12345u) << "written past the caller's size";
  s.size = sizeof s + 64;  // a newer caller: the library fills what it has
  ASSERT_EQ(sock_stats(&r_, &s), 0);
  EXPECT_EQ(s.size, sizeof(SockStats));
  EXPECT_EQ(s.connections, 2u);  // the listener and server_
  s.size = 4;
  EXPECT_EQ(sock_stats(&r_, &s), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(sock_stats(&r_, nullptr), -1);
  struct Reactor never_ran {};
  s.size = sizeof s;
  EXPECT_EQ(sock_stats(&never_ran, &s), -1);
  EXPECT_EQ(errno, EINVAL);
}

TEST_F(MetricsTest, SockMetricsTruncatesLikeSnprintfAndChecksItsArguments) {
  struct Reactor* list[] = {&r_};
  const std::string whole = metrics(&r_);
  char small[32];
  EXPECT_EQ(sock_metrics(list, 1, SOCK_METRICS_PROMETHEUS, nullptr, small, sizeof small),
            static_cast<ssize_t>(whole.size()));
  EXPECT_EQ(std::string(small), whole.substr(0, sizeof small - 1));
  EXPECT_EQ(sock_metrics(list, 1, 7, nullptr, small, sizeof small), -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(sock_metrics(nullptr, 1, SOCK_METRICS_PROMETHEUS, nullptr, small, sizeof small), -1);
  EXPECT_EQ(sock_metrics(list, 1, SOCK_METRICS_PROMETHEUS, nullptr, nullptr, 8), -1);
  EXPECT_EQ(errno, EINVAL);
}

TEST_F(MetricsTest, PrefixKeepsOnlyTheFamiliesItStarts) {
  const std::string text = metrics(&r_, SOCK_METRICS_PROMETHEUS, "libsock_pool_out");
  EXPECT_EQ(text,
            "# HELP libsock_pool_outstanding_packets Packets checked out now.\n"
            "# TYPE libsock_pool_outstanding_packets gauge\n"
            "libsock_pool_outstanding_packets{shard=\"0\"} 0\n");
  EXPECT_EQ(metrics(&r_, SOCK_METRICS_PROMETHEUS, "nothing_by_this_name"), "");
}

// A write the kernel only partly takes queues the rest in packets: checkouts, the queue and
// the writev counters move, and once the reader has everything every packet is back.
TEST_F(MetricsTest, CountersFollowAQueueFromWriteToDrain) {
  const SockStats before = stats_of(&r_);
  ASSERT_NO_FATAL_FAILURE(queue_then_drain(1 << 20));
  ASSERT_TRUE(run_until(&r_, [&] { return stats_of(&r_).outstanding == 0; }));
  const SockStats s = stats_of(&r_);
  EXPECT_GT(queued_, 0u);
  EXPECT_EQ(s.writes_direct - before.writes_direct, 1u);  // the start went out at once
  EXPECT_GE(s.checkouts - before.checkouts, (queued_ + BUFFER_PACKET_SIZE - 1) / BUFFER_PACKET_SIZE);
  EXPECT_EQ(s.checkouts - s.returns, s.outstanding);
  EXPECT_GE(s.high_water, (queued_ + BUFFER_PACKET_SIZE - 1) / BUFFER_PACKET_SIZE);
  EXPECT_GT(s.writev_calls, before.writev_calls);
  EXPECT_GE(s.writev_packets - before.writev_packets, s.checkouts - before.checkouts);
  EXPECT_EQ(s.queued_bytes, 0u);
  EXPECT_EQ(s.chunk_bytes, s.chunks * (s.chunk_bytes / (s.chunks ? s.chunks : 1)));
  EXPECT_GE(s.packet_bytes, sizeof(Packet));
  const std::string text = metrics(&r_);
  EXPECT_EQ(series(text, "libsock_pool_checkouts_total{shard=\"0\"}"), static_cast<double>(s.checkouts));
  EXPECT_EQ(series(text, "libsock_profiling"), 0);
  for (const char* name : {"libsock_packet_lifetime_seconds", "libsock_queue_time_seconds",
                           "libsock_write_size_bytes", "libsock_flush_packets",
                           "libsock_connection_peak_queued_bytes"}) {
    EXPECT_EQ(text.find(name), std::string::npos) << name << " while profiling is off";
  }
}

// Each loop iteration is counted once and its work timed, the wait for events excluded; a
// callback that keeps the loop 30 ms shows as an iteration that long, always (no profiling).
TEST_F(MetricsTest, ACallbackThatBlocksShowsAsALongLoopIteration) {
  connect_client();
  const SockStats idle = stats_of(&r_);
  engine::Reactor* r = engine::Reactor::of(&r_, false);
  for (int i = 0; i < 5; ++i) ASSERT_GE(r->run_once(1), 0);
  const SockStats before = stats_of(&r_);
  EXPECT_EQ(before.loop_iterations - idle.loop_iterations, 5u);
  // An idle wait of 200 ms is not work: the iteration around it is counted, its wait not (its
  // work is a few microseconds; the bound only tells the wait apart).
  ASSERT_GE(r->run_once(200), 0);
  const SockStats waited = stats_of(&r_);
  EXPECT_EQ(waited.loop_iterations - before.loop_iterations, 1u);
  EXPECT_LT(waited.loop_busy_us - before.loop_busy_us, 200000u);

  stall_ = std::chrono::milliseconds(30);
  const int calls = data_calls_;
  ASSERT_EQ(::send(client_, "x", 1, 0), 1);
  ASSERT_TRUE(run_until(&r_, [&] { return data_calls_ > calls; }));
  const SockStats s = stats_of(&r_);
  EXPECT_GE(s.loop_longest_busy_us, 30000u);
  EXPECT_GE(s.loop_busy_us - waited.loop_busy_us, 30000u);
  const std::string text = metrics(&r_);
  EXPECT_EQ(series(text, "libsock_loop_iteration_seconds_count{shard=\"0\"}"),
            static_cast<double>(s.loop_iterations));
  EXPECT_EQ(series(text, "libsock_loop_iteration_longest_seconds{shard=\"0\"}"),
            static_cast<double>(s.loop_longest_busy_us) / 1e6);
  // 30 ms lies above the bucket bound 24,576 us: that iteration is counted above it.
  EXPECT_GE(series(text, "libsock_loop_iteration_seconds_bucket{shard=\"0\",le=\"+Inf\"}") -
                series(text, "libsock_loop_iteration_seconds_bucket{shard=\"0\",le=\"0.024576\"}"),
            1);
  const std::string json = metrics(&r_, SOCK_METRICS_JSON);
  EXPECT_NE(json.find("\"loop_iteration_longest_seconds\":"), std::string::npos) << json;
  EXPECT_NE(json.find("\"loop_iteration_seconds\":{\"buckets\":[["), std::string::npos) << json;
}

TEST_F(MetricsTest, ProfilingRecordsHistogramsAndTheTopConnection) {
  EXPECT_EQ(sock_profile(1), 0);
  EXPECT_EQ(sock_profile(-1), 1);
  connect_client(4096);
  const std::string data = testing_support::pattern(1 << 20, 2);
  ASSERT_EQ(sock_write(server_, data.data(), data.size()), 0);
  // The slow reader heads the list once the loop refreshed it (once a second).
  ASSERT_TRUE(run_until(&r_, [&] {
    return metrics(&r_, SOCK_METRICS_JSON).find("\"top_connections\":[{\"uuid\":" +
                                                 std::to_string(sock_fd2uuid(server_))) !=
           std::string::npos;
  }));
  ASSERT_TRUE(read_at_least(client_, &got_, data.size()));
  ASSERT_TRUE(run_until(&r_, [&] { return stats_of(&r_).outstanding == 0; }));
  const SockStats s = stats_of(&r_);
  const std::string text = metrics(&r_);
  EXPECT_EQ(series(text, "libsock_profiling"), 1);
  // One write of 1 MiB: in the bucket whose bound is 1 MiB (a power of two), none above.
  EXPECT_EQ(series(text, "libsock_write_size_bytes_count{shard=\"0\"}"), 1);
  EXPECT_EQ(series(text, "libsock_write_size_bytes_bucket{shard=\"0\",le=\"1048576\"}"), 1);
  EXPECT_EQ(series(text, "libsock_write_size_bytes_bucket{shard=\"0\",le=\"786432\"}"), 0);
  // Every packet of this test was checked out and returned on the reactor's thread.
  EXPECT_EQ(series(text, "libsock_packet_lifetime_seconds_count{shard=\"0\"}"),
            static_cast<double>(s.returns));
  EXPECT_EQ(series(text, "libsock_flush_packets_count{shard=\"0\"}"),
            static_cast<double>(s.writev_calls));
  EXPECT_EQ(series(text, "libsock_queue_time_seconds_count{shard=\"0\"}"), 1);
  EXPECT_GT(series(text, "libsock_queue_time_seconds_sum{shard=\"0\"}"), 0);
  // Cumulative buckets end at +Inf == _count.
  EXPECT_EQ(series(text, "libsock_flush_packets_bucket{shard=\"0\",le=\"+Inf\"}"),
            series(text, "libsock_flush_packets_count{shard=\"0\"}"));
  // The peak is observed at close.
  ::close(client_);
  client_ = -1;
  ASSERT_TRUE(run_until(&r_, [&] { return server_closes_ == 1; }));
  const std::string after = metrics(&r_);
  EXPECT_EQ(series(after, "libsock_connection_peak_queued_bytes_count{shard=\"0\"}"), 1);
  EXPECT_GE(series(after, "libsock_connection_peak_queued_bytes_sum{shard=\"0\"}"), 4096);
}

// The write-size histogram sees the writes sock_write accepted, each at its real length: none
// the engine refused (EINVAL, ENOBUFS), whose SIZE_MAX length also wrapped _sum down, and a
// .file write "to the end" (length 0) as the bytes it queued.
TEST_F(MetricsTest, WriteSizeSeesOnlyAcceptedWritesAndAFileToItsEndAsItsBytes) {
  EXPECT_EQ(sock_profile(1), 0);
  connect_client(4096);
  ReactorLimits limits{};
  limits.memory_budget = sizeof(Packet);  // one packet: the second queued write is refused
  ASSERT_EQ(reactor_set_limits(&r_, &limits), 0);
  const auto count = [&] {
    return series(metrics(&r_), "libsock_write_size_bytes_count{shard=\"0\"}");
  };
  const auto sum = [&] {
    return series(metrics(&r_), "libsock_write_size_bytes_sum{shard=\"0\"}");
  };
  // A regular file of 1000 bytes, read from its start.
  const auto file_of_1000 = [] {
    FILE* f = std::tmpfile();
    EXPECT_NE(f, nullptr);
    const std::string content = testing_support::pattern(1000, 6);
    EXPECT_EQ(std::fwrite(content.data(), 1, content.size(), f), content.size());
    EXPECT_EQ(std::fflush(f), 0);
    std::rewind(f);
    return f;
  };

  // EINVAL: offset + length past what off_t holds.
  EXPECT_EQ(sock_write2(.fd = server_, .buffer = file_of_1000(), .length = SIZE_MAX, .file = 1),
            -1);
  EXPECT_EQ(errno, EINVAL);
  // ENOBUFS: under a budget a copy goes direct only if all of it could be queued.
  const std::string big = testing_support::pattern(1 << 20, 7);
  EXPECT_EQ(sock_write(server_, big.data(), big.size()), -1);
  EXPECT_EQ(errno, ENOBUFS);
  EXPECT_EQ(count(), 0);
  EXPECT_EQ(sum(), 0);

  // Accepted, in the budget's one packet.
  ASSERT_EQ(sock_write2(.fd = server_, .buffer = file_of_1000(), .file = 1), 0);
  EXPECT_EQ(count(), 1);
  EXPECT_EQ(sum(), 1000);

  // The budget is spent: a .move and a copy behind the file are refused.
  void* moved = std::malloc(100);
  ASSERT_NE(moved, nullptr);
  std::memset(moved, 'm', 100);
  EXPECT_EQ(sock_write2(.fd = server_, .buffer = moved, .length = 100, .move = 1), -1);  // freed
  EXPECT_EQ(errno, ENOBUFS);
  EXPECT_EQ(sock_write(server_, "c", 1), -1);
  EXPECT_EQ(errno, ENOBUFS);
  EXPECT_EQ(count(), 1);
  EXPECT_EQ(sum(), 1000);
}

// A packet's lifetime is exact up to 2^32 us (71 minutes): one held 40 minutes, past 2^31 us,
// is not read as "younger than now" (0).
TEST_F(MetricsTest, APacketHeldForFortyMinutesIsRecordedAsThatOld) {
  EXPECT_EQ(sock_profile(1), 0);
  connect_client(4096);
  const std::string data = testing_support::pattern(1 << 20, 3);
  ASSERT_EQ(sock_write(server_, data.data(), data.size()), 0);  // the packet waits behind it
  Packet* p = sock_checkout_packet();
  ASSERT_NE(p, nullptr);
  std::memcpy(p->internal_memory, "tail", 4);
  p->length = 4;
  constexpr int64_t kHeldUs = int64_t{40} * 60 * 1000 * 1000;
  p->metadata.rsrv_time = static_cast<uint32_t>(engine::Reactor::monotonic_us() - kHeldUs) | 1u;
  ASSERT_EQ(sock_send_packet(server_, p), 0);
  ASSERT_TRUE(read_at_least(client_, &got_, data.size() + 4));
  ASSERT_TRUE(run_until(&r_, [&] { return stats_of(&r_).outstanding == 0; }));
  EXPECT_GE(series(metrics(&r_), "libsock_packet_lifetime_seconds_sum{shard=\"0\"}"), 2400.0);
}

// A reader that stalled before profiling began, and was written nothing since: the list is
// made from every connection the reactor holds, not only those profiling has seen.
TEST_F(MetricsTest, TopConnectionsNameAReaderThatStalledBeforeProfilingBegan) {
  ASSERT_EQ(sock_profile(0), 0);
  connect_client(4096);
  const std::string data = testing_support::pattern(1 << 20, 4);
  ASSERT_EQ(sock_write(server_, data.data(), data.size()), 0);
  ASSERT_TRUE(run_until(&r_, [&] { return sock_pending(server_) > 0; }));
  EXPECT_EQ(sock_profile(1), 0);
  const std::string entry = "\"top_connections\":[{\"uuid\":" + std::to_string(sock_fd2uuid(server_));
  EXPECT_TRUE(run_until(&r_, [&] {
    return metrics(&r_, SOCK_METRICS_JSON).find(entry) != std::string::npos;
  }));
}

// A top connection's packets are counted up to kTopPacketsCounted (1,024), not walked to the
// end of its queue once a second: a queue of over 1,100 packets reads 1024.
TEST_F(MetricsTest, TopConnectionsCountPacketsUpToTheCap) {
  EXPECT_EQ(sock_profile(1), 0);
  connect_client(4096);
  // A queue behind a reader that does not read, then a packet per 1-byte .move write.
  const std::string data = testing_support::pattern(1 << 20, 8);
  ASSERT_EQ(sock_write(server_, data.data(), data.size()), 0);
  for (int i = 0; i < 1100; ++i) {
    void* byte = std::malloc(1);
    ASSERT_NE(byte, nullptr);
    *static_cast<char*>(byte) = 'p';
    ASSERT_EQ(sock_write2(.fd = server_, .buffer = byte, .length = 1, .move = 1), 0);
  }
  ASSERT_GT(stats_of(&r_).outstanding, 1100u);
  const std::string entry =
      "\"top_connections\":[{\"uuid\":" + std::to_string(sock_fd2uuid(server_));
  std::string json;
  ASSERT_TRUE(run_until(&r_, [&] {
    json = metrics(&r_, SOCK_METRICS_JSON);
    return json.find(entry) != std::string::npos;
  }));
  const std::size_t packets = json.find("\"packets\":", json.find(entry));
  ASSERT_NE(packets, std::string::npos);
  EXPECT_EQ(std::strtoull(json.c_str() + packets + std::strlen("\"packets\":"), nullptr, 10),
            1024u)
      << json.substr(json.find(entry), 120);
}

// A write the owner thread makes outside the loop (a reactor driven by the program, which
// works between two run_once calls) starts its queue's time now, not when the loop last ran.
TEST_F(MetricsTest, QueueTimeOfAWriteMadeBetweenLoopIterationsStartsAtTheWrite) {
  EXPECT_EQ(sock_profile(1), 0);
  connect_client(4096);
  reply_ = true;
  ASSERT_EQ(send(client_, "x", 1, 0), 1);
  // Ends with the iteration that sent the reply: its flush step cached the profile clock.
  ASSERT_TRUE(read_at_least(client_, &got_, 2));
  reply_ = false;
  // The program's own work between iterations (not a wait for a condition).
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const std::string data = testing_support::pattern(256 * 1024, 5);
  const auto written = std::chrono::steady_clock::now();
  ASSERT_EQ(sock_write(server_, data.data(), data.size()), 0);
  ASSERT_TRUE(read_at_least(client_, &got_, 2 + data.size()));
  ASSERT_TRUE(run_until(&r_, [&] { return sock_pending(server_) == 0; }));
  const std::chrono::duration<double> write_to_drain = std::chrono::steady_clock::now() - written;
  const std::string text = metrics(&r_);
  EXPECT_EQ(series(text, "libsock_queue_time_seconds_count{shard=\"0\"}"), 2);
  // The reply's queue (a moment) and this one, no longer than from the write to its drain;
  // counted from the last iteration it would be a second longer.
  EXPECT_LT(series(text, "libsock_queue_time_seconds_sum{shard=\"0\"}"),
            write_to_drain.count() + 0.5);
}

}  // namespace
