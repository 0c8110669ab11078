// The TLS transport layer of one connection (sock_tls_accept / sock_tls_connect): OpenSSL
// reads and writes through a BIO over the layer's buffers of the moment (never the socket):
// - unwrap: the received ciphertext is the BIO's input; plaintext is written over it.
// - wrap: the record's ciphertext goes straight into the packet (its headroom takes the
//   overhead); plaintext waits, held, until the handshake is done.
// - anything else OpenSSL writes (handshake flights, tickets, alerts, close_notify) is staged
//   per thread and queued with sock_tlc_write() after the call that produced it.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "engine/libsock.h"
#include "engine/tls/config.h"
#include "engine/tls/sock_tls.h"
#include "engine/tls/stats.h"

namespace tls {
namespace {

// A TLS record carries at most 16 KB of plaintext, which is the engine's record size; its
// overhead (TLS 1.3: 22 bytes, TLS 1.2 AEAD suites: 29) fits the packet's headroom.
static_assert(BUFFER_FILE_READ_SIZE <= 16384, "a record's plaintext must fit one TLS record");
static_assert(BUFFER_PACKET_SIZE - BUFFER_FILE_READ_SIZE >= 256,
              "the packet's headroom must take a TLS record's overhead");

enum class Phase : unsigned char { kHandshake, kOpen, kEnded, kFailed };

struct Connection {
  sockTLC layer;  // layer.udata == this
  SSL* ssl;
  SockTLS* config;
  int fd;
  Phase phase = Phase::kHandshake;
  bool shut = false;  // close_notify queued
  int64_t started_us;
  // The BIO's input during unwrap: bytes not consumed yet.
  const char* in = nullptr;
  std::size_t in_len = 0;
  // The BIO's output during wrap: the packet's memory; nullptr: the thread's staging.
  char* sink = nullptr;
  std::size_t sink_len = 0;
  // Ciphertext received but not yet read by OpenSSL when an unwrap's output filled its
  // buffer (malloc'd; rare).
  char* backlog = nullptr;
  std::size_t backlog_len = 0;
};

int64_t monotonic_us() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

// Per thread: what OpenSSL wrote outside a wrap, and copies of unwrap input and wrap
// plaintext (OpenSSL must not read a buffer it is writing into).
std::vector<char>& staging() {
  thread_local std::vector<char> bytes;
  return bytes;
}
std::vector<char>& scratch() {
  thread_local std::vector<char> bytes;
  return bytes;
}

// ---- The BIO over the layer's buffers ----

int bio_write(BIO* bio, const char* data, int len) {
  auto* c = static_cast<Connection*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (len <= 0) return 0;
  const auto n = static_cast<std::size_t>(len);
  if (c->sink) {
    if (c->sink_len + n > BUFFER_PACKET_SIZE) return -1;  // cannot happen for one record
    std::memcpy(c->sink + c->sink_len, data, n);
    c->sink_len += n;
  } else {
    staging().insert(staging().end(), data, data + n);
  }
  return len;
}

int bio_read(BIO* bio, char* out, int len) {
  auto* c = static_cast<Connection*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (!c->in_len) {
    BIO_set_retry_read(bio);
    return -1;
  }
  const std::size_t n = std::min(c->in_len, static_cast<std::size_t>(std::max(len, 0)));
  std::memcpy(out, c->in, n);
  c->in += n;
  c->in_len -= n;
  return static_cast<int>(n);
}

long bio_ctrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }

int bio_create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

BIO_METHOD* bio_method() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "libsock_tlc");
    if (m) {
      BIO_meth_set_write(m, bio_write);
      BIO_meth_set_read(m, bio_read);
      BIO_meth_set_ctrl(m, bio_ctrl);
      BIO_meth_set_create(m, bio_create);
    }
    return m;
  }();
  return method;
}

// ---- Connection state ----

int tls_wrap(int fd, Packet* packet, void* udata);

// fd's TLS layer (the lowest), or nullptr.
Connection* of(int fd) {
  sockTLC* layer = sock_tlc_get(fd);
  while (layer && layer->next) layer = layer->next;
  return layer && layer->wrap == tls_wrap ? static_cast<Connection*>(layer->udata) : nullptr;
}

// Queues what OpenSSL staged (handshake records, tickets, alerts). False: no memory.
bool send_staged(Connection* c) {
  std::vector<char>& bytes = staging();
  if (bytes.empty()) return true;
  const int r = sock_tlc_write(c->fd, &c->layer, bytes.data(), bytes.size());
  bytes.clear();
  return r == 0;
}

