// scale_bench: how throughput grows with shards, with no outside load generator (issue 15).
// Every shard is a closed system: it drives the client ends of its own loopback TCP
// connections and serves their server ends with the real HTTP core (tools/http's Responder,
// as tools/http_server runs it), so N shards need N cores and nothing else.
//
//   scale_bench --variant local|pipelined|cross|cross-shape|cross-kernel|accept [--threads N]
//               [--connections K]
//               [--accept-mode thread|reuseport] [--warmup-s S] [--seconds S]
//               [--requests R] [--timeout-s S]
//
// Set-up: the sharded server starts on 127.0.0.1 port 0 with N shards pinned to CPUs 0..N-1
// (sock_server_start, pin_cpus). For the keep-alive variants its listener stays idle: the main
// thread makes every connection itself (a blocking listen/connect/accept on loopback) and
// hands each end to the shard it chooses with sock_open(sock_server_shard(server, i), fd),
// which is posted to that shard (libsock.h, "Threads"), so placement is exact. Each shard keeps
// a table of its own fds (what each end is, where it writes, its counters), written by main
// only for fds whose open it has not posted yet, and by the shard's thread only after that.
// The tables are per shard, never global: an fd closed on one shard may be reused at once on
// another (the same reason tools/http_server keeps its per-fd table per thread).
//
// Variants (K connections per shard, each with one client end and one server end):
//   local      both ends on shard i; the client sends `GET / HTTP/1.1`, reads the whole
//              Hello World response, sends the next (ping-pong: one request in flight).
//   pipelined  as local, 16 requests per write; the next 16 once all 16 responses arrived.
//   cross      the cross-thread door under load: every response is written by a thread that
//              does not own the fd it goes to, so it is posted through the owner's inbox.
//              The server end that reads a request must own its fd (only the owner reads), so
//              a request and its response cannot share one socket for this: each connection
//              is two loopback pairs. Requests go client end (shard A) -> server end (shard
//              B = (A+1) % N), where B parses them; B writes each response with sock_write to
//              the response socket's sending end, which shard A owns, so the write is posted
//              to A's inbox (a copy, a push, an eventfd write if A is about to sleep) and A
//              sends it; A's client end on the other side reads it and sends the next request.
//              Every shard is A for its own K connections and B for its neighbour's, so the
//              work stays even. Needs N >= 2 (on one shard the write would be inline).
//              Each pair carries data one way only, so no reply carries its ACK: a receiving
//              end that is not in the kernel's interactive ("pingpong") mode ACKs every small
//              segment from its recv (tcp_cleanup_rbuf), 4 segments per request where a
//              request/response connection sends 2. The two receiving ends are put in that
//              mode with TCP_QUICKACK 0, as a connection that answers gets into it by itself:
//              3 segments per request remain (a second small segment still forces an ACK).
//              The mode is not permanent: a delayed-ACK timer that fires (40 ms without a
//              second segment, e.g. a shard kept off its CPU) ends it for that end, which then
//              ACKs every segment again. The `segments` figure shows it (below).
//   cross-shape   the cross variant's two pairs per connection with all four ends on one shard:
//              no post, nothing crosses shards. What the shape costs (the extra ACK, twice the
//              sockets) apart from the crossing: cross - cross-shape is the crossing's cost.
//   cross-kernel  one connection per client with its client end on shard A and its server
//              end on B: requests and responses cross shards in the kernel, nothing is
//              posted. Needs N >= 2. Beside cross: what crossing costs without the door.
//   accept     an accept storm: K clients per shard, each connects to the server's listener,
//              sends one request with `Connection: close`, reads the response to EOF, and
//              connects again from the closed connection's on_close. Server ends reach the
//              shards as the accept mode places them (--accept-mode: the acceptor thread,
//              round-robin; or reuseport, the kernel's hash). Requests here are connections.
//              The listener defers accepts (TCP_DEFER_ACCEPT, 1 s) as the HTTP tools do.
//              Clients connect with socket + connect + sock_open on their own shard, not
//              sock_connect, whose getaddrinfo per connection would be client cost the
//              server never pays.
//
// Measured: after --warmup-s, over --seconds: responses (requests/s total and per shard, from
// per-shard counters each written by its own shard only, on cache lines of their own) and CPU
// per request (getrusage of the whole process over the interval: the shards, their clients,
// the acceptor thread if any). With --requests R the run instead ends once each client end
// has had its share of R responses (rounded up to whole batches; the count is checked), and
// the whole run is counted: for a fixed amount of work under callgrind (bench/scale.sh).
//
// Output: one line of key=value fields (bench/scale.sh reads it), `cores` being the process's
// CPU seconds per second (a CPU-bound closed system of N shards should use N: less says
// that the machine was busy) and `segments` the TCP segments the host sent per request over
// the same interval (local: 2, a request and its response carrying each other's ACK; all
// traffic in this network namespace counts; -1 if /proc/net/snmp cannot say); errors go to
// stderr with a
// non-zero exit: a response that is not the expected 200, a connection lost mid-run, a run
// that misses its deadline.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "engine/libsock.h"
#include "shards/server.h"
#include "tools/http/responder.h"

