// libFuzzer target: the TLS layer's unwrap (engine/tls/layer.cc) with the bytes a peer sends.
// One sock_ connection on the harness's reactor, an end of an AF_UNIX socketpair, with the TLS
// layer (engine/tls/sock_tls.h); the other end is the peer, played by this target. Byte 0:
//   bits 0-1, the mode:
//     0  server: the rest of the input is what a client sends to a sock_tls_accept connection;
//     1  client: a sock_tls_connect connection sends its ClientHello (read and dropped), and the
//        rest of the input is the server's answer;
//     2, 3  server, established: an OpenSSL client in this process (memory BIOs; TLS 1.3 for 2,
//        TLS 1.2 for 3) completes the handshake, then the rest of the input is operations of
//        that peer (below): its records, with raw bytes of the input between them, are what is
//        sent. The connection echoes what it reads, so its records are decrypted here too.
//   bits 2-4, the chunks the bytes are sent in, a reactor turn after each: 1, 2, 5, 13, 100,
//     1500 or 16389 bytes (a whole record and the next header), or all at once (after
//     kMaxChunks chunks the rest goes at once);
//   bits 5-7, the connection's sock_read buffer: 1, 7, 100, 4096, 16384, 16385, 65536, 200000.
// Operations (modes 2, 3), opcode % 6:
//   0 data LEN16: the peer writes LEN16 bytes (records of up to 16 KB), up to kMaxBytes in all
//   1 raw LEN8: the next LEN8 bytes of the input are sent as they are, after what is pending
//   2 key update: TLS 1.3, a KeyUpdate asking for the connection's (more than 30 in a row
//     without data may fail the connection); TLS 1.2, a renegotiation (the layer refuses
//     them: SSL_OP_NO_RENEGOTIATION)
//   3 close: the peer's close_notify (sent once the echo of what it wrote came back)
//   4 flush: what the peer wrote so far is sent
//   5 chunk BYTE: the chunk size from now on, as bits 2-4 of byte 0 (BYTE % 8)
// At the end the peer sends what is pending, its close_notify (modes 2, 3), and shuts its
// write side down (EOF).
// Asserted, for every input: the connection closes exactly once, with SOCK_CLOSE_ERROR exactly
// when the layer counted a failed handshake or record (sock_tls_stats) and a reason in
// sock_tls_error(), else SOCK_CLOSE_PEER; what it read is a prefix of what the peer wrote and
// what the peer decrypted of its echo a prefix of that; when nothing but the peer's records was
// sent and no renegotiation tried, all of it, both ways, then the connection's close_notify;
// its layer is gone (sock_tls_stats().open); nothing is left (packets, queued bytes, fds,
// memory: LeakSanitizer).
// OpenSSL itself is not instrumented: the coverage libFuzzer steers by is the engine's and
// the layer's.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "engine/libreact.h"
#include "engine/libsock.h"
#include "engine/tls/sock_tls.h"
#include "tests/fuzz/engine_harness.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/testing/tls_certs.h"

namespace {

using engine_harness::Harness;
using fuzz_support::Input;

enum Mode : uint8_t { kRawServer = 0, kRawClient = 1, kTls13Server = 2, kTls12Server = 3 };
constexpr std::size_t kChunks[] = {1, 2, 5, 13, 100, 1500, 16389, SIZE_MAX};
constexpr std::size_t kReadSizes[] = {1, 7, 100, 4096, 16384, 16385, 65536, 200000};
// Bounds on one input's work: plaintext the peer writes, and chunks (each a reactor turn).
constexpr std::size_t kMaxBytes = 64 * 1024;
constexpr std::size_t kMaxChunks = 256;
static_assert(kMaxBytes <= engine_harness::kLongestWrite);

// The configurations every input shares: the connection's (server, and client trusting the
// run's CA) and the peer's (modes 2 and 3, verifying nothing).
struct Configs {
  SockTLS* server = nullptr;
  SockTLS* client = nullptr;
  SSL_CTX* peer[2] = {nullptr, nullptr};  // TLS 1.3, TLS 1.2
};

const Configs& configs() {
  static const Configs* made = [] {
    auto* c = new Configs;
    // Made once for the process, removed when it exits (a crash leaves them).
    const testing_support::TestPki& pki = testing_support::test_pki();
    c->server = sock_tls_server_new(pki.localhost.cert.c_str(), pki.localhost.key.c_str());
    c->client = sock_tls_client_new(pki.ca.c_str());
    FUZZ_CHECK(c->server && c->client, sock_tls_error());
    for (SockTLS* config : {c->server, c->client}) {
      // No timers (an input's run is driven to its end), no log lines (they cost most of a run).
      FUZZ_CHECK(sock_tls_set_handshake_timeout(config, 0) == 0 &&
                     sock_tls_set_log(config, nullptr, nullptr) == 0 &&
                     sock_tls_set_alpn(config, "http/1.1") == 0,
                 "configuring TLS");
    }
    for (const int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
      SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
      FUZZ_CHECK(ctx && SSL_CTX_set_min_proto_version(ctx, version) == 1 &&
                     SSL_CTX_set_max_proto_version(ctx, version) == 1,
                 "the peer's SSL_CTX");
      SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
      c->peer[version == TLS1_3_VERSION ? 0 : 1] = ctx;
    }
    return c;
  }();
  return *made;
}

uint64_t failures(const SockTLSStats& s) {
  return s.failures[SOCK_TLS_FAIL_PROTOCOL] + s.failures[SOCK_TLS_FAIL_CERTIFICATE] +
         s.records_failed;
}

// One input's run (reused, so that its buffers keep their memory).
class Run {
 public:
  explicit Run(Harness& h) : h_(h) {}