// Fails the connection (the engine closes it): the reason, its log line and its count.
int fail(Connection* c, const char* what, int ssl_result) {
  std::string reason = what;
  if (ssl_result == SSL_ERROR_SSL && c->phase == Phase::kHandshake) {
    const long verify = SSL_get_verify_result(c->ssl);
    if (verify != X509_V_OK) {
      reason += ": certificate verify failed: ";
      reason += X509_verify_cert_error_string(verify);
      ERR_clear_error();
    }
  } else if (ssl_result == SSL_ERROR_SYSCALL) {
    reason += ": the peer's bytes ended inside a record";
  }
  set_error(reason);
  log_failure(*c->config, c->fd);
  if (c->phase == Phase::kHandshake) {
    count_failure(SSL_get_verify_result(c->ssl) != X509_V_OK ? SOCK_TLS_FAIL_CERTIFICATE
                                                              : SOCK_TLS_FAIL_PROTOCOL);
  } else {
    count_record_failure();
  }
  staging().clear();  // an alert OpenSSL staged cannot go out: the fd closes at once
  c->phase = Phase::kFailed;
  return -1;
}

void established(Connection* c) {
  c->phase = Phase::kOpen;
  count_handshake(SSL_session_reused(c->ssl) == 1,
                  static_cast<uint64_t>(monotonic_us() - c->started_us));
  if (c->config->handshake_ms) sock_set_deadline(c->fd, 0);
  sock_tlc_write(c->fd, &c->layer, nullptr, 0);  // release the held writes
}

// Keeps the input OpenSSL did not read (an unwrap whose output filled its buffer).
bool keep_backlog(Connection* c) {
  if (!c->in_len) return true;
  char* copy = static_cast<char*>(std::malloc(c->in_len));
  if (!copy) return false;
  std::memcpy(copy, c->in, c->in_len);
  c->backlog = copy;
  c->backlog_len = c->in_len;
  c->in_len = 0;
  return true;
}

int tls_unwrap(int, void* buffer, ssize_t* len, const size_t max_len, void* udata) {
  auto* c = static_cast<Connection*>(udata);
  if (c->phase == Phase::kFailed) return -1;
  // The input is copied out first: plaintext is written over the buffer it came in.
  std::vector<char>& input = scratch();
  input.clear();
  if (c->backlog) {
    input.assign(c->backlog, c->backlog + c->backlog_len);
    std::free(c->backlog);
    c->backlog = nullptr;
    c->backlog_len = 0;
  }
  const char* received = static_cast<const char*>(buffer);
  input.insert(input.end(), received, received + *len);
  c->in = input.data();
  c->in_len = input.size();
  *len = 0;
  ERR_clear_error();
  if (c->phase == Phase::kHandshake) {
    const int r = SSL_do_handshake(c->ssl);
    if (!send_staged(c)) return fail(c, "no memory for handshake records", 0);
    if (r != 1) {
      const int e = SSL_get_error(c->ssl, r);
      if (e == SSL_ERROR_WANT_READ) return 0;  // OpenSSL keeps a partial record itself
      return fail(c, "handshake failed", e);
    }
    established(c);
  }
  auto* out = static_cast<char*>(buffer);
  std::size_t produced = 0;
  while (produced < max_len && c->phase == Phase::kOpen) {
    const int want = static_cast<int>(std::min<std::size_t>(max_len - produced, INT_MAX));
    const int r = SSL_read(c->ssl, out + produced, want);
    if (r > 0) {
      produced += static_cast<std::size_t>(r);
      continue;
    }
    const int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) break;
    if (e == SSL_ERROR_ZERO_RETURN) {
      c->phase = Phase::kEnded;  // close_notify: the peer sends no more
      break;
    }
    send_staged(c);
    return fail(c, "bad record", e);
  }
  // Records OpenSSL answers on its own: a KeyUpdate, tickets a client receives.
  if (!send_staged(c)) return fail(c, "no memory for TLS records", 0);
  if (!keep_backlog(c)) return fail(c, "no memory for received records", 0);
  *len = static_cast<ssize_t>(produced);
  return c->phase == Phase::kEnded ? 1 : 0;
}

int tls_wrap(int, Packet* packet, void* udata) {
  auto* c = static_cast<Connection*>(udata);
  if (c->phase == Phase::kHandshake) return 1;  // held until established() asks for a flush
  if (c->phase == Phase::kFailed || c->shut) return -1;
  const auto n = static_cast<std::size_t>(packet->length);
  if (n == 0) return 0;
  if (n > BUFFER_FILE_READ_SIZE) {
    set_error("a packet of more than BUFFER_FILE_READ_SIZE bytes cannot be one TLS record");
    log_failure(*c->config, c->fd);
    return -1;
  }
  std::vector<char>& plain = scratch();
  plain.assign(static_cast<const char*>(packet->buffer),
               static_cast<const char*>(packet->buffer) + n);
  if (packet->metadata.external) {  // a sock_send_packet buffer: the record replaces it
    std::free(packet->buffer);
    packet->metadata.external = 0;
    packet->buffer = packet->internal_memory;
  }
  ERR_clear_error();
  c->sink = packet->internal_memory;
  c->sink_len = 0;
  const int r = SSL_write(c->ssl, plain.data(), static_cast<int>(n));
  c->sink = nullptr;
  if (r != static_cast<int>(n)) return fail(c, "cannot encrypt a record", SSL_get_error(c->ssl, r));
  packet->length = static_cast<ssize_t>(c->sink_len);
  return 0;
}