namespace {

namespace http = tools::http;
using Clock = std::chrono::steady_clock;

// The cache line of the x86-64 and arm64 machines this runs on. Not
// std::hardware_destructive_interference_size: gcc warns (-Winterference-size) that its value
// may differ between builds.
constexpr std::size_t kCacheLine = 64;

constexpr unsigned kPipelineDepth = 16;
// More shards than this is a typo (tools/server_main.cc has the same bound).
constexpr unsigned kMaxShards = 1024;
constexpr std::string_view kRequest = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
constexpr std::string_view kCloseRequest =
    "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
// Every response must start so; its length is what the Responder answered at start-up.
constexpr std::string_view kStatusLine = "HTTP/1.1 200 OK\r\n";
// How long the stop lets queued output drain: the clients stop sending first, so little is.
constexpr unsigned kStopDrainMs = 2000;
// TCP_DEFER_ACCEPT for the accept variant, as tools::kHttpDeferAcceptS (tools/ is not a
// dependency of bench/ here: the value is restated, not shared).
constexpr unsigned kDeferAcceptS = 1;
// Bytes read per sock_read, as tools/http_server.
constexpr std::size_t kReadBuffer = 16 * 1024;

enum class Variant { kLocal, kPipelined, kCross, kCrossShape, kCrossKernel, kAccept };

enum class Role : std::uint8_t {
  kNone,    // not ours (yet): an accepted fd in the accept variant
  kClient,  // reads responses, writes requests to `peer`
  kServer,  // reads requests, writes responses to `peer`
  kQuiet,   // a sending end of the cross variant's pairs: reads nothing but EOF
};

// One fd of one shard. Trivial, so that a table is calloc'd and pages of fd numbers never
// used stay untouched.
struct Conn {
  Role role;
  bool start;      // set up by main: on_open sends the first batch (client ends)
  bool finishing;  // server: answered a request that closes; reads are discarded
  bool answered;   // accept client: the whole response arrived
  std::uint32_t awaited;  // client: responses still due for the batch in flight
  std::uint32_t at;       // client: bytes of the current response received
  int peer;               // where this end writes (itself, or the other pair's end)
  std::uint64_t left;     // client: requests it may still send (UINT64_MAX: no limit)
  http::Conn* parse;      // server: the parse state of a request a read ended in
};

// What one shard owns. Written by its thread only (main reads the counters, relaxed, while it
// runs; everything else once the shard threads joined); on cache lines of its own, so one
// shard's counting never invalidates another's line.
struct alignas(kCacheLine) Shard {
  std::atomic<std::uint64_t> responses{0};  // complete, checked responses its clients read
  std::atomic<std::uint64_t> errors{0};
  std::atomic<struct Reactor*> reactor{nullptr};  // published by main before any fd is posted
  Conn* table = nullptr;  // by fd number; calloc'd by main before the server starts
  std::unique_ptr<http::Responder> responder;  // made on the shard's thread at first use
  http::Output out;
};
static_assert(sizeof(Shard) % kCacheLine == 0, "shards never share a cache line");

// Settings, fixed before the server starts (its threads see them after their creation), and
// the port, set before main posts the first client.
Variant g_variant = Variant::kLocal;
std::string g_batch;               // what a client writes per batch
unsigned g_depth = 1;              // responses per batch
std::size_t g_response_length = 0;  // of each response (the Date line has a fixed width)
std::uint64_t g_quota = UINT64_MAX;  // requests per client end (--requests)
std::size_t g_max_fds = 0;
sockaddr_in g_server_addr{};
std::unique_ptr<Shard[]> g_shards;
unsigned g_shard_count = 0;

std::atomic<bool> g_stopping{false};  // written once by main; closes are expected from then on

// Clients that have sent and had answered all their requests (--requests), and whether the
// run failed: main waits on them.
std::mutex g_mutex;
std::condition_variable g_changed;
std::uint64_t g_finished = 0;
bool g_failed = false;

void signal_main(bool failed) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (failed) {
      g_failed = true;
    } else {
      ++g_finished;
    }
  }
  g_changed.notify_all();
}

