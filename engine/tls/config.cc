// The configuration calls of sock_tls.h: one SSL_CTX per certificate, set up alike.
#include "engine/tls/config.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "engine/tls/layer.h"

namespace tls {
namespace {

thread_local std::string last_error;

// TLS 1.2 suites are the AEAD ones only: a record's overhead (29 bytes at most) then fits
// the packet's headroom, which CBC's padding and MAC would not always.
constexpr char kTls12Ciphers[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

constexpr char kTls13Suites[] =
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256";

void default_log(int fd, const char* reason, void*) {
  std::fprintf(stderr, "libsock tls: fd %d: %s\n", fd, reason);
}

// Settings every context of a configuration shares (SNI may switch a connection's context).
SSL_CTX* new_context(SockTLS* config, bool server) {
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!ctx) return nullptr;
  SSL_CTX_set_app_data(ctx, config);
  SSL_CTX_set_keylog_callback(ctx, on_keylog);  // TLS 1.3 connections run on their secrets
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // Idle connections give their 17 KB record buffers back; no renegotiation (its cost is the
  // peer's to choose); no compression.
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
  // TLS 1.3: the suites record.cc runs on after the handshake, whatever openssl.cnf enables.
  if (SSL_CTX_set_cipher_list(ctx, kTls12Ciphers) != 1 ||
      SSL_CTX_set_ciphersuites(ctx, kTls13Suites) != 1) {
    SSL_CTX_free(ctx);
    return nullptr;
  }
  if (server) {
    // Stateless tickets only: no session cache to lock or bound; one ticket per handshake
    // (a client resumes with one).
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 1);
    // The lifetime a ticket advertises, and after which OpenSSL refuses its session: one key
    // period, what every ticket is sure of. A key encrypts during its first period and
    // decrypts until two have passed since it began (ticket_keys.h), so a ticket issued at
    // the end of the first has one period left; two would overstate half of them.
    SSL_CTX_set_timeout(ctx, SOCK_TLS_TICKET_KEY_S);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, TicketKeys::callback);
  }
  return ctx;
}

// Certificate, key and CA files are read whole here, never by OpenSSL's own fopen(): a FIFO or
// a device named by mistake would hold the calling thread (a server's, starting up) until
// something wrote to it, and a directory would read as "no start line". (A certificate is
// never added to a running server: the shards read sni_contexts unlocked, so sock_tls.h
// allows configuration calls only before the configuration is shared.)
// The largest PEM file in common use, a system CA bundle (Debian's: about 0.2 MB), is far
// below this bound on what a configuration call reads into memory.
constexpr off_t kMaxPemFileBytes = off_t{16} << 20;

// The contents of the regular file `path`, or false with sock_tls_error() set to `context`
// and the reason, and *text empty: what was read of it (a private key's first bytes) wiped.
bool read_pem_file(const char* path, const std::string& context, std::string* text) {
  const int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    set_error(context + ": " + std::strerror(errno));
    return false;
  }
  struct stat st {};
  std::string why;
  if (fstat(fd, &st) < 0) {
    why = std::strerror(errno);
  } else if (!S_ISREG(st.st_mode)) {
    why = "not a regular file";
  } else if (st.st_size > kMaxPemFileBytes) {
    why = "larger than " + std::to_string(kMaxPemFileBytes >> 20) + " MiB";
  } else {
    text->resize(static_cast<std::size_t>(st.st_size));
    std::size_t got = 0;
    while (got < text->size()) {
      const ssize_t n = read(fd, text->data() + got, text->size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) why = std::strerror(errno);
      if (n <= 0) break;  // the end, sooner than fstat said: the file shrank
      got += static_cast<std::size_t>(n);
    }
    text->resize(got);
  }
  close(fd);
  if (why.empty()) return true;
  // The caller wipes a key only once it has it whole (load_certificate): a read that failed
  // part-way would leave the bytes read in freed memory.
  OPENSSL_cleanse(text->data(), text->size());
  text->clear();
  set_error(context + ": " + why);
  return false;
}

