// shards/shard.cc: each shard thread allocates from a jemalloc arena of its own, and a stopped
// server's arenas serve the next server's shards instead of piling up.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <optional>
#include <set>

#include "alloc/jemalloc_arena.h"
#include "shards/server.h"
#include "tests/testing/loopback.h"
#include "tests/testing/wait_for.h"

namespace {

using testing_support::wait_for;

constexpr int kShards = 2;
// The shards' reactors, published before any client connects, and the arena each shard's
// thread allocated from when it opened a connection (kUnknown until then).
constexpr unsigned kUnknown = ~0u;
std::array<std::atomic<Reactor*>, kShards> g_shard;
std::array<std::atomic<unsigned>, kShards> g_arena;

void record_arena(Reactor* r, int) {
  const std::optional<unsigned> arena = alloc::calling_thread_arena();
  for (int i = 0; i < kShards; ++i) {
    if (g_shard[i].load() == r) g_arena[i] = arena ? *arena : kUnknown - 1;
  }
}

// Starts a 2-shard server (acceptor thread, round-robin), opens one connection per shard,
// and returns the arenas the shards' threads use.
std::set<unsigned> shard_arenas() {
  for (auto& a : g_arena) a = kUnknown;
  SockServer* server = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = kShards,
                                         .accept_mode = SOCK_ACCEPT_THREAD,
                                         .on_open = record_arena);
  EXPECT_NE(server, nullptr);
  if (!server) return {};
  for (int i = 0; i < kShards; ++i) g_shard[i] = sock_server_shard(server, i);
  std::array<int, kShards> clients{};
  for (int& c : clients) c = testing_support::connect_client(sock_server_port(server));
  EXPECT_TRUE(wait_for([] {
    for (const auto& a : g_arena) {
      if (a.load() == kUnknown) return false;
    }
    return true;
  }));
  EXPECT_EQ(sock_server_stop(server), 0);
  for (const int c : clients) close(c);
  std::set<unsigned> arenas;
  for (const auto& a : g_arena) arenas.insert(a.load());
  return arenas;
}

TEST(ShardTest, EachShardThreadAllocatesFromAnArenaOfItsOwn) {
  const std::optional<unsigned> mine = alloc::calling_thread_arena();
  ASSERT_TRUE(mine.has_value());
  const std::set<unsigned> arenas = shard_arenas();
  ASSERT_EQ(arenas.size(), static_cast<std::size_t>(kShards)) << "two shards share an arena";
  EXPECT_EQ(arenas.count(kUnknown), 0u);
  EXPECT_EQ(arenas.count(kUnknown - 1), 0u) << "jemalloc refused thread.arena";
  EXPECT_EQ(arenas.count(*mine), 0u) << "a shard allocates from the test thread's arena";
}

TEST(ShardTest, StoppedShardsArenasServeTheNextServer) {
  const std::set<unsigned> first = shard_arenas();
  const std::set<unsigned> second = shard_arenas();
  EXPECT_EQ(second, first) << "each start created new arenas (jemalloc has 4,095)";
}

}  // namespace