// The shard whose reactor `r` is. Cached per thread: a shard's callbacks run on its thread.
Shard& shard_of(struct Reactor* r) {
  thread_local Shard* mine = nullptr;
  if (mine) return *mine;
  for (unsigned i = 0; i < g_shard_count; ++i) {
    if (g_shards[i].reactor.load(std::memory_order_acquire) == r) return *(mine = &g_shards[i]);
  }
  std::fprintf(stderr, "scale_bench: a callback from a reactor that is no shard\n");
  std::abort();
}

// The owner's increment: a plain store, since only this thread writes the counter (no
// read-modify-write: nothing here may cost a locked instruction per request).
void add(std::atomic<std::uint64_t>& counter, std::uint64_t n) {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

void fail(Shard& s, const char* what, int fd) {
  if (g_stopping.load(std::memory_order_relaxed)) return;
  if (s.errors.load(std::memory_order_relaxed) == 0) {
    std::fprintf(stderr, "scale_bench: fd %d: %s\n", fd, what);
  }
  add(s.errors, 1);
  signal_main(true);
}

// Sends the client's next batch, or reports it finished.
void send_batch(Shard& s, Conn& c, int fd) {
  if (g_stopping.load(std::memory_order_relaxed)) return;
  if (c.left == 0) {
    signal_main(false);
    return;
  }
  c.awaited = g_depth;
  if (c.left != UINT64_MAX) c.left -= std::min<std::uint64_t>(c.left, g_depth);
  if (sock_write(c.peer, g_batch.data(), g_batch.size()) < 0) fail(s, "cannot send a request", fd);
}

// Counts the responses in one read of a keep-alive client: each must be exactly
// g_response_length bytes starting with the status line (checked whenever a response's start
// lies in the read with enough bytes after it). False on bytes that are no expected response.
bool take_responses(Conn& c, const char* data, std::size_t n, std::uint64_t* done) {
  std::size_t pos = 0;
  while (pos < n) {
    if (c.awaited == 0) return false;  // more than the batch asked for
    if (c.at == 0 && n - pos >= kStatusLine.size() &&
        std::memcmp(data + pos, kStatusLine.data(), kStatusLine.size()) != 0) {
      return false;
    }
    const std::size_t take = std::min(n - pos, g_response_length - c.at);
    c.at += static_cast<std::uint32_t>(take);
    pos += take;
    if (c.at == g_response_length) {
      c.at = 0;
      --c.awaited;
      ++*done;
    }
  }
  return true;
}

void client_data(Shard& s, struct Reactor* r, int fd, Conn& c) {
  char buf[kReadBuffer];
  ssize_t n;
  std::uint64_t done = 0;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    if (g_variant == Variant::kAccept) {
      // One response, then the server closes: check its start and count its bytes.
      if (c.at == 0 && (static_cast<std::size_t>(n) < kStatusLine.size() ||
                        std::memcmp(buf, kStatusLine.data(), kStatusLine.size()) != 0)) {
        fail(s, "not a 200 response", fd);
        sock_force_close(r, fd);
        return;
      }
      c.at += static_cast<std::uint32_t>(n);
      continue;
    }
    if (!take_responses(c, buf, static_cast<std::size_t>(n), &done)) {
      fail(s, "a response that is not the expected 200", fd);
      sock_force_close(r, fd);
      return;
    }
    if (c.awaited == 0) {
      // Counted before send_batch, which may tell main that this client is done.
      add(s.responses, done);
      done = 0;
      send_batch(s, c, fd);
    }
  }
  if (g_variant == Variant::kAccept && n < 0 && errno == 0) {
    // EOF: the library closes fd (on_close connects again).
    if (c.at == g_response_length) {
      c.answered = true;
      done = 1;
    }
  }
  if (done) add(s.responses, done);
}

