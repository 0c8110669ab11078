#include "engine/tls/ticket_keys.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cstring>
#include <ctime>

#include "engine/tls/config.h"

namespace tls {
namespace {

int64_t now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec;
}

// A key's tickets are AES-256-CBC with HMAC-SHA256, as OpenSSL's own default tickets are.
int use_key(const unsigned char* aes, const unsigned char* hmac, unsigned char* iv,
            EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int encrypt) {
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, const_cast<unsigned char*>(hmac), 32),
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
      OSSL_PARAM_construct_end()};
  if (EVP_MAC_CTX_set_params(mac, params) != 1) return -1;
  const int ok = encrypt ? EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, aes, iv)
                         : EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), nullptr, aes, iv);
  return ok == 1 ? 1 : -1;
}

}  // namespace

int TicketKeys::callback(SSL* ssl, unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                         EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int encrypt) {
  // Every context of a configuration (SNI ones too) points back to it.
  auto* config = static_cast<SockTLS*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  if (!config) return -1;
  if (encrypt) return config->tickets.encrypt(name, iv, cipher, mac);
  const int found = config->tickets.decrypt(name, iv, cipher, mac);
  // A TLS 1.3 client uses each ticket once (RFC 8446 C.4): without a renewal, one that
  // resumed has none left for its next connection.
  return found == 1 && SSL_version(ssl) == TLS1_3_VERSION ? 2 : found;
}

bool TicketKeys::make_current_locked(int64_t now) {
  Key fresh;
  if (RAND_bytes(fresh.name, sizeof fresh.name) != 1 ||
      RAND_priv_bytes(fresh.aes, sizeof fresh.aes) != 1 ||
      RAND_priv_bytes(fresh.hmac, sizeof fresh.hmac) != 1) {
    return false;
  }
  fresh.born_s = now;
  fresh.set = true;
  previous_ = current_;
  current_ = fresh;
  return true;
}

bool TicketKeys::rotate() {
  std::lock_guard<std::mutex> lock(mutex_);
  return make_current_locked(now_s());
}

int TicketKeys::encrypt(unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* cipher,
                        EVP_MAC_CTX* mac) {
  Key key;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const int64_t now = now_s();
    if ((!current_.set || now - current_.born_s >= SOCK_TLS_TICKET_KEY_S) &&
        !make_current_locked(now)) {
      return -1;
    }
    key = current_;
  }
  if (RAND_bytes(iv, 16) != 1) return -1;  // an AES-CBC IV
  std::memcpy(name, key.name, sizeof key.name);
  return use_key(key.aes, key.hmac, iv, cipher, mac, 1);
}

int TicketKeys::decrypt(const unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* cipher,
                        EVP_MAC_CTX* mac) {
  Key key;
  int found = 0;  // 1: the current key, 2: the previous one (the ticket is renewed)
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const int64_t now = now_s();
    for (const Key* k : {&current_, &previous_}) {
      if (k->set && std::memcmp(k->name, name, sizeof k->name) == 0 &&
          now - k->born_s < 2 * SOCK_TLS_TICKET_KEY_S) {
        key = *k;
        found = k == &current_ ? 1 : 2;
      }
    }
  }
  if (!found) return 0;
  return use_key(key.aes, key.hmac, iv, cipher, mac, 0) < 0 ? -1 : found;
}

}  // namespace tls
