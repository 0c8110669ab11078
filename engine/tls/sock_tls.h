/* sock_tls: TLS 1.2 and 1.3 for libsock connections, as a transport layer (libsock.h's TLC)
 * over OpenSSL 3. Everything above the layer (the write queue, urgent writes, packets, pool
 * accounting, timeouts, sharding) works unchanged: sock_write queues plaintext, each record is
 * encrypted into its own packet just before it is sent, sock_read returns plaintext.
 *
 * Errors: -1 and errno, or NULL and errno, as in libsock.h. OpenSSL's reasons never crash the
 * process: a connection whose TLS fails closes with SOCK_CLOSE_ERROR (a handshake that does
 * not finish in time: SOCK_CLOSE_TIMEOUT), and the reason is logged (sock_tls_set_log) and
 * readable with sock_tls_error() in that connection's on_close (per thread: of the thread's
 * last failure, so with two failures in one loop iteration the second's).
 * Ownership: a struct SockTLS (the configuration: certificates, trust, ALPN, ticket keys) is
 *   reference-counted: each connection using it holds a reference, so sock_tls_free() may run
 *   while connections are open; it is freed with the last one.
 * Threads: configuration calls (sock_tls_server_new, sock_tls_add_certificate,
 *   sock_tls_client_new, sock_tls_set_alpn, sock_tls_set_handshake_timeout, sock_tls_set_log)
 *   only before the configuration is shared, on one thread: connections read it unlocked (an
 *   SNI certificate cannot be added to a running server); after that any thread may pass it
 *   to sock_tls_accept/connect.
 *   sock_tls_accept, sock_tls_connect and the per-fd queries need the fd's owner thread (as
 *   libsock.h's sock_tlc_ calls: EPERM elsewhere). sock_tls_stats and sock_tls_metrics: any
 *   thread. Session tickets are encrypted with keys held by the configuration, so every shard
 *   resumes every other shard's sessions; a new key takes over every SOCK_TLS_TICKET_KEY_S
 *   seconds, and a ticket is accepted for SOCK_TLS_TICKET_KEY_S seconds after it was issued
 *   (the lifetime it advertises) unless sock_tls_rotate_ticket_keys runs twice meanwhile.
 * Files: sock_write2's .file data is read into packets and encrypted (no kernel TLS here).
 *   Packets given to sock_send_packet must hold at most BUFFER_FILE_READ_SIZE bytes each.
 */
#ifndef SOCK_TLS_H
#define SOCK_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* These declarations are what the shared library exports: tools/install builds everything
 * else with hidden visibility (docs/install.md). */
#if defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

/** Seconds each session-ticket key encrypts new tickets before the next one takes over, and
 * the lifetime of a ticket. */
#define SOCK_TLS_TICKET_KEY_S 3600
/** The handshake deadline a new configuration starts with, in milliseconds. */
#define SOCK_TLS_HANDSHAKE_MS 10000

/** A TLS configuration (an OpenSSL SSL_CTX and what goes with it). */
struct SockTLS;

/** Files: the certificate, key and CA files below are PEM, regular files of at most 16 MiB,
 * read whole without blocking (a FIFO, a device or a directory is refused); an encrypted
 * private key is refused too (no passphrase is asked for). */

/** A server configuration with one certificate chain and its private key (PEM files). TLS 1.2
 * (ECDHE with AES-GCM or ChaCha20-Poly1305) and 1.3, no renegotiation, session tickets on.
 * Returns NULL with errno: EINVAL (a NULL path, or files OpenSSL refuses: the reason is in
 * sock_tls_error()), ENOMEM. */
struct SockTLS* sock_tls_server_new(const char* cert_file, const char* key_file);

/** Adds another certificate chain and key to a server configuration, served to clients whose
 * SNI name matches one of its names (subjectAltName DNS entries or, lacking those, its CN;
 * wildcards as RFC 6125). Unmatched or absent names get the first certificate. Only before the
 * configuration is shared (Threads, above). Returns 0, or -1 with errno EINVAL (a client
 * configuration, bad files: see sock_tls_error()), ENOMEM. */
int sock_tls_add_certificate(struct SockTLS* tls, const char* cert_file, const char* key_file);

/** A client configuration that verifies servers against ca_file (PEM, one or more CAs) or,
 * when NULL, the system's trust store. Returns NULL with errno (EINVAL, ENOMEM). */
struct SockTLS* sock_tls_client_new(const char* ca_file);

/** The application protocols to negotiate (ALPN), comma-separated in order of preference:
 * "h2,http/1.1". A server picks the first of its own that the client offers and goes on
 * without ALPN when there is none; a client offers them. Returns 0, or -1 with errno EINVAL
 * (NULL, empty or over-long names) or ENOMEM, the reason in sock_tls_error(). */
int sock_tls_set_alpn(struct SockTLS* tls, const char* protocols);

/** The handshake deadline (ms, 0: none) for connections started after the call (each reads it
 * once, as it starts): a peer that has not finished its handshake by then is closed
 * (SOCK_CLOSE_TIMEOUT). It uses the fd's deadline (sock_set_deadline), which the layer clears
 * when the handshake completes if it set it: on a connection started with 0, a deadline the
 * application set stays. Returns 0, or -1 with errno EINVAL for a NULL tls. */
int sock_tls_set_handshake_timeout(struct SockTLS* tls, unsigned ms);