void server_data(Shard& s, struct Reactor* r, int fd, Conn& c) {
  if (!s.responder) s.responder = std::make_unique<http::Responder>(http::Limits{}, nullptr);
  http::Responder& responder = *s.responder;
  responder.refresh_date(r->last_tick);
  char buf[kReadBuffer];
  ssize_t n;
  while ((n = sock_read(fd, buf, sizeof buf)) > 0) {
    if (c.finishing) continue;  // after a request that closes, nothing more is parsed
    const http::ReadResult read =
        responder.parse(c.parse, std::string_view(buf, static_cast<std::size_t>(n)), &s.out);
    if (!s.out.bytes.empty()) {
      // cross: c.peer belongs to another shard, and this write is posted to it.
      const int rc = sock_write(c.peer, s.out.bytes.data(), s.out.bytes.size());
      s.out.bytes.clear();
      if (rc < 0) {
        fail(s, "cannot send a response", fd);
        sock_force_close(r, fd);
        return;
      }
    }
    if (read.finish) {
      c.finishing = true;
      sock_close(r, fd);
      return;
    }
    if (responder.paused()) {  // the requests after the pause would go unanswered
      fail(s, "the HTTP core paused at a bound, which kPipelineDepth requests never reach", fd);
      sock_force_close(r, fd);
      return;
    }
    if (read.keep_state && !c.parse) {
      c.parse = new http::Conn(responder.scratch());
    } else if (!read.keep_state && c.parse) {
      delete c.parse;
      c.parse = nullptr;
    }
  }
}

void on_data(struct Reactor* r, int fd) {
  Shard& s = shard_of(r);
  Conn& c = s.table[fd];
  switch (c.role) {
    case Role::kClient:
      client_data(s, r, fd, c);
      return;
    case Role::kServer:
      server_data(s, r, fd, c);
      return;
    case Role::kQuiet: {
      char buf[256];
      while (sock_read(fd, buf, sizeof buf) > 0) {}  // only EOF ever comes here
      return;
    }
    case Role::kNone:
      fail(s, "input on an fd the bench does not know", fd);
      sock_force_close(r, fd);
      return;
  }
}

// Opened on its shard: a client end main set up sends its first batch; any other fd the
// bench did not set up was accepted, and is a server end that writes its responses back.
void on_open(struct Reactor* r, int fd) {
  Shard& s = shard_of(r);
  Conn& c = s.table[fd];
  if (c.role == Role::kNone) {
    c = Conn{};
    c.role = Role::kServer;
    c.peer = fd;
    return;
  }
  if (!c.start) return;
  c.start = false;
  if (g_variant == Variant::kAccept) {
    if (sock_write(fd, kCloseRequest.data(), kCloseRequest.size()) < 0) {
      fail(s, "cannot send a request", fd);
    }
  } else {
    send_batch(s, c, fd);
  }
}