  void start(Input& in) {
    const uint8_t first = in.byte();
    mode_ = static_cast<Mode>(first & 3);
    chunk_ = kChunks[(first >> 2) & 7];
    read_size_ = kReadSizes[first >> 5];
    written_.clear();
    received_.clear();
    echo_.clear();
    pending_.clear();
    chunks_ = 0;
    mixed_ = peer_shut_ = peer_saw_close_ = peer_gone_ = false;
    FUZZ_CHECK(sock_tls_stats(&before_) == 0, "sock_tls_stats");
    int sv[2];
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0,
               "socketpair");
    fd_ = sv[0];
    peer_fd_ = sv[1];
    FUZZ_CHECK(sock_open(h_.reactor(), fd_) == 0, "sock_open");
    h_.watch(fd_);
    const Configs& c = configs();
    if (mode_ == kRawClient) {
      FUZZ_CHECK(sock_tls_connect(fd_, c.client, "localhost") == 0, "sock_tls_connect");
    } else {
      FUZZ_CHECK(sock_tls_accept(fd_, c.server) == 0, "sock_tls_accept");
    }
    if (peer()) handshake();
  }

  // The rest of the input: raw bytes (modes 0, 1) or the peer's operations.
  void feed(Input& in) {
    if (!peer()) {
      while (!in.empty()) pending_ += static_cast<char>(in.byte());
      mixed_ = true;
      return;
    }
    while (!in.empty()) op(in);
  }

  void finish() {
    if (peer() && !peer_shut_ && !peer_gone_) say_goodbye();
    send_pending();
    shutdown(peer_fd_, SHUT_WR);
    h_.drive_until(
        [&] {
          pump();
          return h_.closes(fd_) > 0;
        },
        "the connection to close");
    pump();  // the rest, up to EOF: the connection's fd is closed
    SockTLSStats after{};
    FUZZ_CHECK(sock_tls_stats(&after) == 0, "sock_tls_stats");
    const uint64_t failed = failures(after) - failures(before_);
    FUZZ_CHECK(h_.closes(fd_) == 1, "on_close " + std::to_string(h_.closes(fd_)) + " times");
    FUZZ_CHECK(failed <= 1, std::to_string(failed) + " failures counted for one connection");
    FUZZ_CHECK(h_.reason(fd_) == (failed ? SOCK_CLOSE_ERROR : SOCK_CLOSE_PEER),
               "close reason " + std::to_string(h_.reason(fd_)) + " after " +
                   std::to_string(failed) + " failures");
    FUZZ_CHECK(!failed || *sock_tls_error(), "a failure without a reason");
    FUZZ_CHECK(after.open == before_.open, "the layer outlived its connection");
    FUZZ_CHECK(received_.size() <= written_.size() &&
                   written_.compare(0, received_.size(), received_) == 0,
               "read " + std::to_string(received_.size()) + " bytes that the peer did not write");
    FUZZ_CHECK(echo_.size() <= received_.size() &&
                   received_.compare(0, echo_.size(), echo_) == 0,
               "the peer decrypted " + std::to_string(echo_.size()) + " bytes not echoed");
    if (peer() && !mixed_) {
      FUZZ_CHECK(!failed, std::string("the peer's own records failed: ") + sock_tls_error());
      FUZZ_CHECK(received_.size() == written_.size() && echo_.size() == written_.size(),
                 "wrote " + std::to_string(written_.size()) + ", read " +
                     std::to_string(received_.size()) + ", echoed " +
                     std::to_string(echo_.size()));
      FUZZ_CHECK(peer_saw_close_, "no close_notify from the connection");
    }
    SSL_free(peer_);
    peer_ = nullptr;
    close(peer_fd_);
  }

