#include "tests/testing/tls_client.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <stdexcept>

#include "tests/testing/server_process.h"

namespace testing_support {
namespace {

// A BIO over the socket that sends with MSG_NOSIGNAL (OpenSSL's socket BIO uses write(), whose
// SIGPIPE would kill the test, and tests keep SIGPIPE at its default to catch the engine
// raising it) and answers BIO_CTRL_EOF, so that OpenSSL tells a TCP EOF from an error.
struct Socket {
  int fd;
  bool eof;
};

int socket_write(BIO* bio, const char* data, int len) {
  auto* s = static_cast<Socket*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  const ssize_t n = send(s->fd, data, static_cast<std::size_t>(len), MSG_NOSIGNAL);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) BIO_set_retry_write(bio);
  return static_cast<int>(n);
}

int socket_read(BIO* bio, char* out, int len) {
  auto* s = static_cast<Socket*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  const ssize_t n = recv(s->fd, out, static_cast<std::size_t>(len), 0);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) BIO_set_retry_read(bio);
  if (n == 0) s->eof = true;
  return static_cast<int>(n);
}

long socket_ctrl(BIO* bio, int cmd, long, void*) {
  if (cmd == BIO_CTRL_FLUSH) return 1;
  if (cmd == BIO_CTRL_EOF) return static_cast<Socket*>(BIO_get_data(bio))->eof ? 1 : 0;
  return 0;
}

int socket_destroy(BIO* bio) {
  delete static_cast<Socket*>(BIO_get_data(bio));
  BIO_set_data(bio, nullptr);
  return 1;
}

BIO_METHOD* socket_method() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "test_socket");
    BIO_meth_set_write(m, socket_write);
    BIO_meth_set_read(m, socket_read);
    BIO_meth_set_ctrl(m, socket_ctrl);
    BIO_meth_set_destroy(m, socket_destroy);
    return m;
  }();
  return method;
}

// "a,b" in ALPN's wire format (length-prefixed names).
std::string alpn_wire(const std::string& names) {
  std::string wire;
  std::size_t from = 0;
  while (from <= names.size()) {
    std::size_t comma = names.find(',', from);
    if (comma == std::string::npos) comma = names.size();
    wire += static_cast<char>(comma - from);
    wire.append(names, from, comma - from);
    from = comma + 1;
  }
  return wire;
}

// Connected while blocking (at once on loopback), then non-blocking for pump().
int connect_loopback_nonblocking(int port) {
  const int fd = connect_loopback(port);
  if (fd < 0) return -1;
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

}  // namespace

TlsClientConfig::TlsClientConfig(const std::string& ca_file, const std::string& alpn, int version)
    : ctx_(SSL_CTX_new(TLS_client_method())) {
  if (!ctx_) throw std::runtime_error("SSL_CTX_new failed");
  SSL_CTX_set_min_proto_version(ctx_, version ? version : TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx_, version);
  SSL_CTX_set_mode(ctx_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (!ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx_, ca_file.c_str(), nullptr) != 1) {
      SSL_CTX_free(ctx_);
      throw std::runtime_error("cannot load " + ca_file);
    }
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
  }
  if (!alpn.empty()) {
    const std::string wire = alpn_wire(alpn);
    SSL_CTX_set_alpn_protos(ctx_, reinterpret_cast<const unsigned char*>(wire.data()),
                            static_cast<unsigned>(wire.size()));
  }
}

TlsClientConfig::~TlsClientConfig() { SSL_CTX_free(ctx_); }

TlsClient::TlsClient(const TlsClientConfig& config, int port, const std::string& server_name,
                     SSL_SESSION* session)
    : ssl_(SSL_new(config.ctx())) {
  if (!ssl_) throw std::runtime_error("SSL_new failed");
  fd_ = connect_loopback_nonblocking(port);
  if (fd_ < 0) {
    failed_ = true;
    error_ = std::string("connect: ") + std::strerror(errno);
    return;
  }
  BIO* bio = BIO_new(socket_method());
  BIO_set_data(bio, new Socket{fd_, false});
  BIO_set_init(bio, 1);
  SSL_set_bio(ssl_, bio, bio);
  if (!server_name.empty()) {
    SSL_set_tlsext_host_name(ssl_, server_name.c_str());
    SSL_set1_host(ssl_, server_name.c_str());
  }
  if (session) SSL_set_session(ssl_, session);
  SSL_set_connect_state(ssl_);
  pump();
}

