/* wrk_no_resume: an LD_PRELOAD library that makes wrk 4.1 run a full TLS handshake on every
 * connection, and says what it negotiated, for bench/tls_compare.sh's handshake load.
 *   LD_PRELOAD=.../libwrk_no_resume.so wrk -H "Connection: close" https://...
 * On exit it writes one line to stderr:
 *   wrk_no_resume: N connections, T TLSv1.3, R resumed, first TLSv1.3 TLS_AES_256_GCM_SHA384
 * counting the connections whose handshake completed and that wrk closed to reconnect (with
 * keep-alive wrk never does, so N is 0 there). WRK_KEEP_SESSIONS=1 in the environment: only
 * count, leaving wrk's own resumption as it is.
 *
 * Why: wrk keeps one SSL object per connection slot and, to reconnect, runs SSL_shutdown and
 * then SSL_clear on it (src/ssl.c, ssl_close). An SSL that sent its close_notify keeps its
 * session through SSL_clear, so the next SSL_connect offers it (in TLS 1.3, the server's last
 * ticket), and many of wrk's `Connection: close` handshakes resume (how many depends on the
 * server's tickets: tls_compare.sh shows it). This wraps
 * SSL_clear, which wrk calls only there, and drops the kept session.
 * Hazard: it works only while wrk reaches SSL_clear through the dynamic linker (Debian's wrk
 * links libssl.so); a wrk that does not prints no line, and the script says so. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libssl's own SSL_clear and WRK_KEEP_SESSIONS, read once when the library is loaded (before
 * wrk's threads). */
static int (*real_clear)(SSL*);
static int keep_sessions;
/* Any of wrk's threads may close connections: the counts are atomic. */
static atomic_ulong closed, tls13, resumed;
/* The first closed connection's version and cipher: static strings of libssl's tables. */
static _Atomic(const char*) first_version, first_cipher;

__attribute__((constructor)) static void find_real_clear(void) {
  real_clear = (int (*)(SSL*))dlsym(RTLD_NEXT, "SSL_clear");
  const char* keep = getenv("WRK_KEEP_SESSIONS");
  keep_sessions = keep != NULL && strcmp(keep, "1") == 0;
}

__attribute__((destructor)) static void report(void) {
  const char* version = atomic_load(&first_version);
  const char* cipher = atomic_load(&first_cipher);
  fprintf(stderr, "wrk_no_resume: %lu connections, %lu TLSv1.3, %lu resumed, first %s %s\n",
          atomic_load(&closed), atomic_load(&tls13), atomic_load(&resumed),
          version != NULL ? version : "-", cipher != NULL ? cipher : "-");
}

int SSL_clear(SSL* ssl) {
  if (real_clear == NULL) return 0; /* SSL_clear's own failure value */
  if (SSL_is_init_finished(ssl)) {
    atomic_fetch_add(&closed, 1);
    if (SSL_version(ssl) == TLS1_3_VERSION) atomic_fetch_add(&tls13, 1);
    if (SSL_session_reused(ssl)) atomic_fetch_add(&resumed, 1);
    const char* none = NULL;
    if (atomic_compare_exchange_strong(&first_version, &none, SSL_get_version(ssl))) {
      atomic_store(&first_cipher, SSL_get_cipher_name(ssl));
    }
  }
  const int ok = real_clear(ssl);
  if (!keep_sessions) SSL_set_session(ssl, NULL); /* the next handshake: a full one */
  return ok;
}