  // The connection's on_data: reads it all, echoing.
  void on_data(int fd) {
    if (fd != fd_) return;
    buffer_.resize(read_size_);
    ssize_t n;
    while ((n = sock_read(fd, buffer_.data(), buffer_.size())) > 0) {
      received_.append(buffer_.data(), static_cast<std::size_t>(n));
      sock_write(fd, buffer_.data(), static_cast<std::size_t>(n));  // EPIPE once closing
    }
  }

 private:
  bool peer() const { return mode_ == kTls13Server || mode_ == kTls12Server; }
  bool tls13() const { return mode_ == kTls13Server; }

  void handshake() {
    peer_ = SSL_new(configs().peer[tls13() ? 0 : 1]);
    FUZZ_CHECK(peer_ != nullptr, "SSL_new");
    SSL_set_bio(peer_, BIO_new(BIO_s_mem()), BIO_new(BIO_s_mem()));
    SSL_set_connect_state(peer_);
    SSL_set_tlsext_host_name(peer_, "localhost");
    h_.drive_until(
        [&] {
          pump();
          const int r = SSL_do_handshake(peer_);
          FUZZ_CHECK(r == 1 || SSL_get_error(peer_, r) == SSL_ERROR_WANT_READ,
                     "the peer's handshake failed");
          take_peer_output();
          send_pending();
          FUZZ_CHECK(h_.closes(fd_) == 0, std::string("handshake: ") + sock_tls_error());
          return r == 1 && sock_tls_established(fd_) == 1;
        },
        "the handshake");
  }

  void op(Input& in) {
    switch (in.byte() % 6) {
      case 0: {
        const std::size_t n = std::min<std::size_t>(in.u16(), kMaxBytes - written_.size());
        if (!n || peer_shut_ || peer_gone_) break;
        const std::string_view data =
            engine_harness::source(n, static_cast<unsigned>(written_.size()));
        const int r = SSL_write(peer_, data.data(), static_cast<int>(n));
        if (r != static_cast<int>(n)) {
          peer_broke();  // after a refused renegotiation
          break;
        }
        written_.append(data);
        control_in_a_row_ = 0;
        take_peer_output();
        break;
      }
      case 1: {
        const std::size_t n = in.byte();
        for (std::size_t i = 0; i < n && !in.empty(); ++i) pending_ += static_cast<char>(in.byte());
        mixed_ = mixed_ || n > 0;
        break;
      }
      case 2:
        if (peer_shut_ || peer_gone_) break;
        if (tls13()) {
          FUZZ_CHECK(SSL_key_update(peer_, SSL_KEY_UPDATE_REQUESTED) == 1, "SSL_key_update");
          // The layer fails a peer past 32 post-handshake messages with no data between
          // them (engine/tls/layer.cc; a server's tickets count too): a flood may fail.
          mixed_ = mixed_ || ++control_in_a_row_ > kControlAllowed;
        } else {
          mixed_ = true;  // the layer refuses it: what follows may fail
          if (SSL_renegotiate(peer_) != 1) break;
        }
        // Sends it: a key update is then done; a renegotiation waits for an answer (an alert).
        (void)SSL_do_handshake(peer_);
        ERR_clear_error();
        take_peer_output();
        break;
      case 3:
        if (!peer_shut_ && !peer_gone_) say_goodbye();
        break;
      case 4:
        send_pending();
        break;
      case 5:
        chunk_ = kChunks[in.byte() % 8];
        break;
    }
  }

  // The peer's close_notify, once the connection echoed all it wrote (after its own
  // close_notify OpenSSL discards the records it reads).
  void say_goodbye() {
    send_pending();
    if (!mixed_) {
      h_.drive_until(
          [&] {
            pump();
            return echo_.size() == written_.size() || h_.closes(fd_) > 0;
          },
          "the echo");
    }
    ERR_clear_error();
    SSL_shutdown(peer_);
    peer_shut_ = true;
    take_peer_output();
  }