// A new accept-variant connection from shard s's thread, carrying on client `left`.
void reconnect(Shard& s, struct Reactor* r, std::uint64_t left) {
  if (left == 0) {
    signal_main(false);
    return;
  }
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  const int one = 1;
  if (fd < 0 || setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
      (connect(fd, reinterpret_cast<const sockaddr*>(&g_server_addr), sizeof g_server_addr) < 0 &&
       errno != EINPROGRESS)) {
    const int err = errno;
    if (fd >= 0) close(fd);
    errno = err;
    fail(s, std::strerror(errno), fd);
    return;
  }
  if (static_cast<std::size_t>(fd) >= g_max_fds || sock_open(r, fd) < 0) {
    close(fd);
    fail(s, "cannot open a new client connection", fd);
    return;
  }
  Conn& c = s.table[fd];
  c = Conn{};
  c.role = Role::kClient;
  c.peer = fd;
  c.left = left == UINT64_MAX ? left : left - 1;
  // Queued until the connect completes if it has not yet (the engine waits for EPOLLOUT).
  if (sock_write(fd, kCloseRequest.data(), kCloseRequest.size()) < 0) {
    fail(s, "cannot send a request", fd);
  }
}

void on_close(struct Reactor* r, int fd) {
  Shard& s = shard_of(r);
  Conn& c = s.table[fd];
  const Conn was = c;
  delete c.parse;
  c = Conn{};  // the number may come back on this shard as anything
  const bool stopping = g_stopping.load(std::memory_order_relaxed);
  if (g_variant != Variant::kAccept) {
    if (!stopping && was.role != Role::kNone) fail(s, "connection closed during the run", fd);
    return;
  }
  if (was.role != Role::kClient || stopping) return;  // server ends close after each answer
  if (!was.answered) {
    fail(s, "connection closed before its whole response", fd);
    return;
  }
  reconnect(s, r, was.left);
}

// ---- set-up on the main thread ----

// Without exit's destructors: shard threads may be running, on the state they would destroy.
[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "scale_bench: %s\n", what.c_str());
  std::fflush(stdout);
  std::_Exit(1);
}

void set_no_delay_non_block(int fd) {
  const int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 || sock_set_non_block(fd) < 0) {
    die(std::string("cannot set up a socket: ") + std::strerror(errno));
  }
}

// A blocking connect to addr; the connected fd (blocking), or death.
int connect_to(const sockaddr_in& addr) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0) {
    die(std::string("cannot connect over loopback: ") + std::strerror(errno));
  }
  if (static_cast<std::size_t>(fd) >= g_max_fds) die("out of fd numbers: lower --connections");
  return fd;
}

// A loopback TCP connection made on this thread: {client end, server end}, both non-blocking
// with TCP_NODELAY (as the server's accepted connections have it).
struct Pair {
  int client;
  int server;
};
Pair make_pair(int listener, const sockaddr_in& addr) {
  const int client = connect_to(addr);
  const int server = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  if (server < 0) die(std::string("cannot accept over loopback: ") + std::strerror(errno));
  if (static_cast<std::size_t>(server) >= g_max_fds) die("out of fd numbers: lower --connections");
  set_no_delay_non_block(client);
  set_no_delay_non_block(server);
  return {client, server};
}

// A receiving end of a one-way pair into delayed-ACK ("pingpong") mode (cross: see the top).
void delay_acks(int fd) {
  const int zero = 0;
  if (setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof zero) < 0) {
    die(std::string("cannot set TCP_QUICKACK: ") + std::strerror(errno));
  }
}

// Hands fd to shard i as `conn`: its table entry first, then the posted open (which the
// entry reaches the shard's thread with).
void hand_over(SockServer* server, unsigned i, int fd, const Conn& conn) {
  g_shards[i].table[fd] = conn;
  if (sock_open(sock_server_shard(server, static_cast<int>(i)), fd) < 0) {
    die(std::string("cannot hand a connection to a shard: ") + std::strerror(errno));
  }
}

Conn make_conn(Role role, int peer, bool start) {
  Conn c{};
  c.role = role;
  c.peer = peer;
  c.start = start;
  c.left = g_quota;
  return c;
}