// OpenSSL's default asks on the terminal, blocking the calling thread: no passphrase is ever
// given. *asked (when given) records that a key needed one.
int refuse_passphrase(char*, int, int, void* asked) {
  if (asked) *static_cast<bool*>(asked) = true;
  return -1;
}

// A BIO over the text (which must outlive it); nullptr when out of memory.
BIO* text_bio(const std::string& text) {
  return BIO_new_mem_buf(text.data(), static_cast<int>(text.size()));
}

// After reading PEM blocks until none is left: whether the only error is that end ("no start
// line"), which is then cleared.
bool only_the_end_failed() {
  const unsigned long e = ERR_peek_last_error();
  if (ERR_GET_LIB(e) != ERR_LIB_PEM || ERR_GET_REASON(e) != PEM_R_NO_START_LINE) return false;
  ERR_clear_error();
  return true;
}

// The leaf certificate, then the chain behind it, as SSL_CTX_use_certificate_chain_file does.
bool use_certificate_chain(SSL_CTX* ctx, const std::string& pem) {
  BIO* bio = text_bio(pem);
  if (!bio) return false;
  X509* leaf = PEM_read_bio_X509_AUX(bio, nullptr, refuse_passphrase, nullptr);
  bool ok = leaf && SSL_CTX_use_certificate(ctx, leaf) == 1 && SSL_CTX_clear_chain_certs(ctx) == 1;
  X509_free(leaf);
  while (ok) {
    X509* ca = PEM_read_bio_X509(bio, nullptr, refuse_passphrase, nullptr);
    if (!ca) {
      ok = only_the_end_failed();
      break;
    }
    if (SSL_CTX_add0_chain_cert(ctx, ca) != 1) {  // takes ca only on success
      X509_free(ca);
      ok = false;
    }
  }
  BIO_free(bio);
  return ok;
}

bool load_certificate(SSL_CTX* ctx, const char* cert_file, const char* key_file) {
  const std::string cert_context = std::string("cannot use certificate ") + cert_file;
  const std::string key_context = std::string("cannot use private key ") + key_file;
  std::string cert_pem, key_pem;
  if (!read_pem_file(cert_file, cert_context, &cert_pem)) return false;
  if (!use_certificate_chain(ctx, cert_pem)) {
    set_error(cert_context);
    return false;
  }
  if (!read_pem_file(key_file, key_context, &key_pem)) return false;
  BIO* bio = text_bio(key_pem);
  bool asked = false;
  EVP_PKEY* key = bio ? PEM_read_bio_PrivateKey(bio, nullptr, refuse_passphrase, &asked) : nullptr;
  BIO_free(bio);
  OPENSSL_cleanse(key_pem.data(), key_pem.size());  // no copy of the key left in freed memory
  if (!key) {
    if (asked) ERR_clear_error();  // OpenSSL's words would only say that no passphrase came
    set_error(asked ? key_context + ": encrypted, and no passphrase can be given" : key_context);
    return false;
  }
  const bool used = SSL_CTX_use_PrivateKey(ctx, key) == 1;  // checks it against the certificate
  EVP_PKEY_free(key);
  if (!used) {
    set_error(key_context);
    return false;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    set_error(std::string("private key ") + key_file + " does not match " + cert_file);
    return false;
  }
  return true;
}

// The CA certificates (and CRLs) of a PEM file, as SSL_CTX_load_verify_locations loads them.
bool load_ca_file(SSL_CTX* ctx, const char* ca_file) {
  const std::string context = std::string("cannot load CA certificates from ") + ca_file;
  std::string pem;
  if (!read_pem_file(ca_file, context, &pem)) return false;
  BIO* bio = text_bio(pem);
  STACK_OF(X509_INFO)* infos =
      bio ? PEM_X509_INFO_read_bio(bio, nullptr, refuse_passphrase, nullptr) : nullptr;
  BIO_free(bio);
  X509_STORE* store = SSL_CTX_get_cert_store(ctx);
  int certificates = 0;
  bool ok = infos != nullptr;
  for (int i = 0; ok && i < sk_X509_INFO_num(infos); ++i) {
    const X509_INFO* info = sk_X509_INFO_value(infos, i);
    if (info->x509) {
      ok = X509_STORE_add_cert(store, info->x509) == 1;
      ++certificates;
    }
    if (ok && info->crl) ok = X509_STORE_add_crl(store, info->crl) == 1;
  }
  sk_X509_INFO_pop_free(infos, X509_INFO_free);
  if (ok && certificates) return true;
  set_error(ok ? context + ": no certificate in it" : context);
  return false;
}

