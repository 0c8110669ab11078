// File: engine/tls/ticket_keys.h
// Session-ticket keys of one configuration, shared by every shard (so any shard resumes any
// shard's sessions): a current key that encrypts new tickets and the one before it, which
// still decrypts (and has the ticket renewed). The current key is replaced every
// SOCK_TLS_TICKET_KEY_S seconds, when a ticket is next issued; a key decrypts for at most two
// such periods. Threads: any (one mutex, taken once per ticket issued or presented).
#ifndef ENGINE_TLS_TICKET_KEYS_H_
#define ENGINE_TLS_TICKET_KEYS_H_

#include <openssl/ssl.h>

#include <cstdint>
#include <mutex>

namespace tls {

class TicketKeys {
 public:
  // OpenSSL's ticket callback (SSL_CTX_set_tlsext_ticket_key_evp_cb) for contexts whose
  // configuration holds these keys: 1 (use the key), 2 (renew: decrypted by the old key, or
  // a TLS 1.3 ticket, which is used once), 0 (unknown or expired key: full handshake), -1
  // (failure).
  static int callback(SSL* ssl, unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                      EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int encrypt);
  // Starts a new current key now (sock_tls_rotate_ticket_keys).
  bool rotate();  // false: no random bytes (the keys stay)

 private:
  struct Key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    int64_t born_s = 0;
    bool set = false;
  };
  int encrypt(unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac);
  int decrypt(const unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* cipher,
              EVP_MAC_CTX* mac);
  bool make_current_locked(int64_t now_s);

  std::mutex mutex_;
  Key current_;
  Key previous_;
};

}  // namespace tls

#endif  // ENGINE_TLS_TICKET_KEYS_H_