void tls_before_close(int, sockTLC* layer) {
  auto* c = static_cast<Connection*>(layer->udata);
  if ((c->phase != Phase::kOpen && c->phase != Phase::kEnded) || c->shut) return;
  c->shut = true;
  ERR_clear_error();
  SSL_shutdown(c->ssl);  // queues close_notify; the peer's answer is not awaited
  send_staged(c);
}

void tls_on_clear(int, sockTLC* layer) {
  auto* c = static_cast<Connection*>(layer->udata);
  if (c->phase == Phase::kHandshake) {
    count_failure(sock_close_reason() == SOCK_CLOSE_TIMEOUT ? SOCK_TLS_FAIL_TIMEOUT
                                                            : SOCK_TLS_FAIL_CLOSED);
  }
  count_open(-1);
  SSL_free(c->ssl);
  std::free(c->backlog);
  release(c->config);
  delete c;
}

int start(int fd, SockTLS* config, bool server, const char* server_name) {
  if (!config || config->server != server) {
    errno = EINVAL;
    return -1;
  }
  if (sock_tlc_get(fd)) {
    errno = EINVAL;  // TLS must be the lowest layer: add the others after it
    return -1;
  }
  if (sock_status(fd) < 0) return -1;  // EBADF
  auto* c = new (std::nothrow) Connection{};
  BIO* bio = bio_method() ? BIO_new(bio_method()) : nullptr;
  SSL* ssl = c && bio ? SSL_new(config->ctx) : nullptr;
  if (!ssl) {
    BIO_free(bio);
    delete c;
    set_error("cannot create a TLS connection");
    errno = ENOMEM;
    return -1;
  }
  BIO_set_data(bio, c);
  SSL_set_bio(ssl, bio, bio);  // one reference, taken by ssl
  c->layer = sockTLC{nullptr, c, tls_wrap, tls_unwrap, tls_on_clear, tls_before_close};
  c->ssl = ssl;
  c->config = config;
  c->fd = fd;
  c->started_us = monotonic_us();
  bool ok = true;
  if (server) {
    SSL_set_accept_state(ssl);
  } else {
    SSL_set_connect_state(ssl);
    if (server_name) {
      // SNI only for a DNS name (RFC 6066); the certificate is checked against IPs too.
      const bool is_ip = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), server_name) == 1;
      ok = is_ip || (SSL_set_tlsext_host_name(ssl, server_name) == 1 &&
                     SSL_set1_host(ssl, server_name) == 1);
    }
  }
  if (!ok || sock_tlc_add(fd, &c->layer) < 0) {
    const int err = ok ? errno : EINVAL;
    SSL_free(ssl);
    delete c;
    errno = err;
    return -1;
  }
  // From here the layer owns c: on_clear frees it.
  retain(config);
  count_open(1);
  if (config->handshake_ms) sock_set_deadline(fd, config->handshake_ms);
  if (!server) {
    ERR_clear_error();
    const int r = SSL_do_handshake(ssl);  // stages the ClientHello
    int err = 0;
    if (r != 1 && SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ) {
      fail(c, "cannot start the handshake", SSL_get_error(ssl, r));
      err = EPROTO;
    } else if (!send_staged(c)) {
      err = ENOMEM;
    }
    if (err) {
      sock_tlc_set(fd, nullptr);  // on_clear frees c; the fd stays as it was
      errno = err;
      return -1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace tls

extern "C" {

int sock_tls_accept(int fd, struct SockTLS* tls) { return tls::start(fd, tls, true, nullptr); }

int sock_tls_connect(int fd, struct SockTLS* tls, const char* server_name) {
  return tls::start(fd, tls, false, server_name);
}

int sock_tls_established(int fd) {
  const tls::Connection* c = tls::of(fd);
  if (!c) {
    errno = EBADF;
    return -1;
  }
  return c->phase == tls::Phase::kOpen || c->phase == tls::Phase::kEnded ? 1 : 0;
}

const char* sock_tls_alpn(int fd) {
  const tls::Connection* c = tls::of(fd);
  if (!c) return nullptr;
  const unsigned char* name = nullptr;
  unsigned len = 0;
  SSL_get0_alpn_selected(c->ssl, &name, &len);
  // OpenSSL's copy is not NUL-terminated; the chosen name is always one of the
  // configuration's (a server chooses from its own, a client's server from those offered).
  for (const std::string& ours : c->config->alpn_names) {
    if (ours.size() == len && std::memcmp(ours.data(), name, len) == 0) return ours.c_str();
  }
  return nullptr;
}

int sock_tls_resumed(int fd) {
  const tls::Connection* c = tls::of(fd);
  if (!c) {
    errno = EBADF;
    return -1;
  }
  return SSL_session_reused(c->ssl) == 1 ? 1 : 0;
}

}  // extern "C"