// The first of the server's protocols that the client offers, else none (no ALPN).
int select_alpn(SSL* ssl, const unsigned char** out, unsigned char* out_len,
                const unsigned char* in, unsigned in_len, void*) {
  const auto* config = static_cast<const SockTLS*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  unsigned char* chosen = nullptr;
  const auto* ours = reinterpret_cast<const unsigned char*>(config->alpn.data());
  if (SSL_select_next_proto(&chosen, out_len, ours, static_cast<unsigned>(config->alpn.size()),
                            in, in_len) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_NOACK;
  }
  *out = chosen;
  return SSL_TLSEXT_ERR_OK;
}

// SNI: the first added certificate whose names match; the default one otherwise.
int select_certificate(SSL* ssl, int*, void*) {
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  const auto* config = static_cast<const SockTLS*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  if (!name) return SSL_TLSEXT_ERR_OK;
  for (SSL_CTX* ctx : config->sni_contexts) {
    X509* cert = SSL_CTX_get0_certificate(ctx);
    if (cert && X509_check_host(cert, name, 0, 0, nullptr) == 1) {
      SSL_set_SSL_CTX(ssl, ctx);
      break;
    }
  }
  return SSL_TLSEXT_ERR_OK;
}

SockTLS* fail_new(SockTLS* config, int err) {
  sock_tls_free(config);
  errno = err;
  return nullptr;
}

}  // namespace

const char* set_error(const std::string& reason) {
  last_error = reason;
  const char* sep = ": ";
  const char* previous = nullptr;
  while (unsigned long e = ERR_get_error()) {
    // "certificate verify failed"; a system error's reason is errno, not words.
    const char* words = ERR_SYSTEM_ERROR(e) ? std::strerror(ERR_GET_REASON(e))
                                            : ERR_reason_error_string(e);
    if (!words || (previous && std::strcmp(words, previous) == 0)) continue;
    last_error += sep;
    last_error += words;
    sep = ", ";
    previous = words;
  }
  return last_error.c_str();
}

void log_failure(const SockTLS& tls, int fd) {
  if (tls.log) tls.log(fd, last_error.c_str(), tls.log_udata);
}

void retain(SockTLS* tls) { tls->refs.count.fetch_add(1, std::memory_order_relaxed); }

void release(SockTLS* tls) {
  // acq_rel: the last owner sees every other owner's use of the contexts before freeing.
  if (tls->refs.count.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  for (SSL_CTX* ctx : tls->sni_contexts) SSL_CTX_free(ctx);
  SSL_CTX_free(tls->ctx);
  delete tls;
}

}  // namespace tls

