// The sharded server end to end: connections spread over shards, echo, graceful stop.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <vector>

#include "shards/server.h"
#include "shards/sharded_server.h"
#include "tests/testing/loopback.h"

namespace {

std::atomic<int> g_opened{0}, g_closed{0};
// The shards' reactors, published before any client connects, and the connections each opened.
std::atomic<Reactor*> g_shard[2];
std::atomic<int> g_opened_on[2];

void count_open(Reactor* r, int) {
  ++g_opened;
  for (int i = 0; i < 2; ++i) {
    if (g_shard[i].load() == r) ++g_opened_on[i];
  }
}

void echo(struct Reactor*, int fd) {
  char buf[4096];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) sock_write(fd, buf, static_cast<size_t>(n));
}

TEST(ServerSmokeTest, EchoesOnEveryShardAndStopsCleanly) {
  for (int mode : {SOCK_ACCEPT_THREAD, SOCK_ACCEPT_REUSEPORT}) {
    g_opened = g_closed = 0;
    g_opened_on[0] = g_opened_on[1] = 0;
    SockServer* server = sock_server_start(.address = "127.0.0.1", .port = "0", .threads = 2,
                                           .accept_mode = mode, .on_data = echo,
                                           .on_close = [](Reactor*, int) { ++g_closed; },
                                           .on_open = count_open);
    ASSERT_NE(server, nullptr);
    ASSERT_EQ(sock_server_shard_count(server), 2);
    for (int i = 0; i < 2; ++i) g_shard[i] = sock_server_shard(server, i);
    std::vector<int> clients;
    for (int i = 0; i < 20; ++i) {
      clients.push_back(testing_support::connect_client(sock_server_port(server)));
    }
    for (std::size_t i = 0; i < clients.size(); ++i) {
      const std::string msg = testing_support::pattern(100000, static_cast<unsigned>(i));
      std::string got;
      std::size_t sent = 0;
      const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (got.size() < msg.size() && std::chrono::steady_clock::now() < end) {
        if (sent < msg.size()) {
          const ssize_t n = send(clients[i], msg.data() + sent, msg.size() - sent, MSG_NOSIGNAL);
          if (n > 0) sent += static_cast<std::size_t>(n);
        }
        testing_support::drain(clients[i], &got);
      }
      EXPECT_TRUE(got == msg) << "client " << i;
    }
    EXPECT_EQ(g_opened.load(), 20);
    EXPECT_EQ(g_opened_on[0] + g_opened_on[1], 20) << "a connection opened on no shard";
    if (mode == SOCK_ACCEPT_THREAD) {
      // Round-robin placement: one each in turn.
      EXPECT_EQ(g_opened_on[0].load(), 10);
      EXPECT_EQ(g_opened_on[1].load(), 10);
    } else {
      // The kernel hashes each connection's addresses to a listener: 20 connections all
      // hashed to one of two listeners would be a 1 in 500,000 chance.
      EXPECT_GT(g_opened_on[0].load(), 0);
      EXPECT_GT(g_opened_on[1].load(), 0);
    }
    EXPECT_EQ(sock_server_stop(server), 0);
    EXPECT_EQ(g_closed.load(), 20);
    for (int c : clients) close(c);
  }
}

TEST(ServerSmokeTest, CxxServerStopsWhenItGoesOutOfScope) {
  g_closed = 0;
  int client = -1;
  {
    SockServerSettings settings{};
    settings.address = "127.0.0.1";
    settings.port = "0";
    settings.threads = 2;
    settings.on_data = echo;
    settings.on_close = [](Reactor*, int) { ++g_closed; };
    shards::Server server(settings);
    EXPECT_EQ(server.shard_count(), 2);
    client = testing_support::connect_client(server.port());
    testing_support::write_all(client, "ping");
    std::string got;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (got.size() < 4 && std::chrono::steady_clock::now() < end) {
      testing_support::drain(client, &got);
    }
    EXPECT_EQ(got, "ping");
  }  // ~Server: graceful stop
  EXPECT_EQ(g_closed.load(), 1);
  close(client);
}

TEST(ServerSmokeTest, CxxServerThatCannotListenThrows) {
  SockServerSettings settings{};
  settings.address = "192.0.2.1";  // TEST-NET-1: never a local address
  settings.port = "0";
  EXPECT_THROW(shards::Server{settings}, std::system_error);
}

}  // namespace