void set_up_keep_alive(SockServer* server, unsigned per_shard) {
  const int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof addr;
  if (listener < 0 || bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 ||
      listen(listener, SOMAXCONN) < 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &length) < 0) {
    die(std::string("cannot listen on loopback: ") + std::strerror(errno));
  }
  for (unsigned a = 0; a < g_shard_count; ++a) {
    for (unsigned k = 0; k < per_shard; ++k) {
      const Pair request = make_pair(listener, addr);
      // The shard of the server ends that read requests: A's neighbour when they cross.
      const unsigned b =
          g_variant == Variant::kCross || g_variant == Variant::kCrossKernel ? (a + 1) % g_shard_count
                                                                             : a;
      if (g_variant != Variant::kCross && g_variant != Variant::kCrossShape) {
        hand_over(server, b, request.server, make_conn(Role::kServer, request.server, false));
        hand_over(server, a, request.client, make_conn(Role::kClient, request.client, true));
        continue;
      }
      // Requests: client end on A, server end on B. Responses: both ends on A, so B's writes
      // to response.server are posted to A (cross; in cross-shape B is A).
      const Pair response = make_pair(listener, addr);
      delay_acks(request.server);
      delay_acks(response.client);
      hand_over(server, a, request.client, make_conn(Role::kQuiet, -1, false));
      hand_over(server, a, response.server, make_conn(Role::kQuiet, -1, false));
      hand_over(server, b, request.server, make_conn(Role::kServer, response.server, false));
      hand_over(server, a, response.client, make_conn(Role::kClient, request.client, true));
    }
  }
  close(listener);
}

void set_up_accept(SockServer* server, unsigned per_shard) {
  // Connect every first client before any is posted: once clients run, fd numbers get
  // reused by the shards, and main no longer makes any.
  std::vector<std::vector<int>> fds(g_shard_count);
  for (unsigned i = 0; i < g_shard_count; ++i) {
    for (unsigned k = 0; k < per_shard; ++k) {
      fds[i].push_back(connect_to(g_server_addr));
      set_no_delay_non_block(fds[i].back());
    }
  }
  for (unsigned i = 0; i < g_shard_count; ++i) {
    for (const int fd : fds[i]) {
      Conn c = make_conn(Role::kClient, fd, true);
      if (c.left != UINT64_MAX) --c.left;
      hand_over(server, i, fd, c);
    }
  }
}

// ---- measuring ----

// TCP segments sent in this network namespace (/proc/net/snmp, Tcp OutSegs): the whole
// host's traffic, not only this process's; -1 when the file or the field cannot be read.
std::int64_t tcp_segments_sent() {
  std::ifstream in("/proc/net/snmp");
  std::string names, values;
  // Pairs of lines: "Tcp: RtoAlgorithm ... OutSegs ..." then "Tcp: 1 ... 12345 ...".
  while (std::getline(in, names)) {
    if (names.rfind("Tcp:", 0) != 0) continue;
    if (!std::getline(in, values) || values.rfind("Tcp:", 0) != 0) return -1;
    std::istringstream name_words(names), value_words(values);
    std::string name, value;
    while (name_words >> name && value_words >> value) {
      if (name == "OutSegs") return static_cast<std::int64_t>(std::strtoull(value.c_str(), nullptr, 10));
    }
    return -1;
  }
  return -1;
}

struct Snapshot {
  Clock::time_point when;
  double cpu_s;
  std::int64_t segments;  // tcp_segments_sent(): -1 if unknown
  std::vector<std::uint64_t> responses;
};

Snapshot snapshot() {
  Snapshot s;
  s.when = Clock::now();
  s.segments = tcp_segments_sent();
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  s.cpu_s = static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
            static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
  for (unsigned i = 0; i < g_shard_count; ++i) {
    s.responses.push_back(g_shards[i].responses.load(std::memory_order_relaxed));
  }
  return s;
}

std::uint64_t errors() {
  std::uint64_t n = 0;
  for (unsigned i = 0; i < g_shard_count; ++i) n += g_shards[i].errors.load(std::memory_order_relaxed);
  return n;
}