extern "C" {

struct SockTLS* sock_tls_server_new(const char* cert_file, const char* key_file) {
  if (!cert_file || !key_file) {
    tls::set_error("a server needs a certificate and a key file");
    errno = EINVAL;
    return nullptr;
  }
  auto* config = new (std::nothrow) SockTLS;
  if (!config) return tls::fail_new(nullptr, ENOMEM);
  config->server = true;
  config->log = tls::default_log;
  config->ctx = tls::new_context(config, true);
  if (!config->ctx) {
    tls::set_error("cannot create a TLS context");
    return tls::fail_new(config, ENOMEM);
  }
  if (!tls::load_certificate(config->ctx, cert_file, key_file)) {
    return tls::fail_new(config, EINVAL);
  }
  SSL_CTX_set_tlsext_servername_callback(config->ctx, tls::select_certificate);
  SSL_CTX_set_alpn_select_cb(config->ctx, tls::select_alpn, nullptr);
  return config;
}

int sock_tls_add_certificate(struct SockTLS* tls, const char* cert_file, const char* key_file) {
  if (!tls || !tls->server || !cert_file || !key_file) {
    tls::set_error("sock_tls_add_certificate needs a server configuration and two files");
    errno = EINVAL;
    return -1;
  }
  SSL_CTX* ctx = tls::new_context(tls, true);
  if (!ctx) {
    tls::set_error("cannot create a TLS context");
    errno = ENOMEM;
    return -1;
  }
  if (!tls::load_certificate(ctx, cert_file, key_file)) {
    SSL_CTX_free(ctx);
    errno = EINVAL;
    return -1;
  }
  SSL_CTX_set_alpn_select_cb(ctx, tls::select_alpn, nullptr);
  tls->sni_contexts.push_back(ctx);
  return 0;
}

struct SockTLS* sock_tls_client_new(const char* ca_file) {
  auto* config = new (std::nothrow) SockTLS;
  if (!config) return tls::fail_new(nullptr, ENOMEM);
  config->log = tls::default_log;
  config->ctx = tls::new_context(config, false);
  if (!config->ctx) {
    tls::set_error("cannot create a TLS context");
    return tls::fail_new(config, ENOMEM);
  }
  if (ca_file && !tls::load_ca_file(config->ctx, ca_file)) return tls::fail_new(config, EINVAL);
  if (!ca_file && SSL_CTX_set_default_verify_paths(config->ctx) != 1) {
    tls::set_error("cannot load CA certificates from the system store");
    return tls::fail_new(config, EINVAL);
  }
  SSL_CTX_set_verify(config->ctx, SSL_VERIFY_PEER, nullptr);
  return config;
}

int sock_tls_set_alpn(struct SockTLS* tls, const char* protocols) {
  std::string wire;
  std::vector<std::string> names;
  const char* p = protocols;
  while (p && *p) {
    const char* end = std::strchr(p, ',');
    const std::size_t n = end ? static_cast<std::size_t>(end - p) : std::strlen(p);
    if (n == 0 || n > 255) break;
    wire += static_cast<char>(n);
    wire.append(p, n);
    names.emplace_back(p, n);
    p = end ? end + 1 : p + n;
  }
  if (!tls || !protocols || wire.empty() || (p && *p) ||
      protocols[std::strlen(protocols) - 1] == ',') {
    tls::set_error("sock_tls_set_alpn needs a configuration and names of 1 to 255 bytes");
    errno = EINVAL;
    return -1;
  }
  if (!tls->server &&
      SSL_CTX_set_alpn_protos(tls->ctx, reinterpret_cast<const unsigned char*>(wire.data()),
                              static_cast<unsigned>(wire.size())) != 0) {
    // set_error also takes OpenSSL's error off the thread's queue, where it would end the
    // next reason.
    tls::set_error("no memory for the ALPN list");
    errno = ENOMEM;
    return -1;
  }
  tls->alpn = std::move(wire);
  tls->alpn_names = std::move(names);
  return 0;
}

int sock_tls_set_handshake_timeout(struct SockTLS* tls, unsigned ms) {
  if (!tls) {
    errno = EINVAL;
    return -1;
  }
  tls->handshake_ms = ms;
  return 0;
}

int sock_tls_set_log(struct SockTLS* tls, void (*log)(int, const char*, void*), void* udata) {
  if (!tls) {
    errno = EINVAL;
    return -1;
  }
  tls->log = log;
  tls->log_udata = udata;
  return 0;
}

int sock_tls_rotate_ticket_keys(struct SockTLS* tls) {
  if (!tls || !tls->server) {
    tls::set_error("sock_tls_rotate_ticket_keys needs a server configuration");
    errno = EINVAL;
    return -1;
  }
  if (!tls->tickets.rotate()) {
    tls::set_error("no random bytes for a new ticket key");  // and OpenSSL's queue cleared
    errno = EIO;
    return -1;
  }
  return 0;
}

void sock_tls_free(struct SockTLS* tls) {
  if (tls) tls::release(tls);
}

const char* sock_tls_error(void) { return tls::last_error.c_str(); }

}  // extern "C"