TlsClient::~TlsClient() {
  // SSL_free() marks the session of a connection that did not send close_notify as not
  // resumable (in the SSL_SESSION itself, which session() shares): tests resume the sessions
  // of connections they dropped.
  SSL_set_shutdown(ssl_, SSL_SENT_SHUTDOWN);
  SSL_free(ssl_);
  if (fd_ >= 0) close(fd_);
}

void TlsClient::fail(const char* what, int ssl_error) {
  failed_ = true;
  error_ = what;
  if (ssl_error == SSL_ERROR_SYSCALL && errno) {
    error_ += std::string(": ") + std::strerror(errno);
  }
  while (const unsigned long e = ERR_get_error()) {
    char text[256];
    ERR_error_string_n(e, text, sizeof text);
    error_ += std::string(": ") + text;
  }
  const long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK) error_ += std::string(": ") + X509_verify_cert_error_string(verify);
}

bool TlsClient::pump() {
  if (failed_ || ended_) return false;
  ERR_clear_error();
  if (!established_ || renegotiating_) {
    const int r = SSL_do_handshake(ssl_);
    if (r != 1) {
      const int e = SSL_get_error(ssl_, r);
      if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return true;
      fail(renegotiating_ ? "renegotiation failed" : "handshake failed", e);
      return false;
    }
    established_ = true;
    // A renegotiation is done once the server's Finished came, which SSL_do_handshake waits
    // for only while one is pending.
    if (renegotiating_ && !SSL_renegotiate_pending(ssl_)) renegotiating_ = false;
  }
  while (!outgoing_.empty()) {
    errno = 0;
    const int r = SSL_write(ssl_, outgoing_.data(),
                            static_cast<int>(std::min<std::size_t>(outgoing_.size(), INT_MAX)));
    if (r > 0) {
      outgoing_.erase(0, static_cast<std::size_t>(r));
      continue;
    }
    const int e = SSL_get_error(ssl_, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
    fail("write failed", e);
    return false;
  }
  char buf[16384];
  for (;;) {
    errno = 0;
    const int r = SSL_read(ssl_, buf, sizeof buf);
    if (r > 0) {
      received_.append(buf, static_cast<std::size_t>(r));
      continue;
    }
    const int e = SSL_get_error(ssl_, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
    if (e == SSL_ERROR_ZERO_RETURN ||
        (e == SSL_ERROR_SSL &&
         ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
      ERR_clear_error();
      ended_ = true;
      return false;
    }
    fail(renegotiating_ ? "renegotiation failed" : "read failed", e);
    return false;
  }
  if (renegotiating_ && !SSL_renegotiate_pending(ssl_)) renegotiating_ = false;
  return true;
}

void TlsClient::send(std::string_view data) {
  outgoing_.append(data);
  pump();
}

bool TlsClient::renegotiate() {
  if (SSL_renegotiate(ssl_) != 1) return false;
  renegotiating_ = true;
  pump();
  return true;
}

bool TlsClient::key_update() {
  if (SSL_key_update(ssl_, SSL_KEY_UPDATE_REQUESTED) != 1) return false;
  return SSL_do_handshake(ssl_) == 1;  // sends it now
}

void TlsClient::shutdown() {
  ERR_clear_error();
  SSL_shutdown(ssl_);
}

bool TlsClient::close_notify_received() const {
  return (SSL_get_shutdown(ssl_) & SSL_RECEIVED_SHUTDOWN) != 0;
}

std::string TlsClient::alpn() const {
  const unsigned char* name = nullptr;
  unsigned len = 0;
  SSL_get0_alpn_selected(ssl_, &name, &len);
  return std::string(reinterpret_cast<const char*>(name), len);
}

std::string TlsClient::peer_common_name() const {
  const X509* cert = SSL_get0_peer_certificate(ssl_);
  char name[256];
  if (!cert || X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, name,
                                         sizeof name) < 0) {
    return "";
  }
  return name;
}

bool TlsClient::wait(int ms) const {
  if (fd_ < 0) return false;
  pollfd p = {fd_, static_cast<short>(POLLIN | (outgoing_.empty() ? 0 : POLLOUT)), 0};
  return poll(&p, 1, ms) > 0;
}

}  // namespace testing_support
