// 64-byte sock_write calls to one connection owned by a shard of the sharded server (one
// shard), made two ways, each measured until a loopback client has received every byte:
//
//   BM_CrossThreadWrite   the benchmark thread, which does not own the fd, calls sock_write:
//                         each call copies its 64 bytes into a malloc'd buffer and posts it to
//                         the shard's inbox; the shard runs the writes in order, then flushes.
//   BM_OwnerThreadWrite   the baseline: the same writes made inline on the owner thread, from
//                         the shard's on_data (the client sends one trigger byte per batch),
//                         each appended to the tail packet of the connection's queue.
//
// Each iteration makes kWrites writes, then the benchmark thread reads the kWrites * 64 bytes
// back (blocking reads on the client socket; the shard is writing meanwhile). Time is wall
// time (UseRealTime): it covers the shard thread too. items_per_second is writes per second.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "benchmark/benchmark.h"
#include "engine/libsock.h"
#include "shards/server.h"

namespace {

constexpr std::size_t kWriteBytes = 64;
// 640 KB queued per batch: below the default 1 MiB high watermark, and enough writes that the
// one trigger round trip of the baseline is noise.
constexpr std::size_t kWrites = 10'000;

constexpr char kPayload[kWriteBytes] = {};  // what the bytes say does not matter

std::atomic<int> g_server_fd{-1};  // the connection's fd on the shard, from on_open

void on_open(struct Reactor*, int fd) { g_server_fd.store(fd, std::memory_order_release); }

// The baseline's writer: every trigger byte asks for one batch of kWrites inline writes.
void on_data(struct Reactor*, int fd) {
  char triggers[64];
  ssize_t n;
  while ((n = sock_read(fd, triggers, sizeof triggers)) > 0) {
    for (ssize_t t = 0; t < n; ++t) {
      for (std::size_t i = 0; i < kWrites; ++i) {
        if (sock_write(fd, kPayload, kWriteBytes) < 0) std::abort();
      }
    }
  }
}

// A one-shard server with one client connected to it.
class Connection {
 public:
  Connection() {
    g_server_fd.store(-1);
    SockServerSettings settings{};
    settings.port = "0";
    settings.threads = 1;
    settings.on_open = on_open;
    settings.on_data = on_data;
    server_ = sock_server_start_fn(settings);
    if (!server_) std::abort();
    client_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(sock_server_port(server_)));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(client_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) std::abort();
    // The shard announces the connection from its own thread; a spin of microseconds.
    while ((server_fd_ = g_server_fd.load(std::memory_order_acquire)) < 0) {}
  }
  ~Connection() {
    close(client_);
    sock_server_request_stop(server_);
    sock_server_stop(server_);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  int server_fd() const { return server_fd_; }

  void trigger() {
    if (send(client_, "g", 1, MSG_NOSIGNAL) != 1) std::abort();
  }

  // Blocks until `bytes` more bytes have arrived.
  void receive(std::size_t bytes) {
    while (bytes > 0) {
      const ssize_t n = recv(client_, buffer_.data(), buffer_.size(), 0);
      if (n <= 0) std::abort();
      bytes -= static_cast<std::size_t>(n);
    }
  }

 private:
  SockServer* server_ = nullptr;
  int client_ = -1;
  int server_fd_ = -1;
  std::vector<char> buffer_ = std::vector<char>(256 * 1024);
};

void report(benchmark::State& state) {
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * kWrites));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kWrites * kWriteBytes));
}

void BM_CrossThreadWrite(benchmark::State& state) {
  Connection c;
  for (auto _ : state) {
    for (std::size_t i = 0; i < kWrites; ++i) {
      if (sock_write(c.server_fd(), kPayload, kWriteBytes) < 0) std::abort();
    }
    c.receive(kWrites * kWriteBytes);
  }
  report(state);
}
BENCHMARK(BM_CrossThreadWrite)->UseRealTime();

void BM_OwnerThreadWrite(benchmark::State& state) {
  Connection c;
  for (auto _ : state) {
    c.trigger();
    c.receive(kWrites * kWriteBytes);
  }
  report(state);
}
BENCHMARK(BM_OwnerThreadWrite)->UseRealTime();

}  // namespace