// The response the Responder gives `request` (checked to be a 200): its length.
std::size_t response_length(std::string_view request) {
  http::Responder probe(http::Limits{}, nullptr);
  http::Output out;
  probe.parse(nullptr, request, &out);
  if (!out.bytes.starts_with(kStatusLine)) die("the HTTP core does not answer GET / with 200");
  return out.bytes.size();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("scale_bench: requests/s and CPU per request of N shards, each a closed system "
               "of loopback HTTP clients and servers (issue 15)",
               "scale_bench");
  std::string variant_name = "local";
  unsigned threads = 1;
  unsigned connections = 0;
  int accept_mode = SOCK_ACCEPT_THREAD;
  double warmup_s = 1, seconds = 3, timeout_s = 60;
  std::uint64_t requests = 0;
  app.add_option("--variant", variant_name,
                 "local, pipelined, cross, cross-shape, cross-kernel or accept (default local)")
      ->check(CLI::IsMember({"local", "pipelined", "cross", "cross-shape", "cross-kernel", "accept"}));
  app.add_option("--threads", threads, "shards, pinned to CPUs 0..N-1 (default 1)")
      ->check(CLI::Range(1u, kMaxShards));
  app.add_option("--connections", connections,
                 "connections per shard (default 64; accept: clients per shard, 16)")
      ->check(CLI::Range(1u, 100000u));
  app.add_option("--accept-mode", accept_mode, "accept variant: thread (default) or reuseport")
      ->transform(CLI::CheckedTransformer(
          std::map<std::string, int>{{"thread", SOCK_ACCEPT_THREAD},
                                     {"reuseport", SOCK_ACCEPT_REUSEPORT}}));
  app.add_option("--warmup-s", warmup_s, "seconds run before measuring (default 1)")
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--seconds", seconds, "seconds measured (default 3)")->check(CLI::Range(0.01, 3600.0));
  app.add_option("--requests", requests,
                 "run this many requests in all instead, counting the whole run (0: timed)");
  app.add_option("--timeout-s", timeout_s, "give up after this long (default 60)")
      ->check(CLI::Range(1.0, 86400.0));
  CLI11_PARSE(app, argc, argv);

  const std::map<std::string, Variant> variants = {{"local", Variant::kLocal},
                                                   {"pipelined", Variant::kPipelined},
                                                   {"cross", Variant::kCross},
                                                   {"cross-shape", Variant::kCrossShape},
                                                   {"cross-kernel", Variant::kCrossKernel},
                                                   {"accept", Variant::kAccept}};
  g_variant = variants.at(variant_name);
  if ((g_variant == Variant::kCross || g_variant == Variant::kCrossKernel) && threads < 2) {
    die("--variant " + variant_name + " needs --threads 2 or more (one shard has no other)");
  }
  if (connections == 0) connections = g_variant == Variant::kAccept ? 16 : 64;
  g_shard_count = threads;

  const ssize_t capacity = sock_max_capacity();  // raises the soft fd limit to the hard one
  if (capacity <= 0) die(std::string("cannot size the fd tables: ") + std::strerror(errno));
  g_max_fds = static_cast<std::size_t>(capacity);

  g_depth = g_variant == Variant::kPipelined ? kPipelineDepth : 1;
  for (unsigned i = 0; i < g_depth; ++i) g_batch += kRequest;
  g_response_length = response_length(g_variant == Variant::kAccept ? kCloseRequest : kRequest);
  const std::uint64_t clients = std::uint64_t{threads} * connections;
  if (requests) {
    // Per client, in whole batches.
    const std::uint64_t per_batch = clients * g_depth;
    g_quota = (requests + per_batch - 1) / per_batch * g_depth;
  }

  g_shards = std::make_unique<Shard[]>(threads);
  for (unsigned i = 0; i < threads; ++i) {
    g_shards[i].table = static_cast<Conn*>(std::calloc(g_max_fds, sizeof(Conn)));
    if (!g_shards[i].table) die("no memory for the fd tables");
  }

  SockServerSettings settings{};
  settings.address = "127.0.0.1";
  settings.port = "0";
  settings.threads = static_cast<int>(threads);
  settings.pin_cpus = 1;
  settings.accept_mode = accept_mode;
  settings.on_data = on_data;
  settings.on_open = on_open;
  settings.on_close = on_close;
  settings.idle_timeout_ms = SOCK_NO_TIMEOUT;  // nothing is idle; a slow run must not lose one
  settings.stop_timeout_ms = kStopDrainMs;
  settings.defer_accept_s = g_variant == Variant::kAccept ? kDeferAcceptS : 0;
  SockServer* server = sock_server_start_fn(settings);
  if (!server) die(std::string("cannot start the server: ") + std::strerror(errno));
  for (unsigned i = 0; i < threads; ++i) {
    g_shards[i].reactor.store(sock_server_shard(server, static_cast<int>(i)),
                              std::memory_order_release);
  }
  g_server_addr.sin_family = AF_INET;
  g_server_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  g_server_addr.sin_port = htons(static_cast<std::uint16_t>(sock_server_port(server)));

  const Clock::time_point deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  Snapshot first = snapshot();
  if (g_variant == Variant::kAccept) {
    set_up_accept(server, connections);
  } else {
    set_up_keep_alive(server, connections);
  }

  bool ok = true;
  std::string why;
  Snapshot last;
  {
    std::unique_lock<std::mutex> lock(g_mutex);
    if (requests) {
      ok = g_changed.wait_until(lock, deadline, [&] { return g_failed || g_finished == clients; });
      if (!ok) why = "timed out: " + std::to_string(g_finished) + " of " + std::to_string(clients) + " clients finished";
      lock.unlock();
      last = snapshot();
    } else {
      // Sleeping is the measurement here: the shards run meanwhile. A failure ends it early.
      const auto span = [](double s) {
        return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
      };
      g_changed.wait_until(lock, Clock::now() + span(warmup_s), [] { return g_failed; });
      lock.unlock();
      first = snapshot();
      lock.lock();
      g_changed.wait_until(lock, first.when + span(seconds), [] { return g_failed; });
      lock.unlock();
      last = snapshot();
    }
    if (g_failed) ok = false;
  }
  g_stopping.store(true, std::memory_order_relaxed);
  sock_server_stop(server);  // joins the shards: their state is main's from here

  std::uint64_t total = 0;
  std::string per_shard;
  const double elapsed = std::chrono::duration<double>(last.when - first.when).count();
  for (unsigned i = 0; i < threads; ++i) {
    const std::uint64_t n = last.responses[i] - first.responses[i];
    total += n;
    char field[32];
    std::snprintf(field, sizeof field, "%s%.0f", i ? "," : "", static_cast<double>(n) / elapsed);
    per_shard += field;
  }
  if (ok && requests && total != clients * g_quota) {
    ok = false;
    why = "counted " + std::to_string(total) + " responses, expected " + std::to_string(clients * g_quota);
  }
  if (ok && total == 0) {
    ok = false;
    why = "no response in the measured interval";
  }
  const std::uint64_t errs = errors();
  // cores: CPU seconds per second of the whole process. A closed system is CPU-bound, so
  // well under N means that other processes had the CPUs meanwhile. segments: TCP segments
  // sent per request, data and pure ACKs (the host's count, see tcp_segments_sent), or -1.
  const double segments =
      total && first.segments >= 0 && last.segments >= first.segments
          ? static_cast<double>(last.segments - first.segments) / static_cast<double>(total)
          : -1.0;
  std::printf("variant=%s%s shards=%u connections=%u requests=%llu seconds=%.3f rps=%.0f "
              "cpu_us=%.3f cores=%.2f segments=%.2f shard_rps=%s errors=%llu\n",
              variant_name.c_str(),
              g_variant == Variant::kAccept
                  ? (accept_mode == SOCK_ACCEPT_REUSEPORT ? "-reuseport" : "-thread")
                  : "",
              threads, connections, static_cast<unsigned long long>(total), elapsed,
              static_cast<double>(total) / elapsed,
              total ? (last.cpu_s - first.cpu_s) * 1e6 / static_cast<double>(total) : 0.0,
              (last.cpu_s - first.cpu_s) / elapsed,
              segments, per_shard.c_str(), static_cast<unsigned long long>(errs));
  for (unsigned i = 0; i < threads; ++i) std::free(g_shards[i].table);
  if (!ok || errs) {
    std::fprintf(stderr, "scale_bench: failed%s%s\n", why.empty() ? "" : ": ", why.c_str());
    return 1;
  }
  return 0;
}