/** Where failure reasons go: log(fd, reason, udata) on the failing connection's thread, for
 * each failed handshake or record, from inside the library's read or write of fd. The default
 * writes "libsock tls: fd N: reason" to stderr; NULL stays silent. log must not close fd or
 * change its layers: once it returns, the library closes fd (SOCK_CLOSE_ERROR: its on_close
 * can read the reason with sock_tls_error()) or, in a failing sock_tls_connect, takes the
 * layer off. Returns 0, or -1 with errno EINVAL for a NULL tls. */
int sock_tls_set_log(struct SockTLS* tls, void (*log)(int fd, const char* reason, void* udata),
                     void* udata);

/** Starts a new session-ticket key now, as the SOCK_TLS_TICKET_KEY_S schedule does (for a
 * deployment's own schedule, or after a key may have leaked): tickets of the key before
 * still resume and are renewed, older ones give a full handshake. Returns 0, or -1 with errno
 * EINVAL (NULL or a client configuration) or EIO (no random bytes), the reason in
 * sock_tls_error(). Any thread. */
int sock_tls_rotate_ticket_keys(struct SockTLS* tls);

/** Drops the caller's reference (connections keep theirs). NULL is a no-op. */
void sock_tls_free(struct SockTLS* tls);

/** Starts the server side of TLS on fd (opened with the sock_ API and attached to a reactor,
 * typically in a server's on_open; it must stay attached) as its lowest transport layer: add
 * other layers after this call. The handshake runs as the peer's bytes arrive (sock_read
 * drives it: read in on_data as usual); writes made meanwhile are held and sent, in order,
 * once it completes. Owner thread.
 * Returns 0, or -1 with errno: EBADF, EPERM (another thread), EINVAL (a NULL or client
 * configuration, fd has layers already, or fd has no reactor: the layer's records would wait
 * for a sock_flush, and the handshake deadline needs one), ENOMEM. */
int sock_tls_accept(int fd, struct SockTLS* tls);

/** Starts the client side on fd (from sock_connect with a reactor; any time before data
 * flows): sends the ClientHello with server_name as SNI and verifies the server's certificate
 * against it (a DNS name or an IP address; NULL: no SNI and no name check, the chain is still
 * verified). Writes are held until the handshake completes. A failed verification closes the
 * connection with SOCK_CLOSE_ERROR and a reason such as "certificate verify failed:
 * certificate has expired". Owner thread. Returns 0, or -1 with errno as sock_tls_accept
 * (EINVAL for a server configuration, and for a server_name that SNI cannot carry: empty or
 * over 255 bytes, the reason in sock_tls_error()). */
int sock_tls_connect(int fd, struct SockTLS* tls, const char* server_name);

/** 1 once fd's handshake completed, 0 while it runs, or -1 with errno: EBADF (an fd without
 * TLS, or closed), EPERM (another thread). Owner thread. */
int sock_tls_established(int fd);

/** The protocol ALPN chose for fd ("http/1.1"), or NULL (none, no TLS, or not yet). The string
 * is the configuration's: it lives as long as the connection, unless sock_tls_set_alpn
 * replaces the configuration's list first (which Threads, above, allows only before the
 * configuration is shared). Owner thread. */
const char* sock_tls_alpn(int fd);

/** 1 if fd's session was resumed from a ticket, 0 if not (or not yet), or -1 with errno as
 * sock_tls_established. Owner thread. */
int sock_tls_resumed(int fd);

/** The calling thread's last TLS failure reason (configuration or connection), or "" if
 * none. Valid until the thread's next TLS failure: read it in the failing connection's
 * on_close, or right after a configuration call failed. */
const char* sock_tls_error(void);

/** Why handshakes failed (the reason label of the metrics). */
enum SockTLSFailure {
  SOCK_TLS_FAIL_PROTOCOL = 0,    /* bad or unexpected records: not TLS, no shared cipher */
  SOCK_TLS_FAIL_CERTIFICATE = 1, /* the peer's certificate did not verify */
  SOCK_TLS_FAIL_TIMEOUT = 2,     /* the handshake deadline expired */
  SOCK_TLS_FAIL_CLOSED = 3,      /* the peer or the application closed mid-handshake */
  SOCK_TLS_FAIL_REASONS = 4
};

/** Process-wide counters, every configuration together. */
struct SockTLSStats {
  uint64_t handshakes;         /* completed, resumed ones included */
  uint64_t resumed;            /* of those, resumed from a ticket */
  uint64_t failures[SOCK_TLS_FAIL_REASONS];
  uint64_t handshake_us_sum;   /* microseconds from the layer's start to completion */
  uint64_t records_failed;     /* established connections failed on a record: a bad one
                                  received, or one that could not be sealed or queued */
  uint64_t open;               /* connections with the layer now */
};

/** Fills *stats. The counters are read one after another while other threads count, so a
 * handshake completed meanwhile may show in one field and not yet in another; each field but
 * `open` only grows from one call to the next. Returns 0, or -1 with errno EINVAL. Any
 * thread. */
int sock_tls_stats(struct SockTLSStats* stats);

/** Writes the counters as Prometheus text (families libsock_tls_handshakes_total,
 * libsock_tls_handshake_failures_total{reason}, libsock_tls_handshake_seconds (a histogram),
 * libsock_tls_record_failures_total, libsock_tls_connections) into buf from buf[0], as
 * snprintf does (to add them to other text, pass the end of that text). Returns the length the
 * whole text needs (not counting a NUL, which is written when it fits); it was written only
 * if that is below size. -1 with errno EINVAL for a NULL buf with a size. Any thread. */
ssize_t sock_tls_metrics(char* buf, size_t size);

#if defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif /* SOCK_TLS_H */
