#include "engine/tls/ticket_keys.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cstring>
#include <ctime>

#include "engine/tls/config.h"

namespace tls {
namespace {

std::atomic<uint64_t> next_id{1};  // 0 marks an empty copy

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

// One thread's copies, replaced in turn when it serves more than kThreadCopies
// configurations; a copy's key bytes are wiped when it is replaced and at the thread's exit.
struct TicketKeys::ThreadCopies {
  Copy copies[kThreadCopies];
  std::size_t next_replaced = 0;

  ~ThreadCopies() {
    for (Copy& c : copies) OPENSSL_cleanse(&c, sizeof c);
  }
  // owner's copy, or an emptied one to fill.
  Copy* find(uint64_t owner) {
    for (Copy& c : copies) {
      if (c.owner == owner) return &c;
    }
    Copy& c = copies[next_replaced++ % kThreadCopies];
    OPENSSL_cleanse(&c, sizeof c);
    c = Copy{};
    return &c;
  }
};

TicketKeys::TicketKeys() : id_(next_id.fetch_add(1, std::memory_order_relaxed)) {}

// No lock: the last reference is going, so no handshake can be reading the keys.
TicketKeys::~TicketKeys() { OPENSSL_cleanse(&keys_, sizeof keys_); }

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
  keys_.previous = keys_.current;
  keys_.current = fresh;
  OPENSSL_cleanse(&fresh, sizeof fresh);
  // Under the mutex, so one writer: every thread's next handshake sees its copy is old.
  generation_.store(generation_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  return true;
}

bool TicketKeys::rotate() {
  std::lock_guard<std::mutex> lock(mutex_);
  return make_current_locked(now_s());
}

const TicketKeys::Keys* TicketKeys::thread_copy(int64_t now, bool issuing) {
  thread_local ThreadCopies thread_copies;
  Copy* copy = thread_copies.find(id_);
  const auto due = [now](const Key& k) {
    return !k.set || now - k.born_s >= SOCK_TLS_TICKET_KEY_S;
  };
  if (copy->owner == id_ && copy->generation == generation_.load(std::memory_order_acquire) &&
      !(issuing && due(copy->keys.current))) {
    return &copy->keys;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  // Checked again here: another thread may have rotated since, and rotating twice would
  // drop a previous key that still has tickets out.
  if (issuing && due(keys_.current) && !make_current_locked(now)) return nullptr;
  copy->owner = id_;
  copy->generation = generation_.load(std::memory_order_relaxed);
  copy->keys = keys_;
  return &copy->keys;
}

int TicketKeys::encrypt(unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* cipher,
                        EVP_MAC_CTX* mac) {
  const Keys* keys = thread_copy(now_s(), true);
  if (!keys) return -1;
  if (RAND_bytes(iv, 16) != 1) return -1;  // an AES-CBC IV
  std::memcpy(name, keys->current.name, sizeof keys->current.name);
  return use_key(keys->current.aes, keys->current.hmac, iv, cipher, mac, 1);
}

int TicketKeys::decrypt(const unsigned char name[16], unsigned char* iv, EVP_CIPHER_CTX* cipher,
                        EVP_MAC_CTX* mac) {
  const int64_t now = now_s();
  const Keys* keys = thread_copy(now, false);
  for (const Key* k : {&keys->current, &keys->previous}) {
    if (k->set && std::memcmp(k->name, name, sizeof k->name) == 0 &&
        now - k->born_s < 2 * SOCK_TLS_TICKET_KEY_S) {
      // 1: the current key, 2: the previous one (the ticket is renewed)
      const int found = k == &keys->current ? 1 : 2;
      return use_key(k->aes, k->hmac, iv, cipher, mac, 0) < 0 ? -1 : found;
    }
  }
  return 0;
}

}  // namespace tls
