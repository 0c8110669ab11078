// File: engine/tls/ticket_keys.h
// Session-ticket keys of one configuration, shared by every shard (so any shard resumes any
// shard's sessions): a current key that encrypts new tickets and the one before it, which
// still decrypts (and has the ticket renewed). The current key is replaced every
// SOCK_TLS_TICKET_KEY_S seconds, when a ticket is next issued; a key decrypts for at most two
// such periods from its start. So every ticket, issued in its key's first period, decrypts
// for at least one period after its issue (unless two rotations by hand come first): the
// lifetime config.cc advertises.
// Threads: any. A handshake reads the atomic generation and uses its thread's copy of the two
// keys; the mutex is taken only to rotate and by a thread whose copy is older than the
// generation (once per thread after each rotation), so handshakes on different shards share
// no lock and write no shared line. A thread keeps copies for kThreadCopies configurations;
// copies are wiped when replaced and at the thread's exit, the configuration's own keys when
// it is destroyed. A freed configuration's copies therefore stay in the threads that used it
// until replaced or the thread exits: in thread-local storage, which no allocation reuses
// (wiping them from the destructor would need every thread's copies reachable and locked).
// Errors: rotate() and the callback report failures by their results; no errno.
#ifndef ENGINE_TLS_TICKET_KEYS_H_
#define ENGINE_TLS_TICKET_KEYS_H_

#include <openssl/ssl.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

namespace tls {

class TicketKeys {
 public:
  TicketKeys();
  // Wipes the keys: the configuration's memory goes back to the allocator, which may hand it
  // to anything, a buffer sent to a peer included. Any thread (the last reference's).
  ~TicketKeys();
  TicketKeys(const TicketKeys&) = delete;
  TicketKeys& operator=(const TicketKeys&) = delete;

  // OpenSSL's ticket callback (SSL_CTX_set_tlsext_ticket_key_evp_cb) for contexts whose
  // configuration holds these keys: 1 (use the key), 2 (renew: decrypted by the old key, or
  // a TLS 1.3 ticket, which is used once), 0 (unknown or expired key: full handshake), -1
  // (failure).
  static int callback(SSL* ssl, unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                      EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac, int encrypt);
  // Starts a new current key now (sock_tls_rotate_ticket_keys).
  bool rotate();  // false: no random bytes (the keys stay)

 private:
  // Configurations whose keys one thread keeps copies of at a time; a thread serving more
  // takes the mutex to copy whenever it switches to one it has not got.
  static constexpr std::size_t kThreadCopies = 4;

  struct Key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    int64_t born_s = 0;
    bool set = false;
  };
  struct Keys {
    Key current;
    Key previous;
  };
  // A thread's copy of one configuration's keys, as of `generation`.
  struct Copy {
    uint64_t owner = 0;  // the TicketKeys' id_; 0: empty
    uint64_t generation = 0;
    Keys keys;
  };
  struct ThreadCopies;

  int encrypt(unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* cipher, EVP_MAC_CTX* mac);
  int decrypt(const unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* cipher,
              EVP_MAC_CTX* mac);
  // The calling thread's copy, refreshed under the mutex if a rotation made it old; issuing:
  // its current key is younger than SOCK_TLS_TICKET_KEY_S (rotated here when due). nullptr:
  // a rotation found no random bytes.
  const Keys* thread_copy(int64_t now, bool issuing);
  bool make_current_locked(int64_t now);

  // Process-wide and never reused (a configuration's address may be): names this object's
  // copies in every thread.
  const uint64_t id_;
  // Changed under mutex_ with keys_; read without it at every handshake.
  std::atomic<uint64_t> generation_{0};
  std::mutex mutex_;
  Keys keys_{};  // guarded by mutex_
};

}  // namespace tls

#endif  // ENGINE_TLS_TICKET_KEYS_H_