  void peer_broke() {
    FUZZ_CHECK(mixed_, "the peer failed on the connection's records: " +
                           std::string(ERR_reason_error_string(ERR_peek_error())
                                           ? ERR_reason_error_string(ERR_peek_error())
                                           : "?"));
    peer_gone_ = true;
    ERR_clear_error();
  }

  // What the peer's SSL wrote goes after what is pending.
  void take_peer_output() {
    BIO* out = SSL_get_wbio(peer_);
    char* data = nullptr;
    const long n = BIO_get_mem_data(out, &data);
    if (n > 0) pending_.append(data, static_cast<std::size_t>(n));
    (void)BIO_reset(out);
  }

  // Sends what is pending in chunks, each followed by a reactor turn and a pump.
  void send_pending() {
    std::size_t at = 0;
    while (at < pending_.size() && !peer_fd_closed_by_engine()) {
      const std::size_t n =
          std::min(pending_.size() - at, ++chunks_ > kMaxChunks ? SIZE_MAX : chunk_);
      std::size_t sent = 0;
      while (sent < n) {
        const ssize_t w = send(peer_fd_, pending_.data() + at + sent, n - sent, MSG_NOSIGNAL);
        if (w > 0) {
          sent += static_cast<std::size_t>(w);
          continue;
        }
        FUZZ_CHECK(w < 0 && (errno == EAGAIN || errno == EPIPE || errno == ECONNRESET),
                   "send: errno " + std::to_string(errno));
        if (errno != EAGAIN) break;  // the connection is gone: the rest goes nowhere
        h_.turns(1);
        pump();
      }
      if (sent < n) break;
      at += n;
      h_.turns(1);
      pump();
    }
    pending_.clear();
  }

  bool peer_fd_closed_by_engine() const { return h_.closes(fd_) > 0; }

  // Reads what the connection sent; the peer decrypts it (modes 2, 3), else it is dropped.
  void pump() {
    char buf[64 * 1024];
    ssize_t n;
    while ((n = recv(peer_fd_, buf, sizeof buf, 0)) > 0) {
      if (peer_) BIO_write(SSL_get_rbio(peer_), buf, static_cast<int>(n));
    }
    FUZZ_CHECK(n == 0 || errno == EAGAIN || errno == ECONNRESET,
               "recv: errno " + std::to_string(errno));
    if (!peer_ || peer_gone_ || peer_saw_close_ || !SSL_is_init_finished(peer_)) return;
    for (;;) {
      ERR_clear_error();
      const int r = SSL_read(peer_, buf, sizeof buf);
      if (r > 0) {
        echo_.append(buf, static_cast<std::size_t>(r));
        continue;
      }
      const int e = SSL_get_error(peer_, r);
      if (e == SSL_ERROR_ZERO_RETURN) peer_saw_close_ = true;
      if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_ZERO_RETURN) peer_broke();
      return;
    }
  }

  Harness& h_;
  Mode mode_ = kRawServer;
  std::size_t chunk_ = SIZE_MAX;
  std::size_t read_size_ = 0;
  std::size_t chunks_ = 0;
  int fd_ = -1;       // the connection (the sock_ API, with the layer)
  int peer_fd_ = -1;  // the peer's end, a plain fd
  SSL* peer_ = nullptr;
  bool mixed_ = false;           // bytes other than the peer's own records were sent
  // KeyUpdates since the peer last wrote data; more than kControlAllowed may fail.
  unsigned control_in_a_row_ = 0;
  static constexpr unsigned kControlAllowed = 32 - 2;  // the layer's limit, less two tickets
  bool peer_shut_ = false;       // the peer sent close_notify
  bool peer_saw_close_ = false;  // the connection's close_notify reached the peer
  bool peer_gone_ = false;       // the peer's TLS failed (after raw bytes or a renegotiation)
  SockTLSStats before_{};
  std::string written_;   // plaintext the peer wrote
  std::string received_;  // plaintext the connection read
  std::string echo_;      // plaintext the peer decrypted from the connection's echo
  std::string pending_;   // bytes to send to the connection
  std::string buffer_;
};

Run* g_run = nullptr;

void on_data(struct Reactor*, int fd) { g_run->on_data(fd); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  Harness& h = Harness::get();
  if (!g_run) {
    configs();
    g_run = new Run(h);
    h.set_on_data(on_data);
  }
  const int free_fd = fuzz_support::lowest_free_fd();
  Input in(data, size);
  g_run->start(in);
  g_run->feed(in);
  g_run->finish();
  h.check_nothing_left();
  FUZZ_CHECK(fuzz_support::lowest_free_fd() == free_fd, "fd leaked");
  return 0;
}
