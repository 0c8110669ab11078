// File: tests/testing/tls_client.h
// A TLS client on OpenSSL itself (not libsock), to speak to TLS servers in tests: what the
// engine's own client cannot do (resume a session, renegotiate, send close_notify on a socket
// kept open, write raw bytes after the handshake, see whether the peer's close_notify came).
// It never blocks: pump() does what can be done now, so a test drives it from run_until()
// predicates next to a reactor on the same thread, or with run() (poll with a deadline) against
// servers on other threads and processes.
// Threads: one object per thread at a time. Errors: a failed connection stays failed, with the
// reason (OpenSSL's, and the certificate check's) in error().
#ifndef TESTS_TESTING_TLS_CLIENT_H_
#define TESTS_TESTING_TLS_CLIENT_H_

#include <openssl/ssl.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>

namespace testing_support {

struct SessionFree {
  void operator()(SSL_SESSION* s) const { SSL_SESSION_free(s); }
};
using Session = std::unique_ptr<SSL_SESSION, SessionFree>;

// What clients share: trust, ALPN, the protocol version (an SSL_CTX).
class TlsClientConfig {
 public:
  // ca_file: verify the server against it ("": no verification). alpn: "a,b" offered ("":
  // none). version: TLS1_2_VERSION or TLS1_3_VERSION for that version only, 0 for either.
  // Throws std::runtime_error if OpenSSL refuses.
  explicit TlsClientConfig(const std::string& ca_file = "", const std::string& alpn = "",
                           int version = 0);
  ~TlsClientConfig();
  TlsClientConfig(const TlsClientConfig&) = delete;
  TlsClientConfig& operator=(const TlsClientConfig&) = delete;
  SSL_CTX* ctx() const { return ctx_; }

 private:
  SSL_CTX* ctx_;
};

class TlsClient {
 public:
  // Connects to 127.0.0.1:port (non-blocking; loopback connects at once) and starts the
  // handshake. server_name: SNI and the name the certificate must match ("": neither).
  // session: resume it (nullptr: a full handshake). A failed connect shows as failed().
  TlsClient(const TlsClientConfig& config, int port, const std::string& server_name = "",
            SSL_SESSION* session = nullptr);
  ~TlsClient();  // closes the socket (no close_notify: call shutdown() for that)
  TlsClient(const TlsClient&) = delete;
  TlsClient& operator=(const TlsClient&) = delete;

  // One non-blocking step: the handshake (or a renegotiation), then what send() queued, then
  // everything readable. Returns false once nothing more can happen: failed or ended.
  bool pump();
  // Pumps, waiting for the socket with poll() between steps, until done() holds (true), the
  // connection can make no more progress or the deadline passes (false unless done()).
  template <typename Done>
  bool run(Done&& done, std::chrono::milliseconds deadline = std::chrono::seconds(20));

  // Queues plaintext; pump() sends it once the handshake is done, with as few SSL_writes as
  // the socket allows (so a small send() is one record, one TCP write).
  void send(std::string_view data);
  // Starts a TLS 1.2 renegotiation (the next pump()s run it). False if OpenSSL refused.
  bool renegotiate();
  // Sends a TLS 1.3 KeyUpdate asking the peer to update its keys too. False if refused.
  bool key_update();
  // Sends close_notify (SSL_shutdown) and keeps the socket open.
  void shutdown();

  bool established() const { return established_; }
  bool renegotiating() const { return renegotiating_; }
  bool failed() const { return failed_; }
  const std::string& error() const { return error_; }
  // The peer will send nothing more: its close_notify, or a TCP EOF without one.
  bool ended() const { return ended_; }
  bool close_notify_received() const;
  std::string& received() { return received_; }
  int fd() const { return fd_; }
  bool resumed() const { return SSL_session_reused(ssl_) == 1; }
  std::string alpn() const;
  int version() const { return SSL_version(ssl_); }
  // The subject CN of the certificate the server sent ("" before or without one).
  std::string peer_common_name() const;
  // The session to resume later (with TLS 1.3, read something first: tickets come after the
  // handshake).
  Session session() const { return Session(SSL_get1_session(ssl_)); }

 private:
  void fail(const char* what, int ssl_error);
  bool wait(int ms) const;

  SSL* ssl_ = nullptr;
  int fd_ = -1;
  bool established_ = false;
  bool renegotiating_ = false;
  bool failed_ = false;
  bool ended_ = false;
  std::string error_;
  std::string outgoing_;
  std::string received_;
};

template <typename Done>
bool TlsClient::run(Done&& done, std::chrono::milliseconds deadline) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  for (;;) {
    const bool more = pump();
    if (done()) return true;
    if (!more) return false;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    wait(static_cast<int>(std::min<long>(left.count(), 100)));
  }
}

}  // namespace testing_support

#endif  // TESTS_TESTING_TLS_CLIENT_H_
