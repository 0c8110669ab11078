// File: engine/tls/config.h
// What a struct SockTLS (sock_tls.h) holds, for the connection layer (layer.cc): the SSL_CTX
// of each certificate, the ALPN list, the handshake deadline, the ticket keys and the log.
// Threads: built by one thread, then read-only but for the reference count and the ticket
// keys (ticket_keys.h). Errors: set_error() keeps the reason for sock_tls_error().
#ifndef ENGINE_TLS_CONFIG_H_
#define ENGINE_TLS_CONFIG_H_

#include <openssl/ssl.h>

#include <atomic>
#include <string>
#include <vector>

#include "alloc/cache_line.h"
#include "engine/tls/sock_tls.h"
#include "engine/tls/ticket_keys.h"

namespace tls {

// The creator's reference plus one per connection with the layer. Every shard changes it at
// each connection's start and end, so it has a cache line of its own: the members after it,
// read at each connection's start (ctx, sni_contexts, alpn), then stay in every shard's cache.
struct alignas(alloc::kCacheLineBytes) RefCount {
  std::atomic<int> count{1};
};
static_assert(sizeof(RefCount) == alloc::kCacheLineBytes, "the reference count fills its line alone");

}  // namespace tls

struct SockTLS {
  tls::RefCount refs;  // first: the members below start on the next line
  bool server = false;
  SSL_CTX* ctx = nullptr;             // the first certificate's (server) or the client's
  std::vector<SSL_CTX*> sni_contexts; // sock_tls_add_certificate, matched by SNI name
  std::string alpn;                   // wire format: length-prefixed names
  std::vector<std::string> alpn_names;  // the same names, for sock_tls_alpn()
  unsigned handshake_ms = SOCK_TLS_HANDSHAKE_MS;
  void (*log)(int fd, const char* reason, void* udata) = nullptr;
  void* log_udata = nullptr;
  tls::TicketKeys tickets;
};

namespace tls {

// Keeps reason (with OpenSSL's error queue appended, and cleared) for sock_tls_error().
// Returns the stored text.
const char* set_error(const std::string& reason);

// The configuration's log, if any, with the thread's last error.
void log_failure(const SockTLS& tls, int fd);

void retain(SockTLS* tls);
void release(SockTLS* tls);

}  // namespace tls

#endif  // ENGINE_TLS_CONFIG_H_
