#include "engine/tls/record.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>

#include <cstring>
#include <memory>

namespace tls {
namespace {

constexpr std::size_t kIvBytes = 12;
constexpr std::size_t kAeads = 3;

struct AeadInfo {
  const char* name;  // EVP_CIPHER_fetch's
  std::size_t key_bytes;
};
constexpr AeadInfo kAeadInfo[kAeads] = {
    {"AES-128-GCM", 16}, {"AES-256-GCM", 32}, {"ChaCha20-Poly1305", 32}};
static_assert(sizeof(TrafficKeys::key) >= 32 && sizeof(TrafficKeys::iv) == kIvBytes);

// The suites' hashes (aead_of_suite gives a hash_len of 32 or 48), by EVP_MD_fetch's names.
struct HashInfo {
  uint8_t len;
  const char* name;
};
constexpr HashInfo kHashInfo[] = {{32, "SHA256"}, {48, "SHA384"}};
constexpr std::size_t kHashes = sizeof kHashInfo / sizeof kHashInfo[0];

// HMAC with a suite's hash, for HKDF: one context per hash and thread, given its digest once,
// and keyed anew for each derivation. HMAC() would fetch the MAC and the digest from the
// provider store (a process-wide lock and shared reference counts) at every call; the MAC is
// fetched once, as the ciphers are below.
EVP_MAC_CTX* hmac_context(uint8_t hash_len) {
  struct Contexts {
    EVP_MAC_CTX* ctx[kHashes] = {};
    ~Contexts() {
      for (EVP_MAC_CTX* c : ctx) EVP_MAC_CTX_free(c);
    }
  };
  static EVP_MAC* const hmac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  thread_local Contexts contexts;
  std::size_t i = 0;
  while (i < kHashes && kHashInfo[i].len != hash_len) ++i;
  if (i == kHashes || !hmac) return nullptr;
  if (!contexts.ctx[i]) {
    EVP_MAC_CTX* c = EVP_MAC_CTX_new(hmac);
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(
                               OSSL_MAC_PARAM_DIGEST, const_cast<char*>(kHashInfo[i].name), 0),
                           OSSL_PARAM_construct_end()};
    if (c && EVP_MAC_CTX_set_params(c, params) == 1) {
      contexts.ctx[i] = c;
    } else {
      EVP_MAC_CTX_free(c);
    }
  }
  return contexts.ctx[i];
}

// HKDF-Expand-Label(secret, label, "", out_len) (RFC 8446 7.1). out_len never exceeds the
// hash's length here, so HKDF-Expand is one HMAC block: T(1) = HMAC(secret, info || 0x01).
bool expand_label(const RecordKeys& keys, const uint8_t* secret, const char* label,
                  uint8_t* out, std::size_t out_len) {
  constexpr char kPrefix[] = "tls13 ";
  const std::size_t label_len = sizeof kPrefix - 1 + std::strlen(label);
  uint8_t info[2 + 1 + 32 + 1 + 1];
  if (label_len > 32 || out_len > keys.hash_len) return false;
  std::size_t n = 0;
  info[n++] = static_cast<uint8_t>(out_len >> 8);
  info[n++] = static_cast<uint8_t>(out_len);
  info[n++] = static_cast<uint8_t>(label_len);
  std::memcpy(info + n, kPrefix, sizeof kPrefix - 1);
  n += sizeof kPrefix - 1;
  std::memcpy(info + n, label, std::strlen(label));
  n += std::strlen(label);
  info[n++] = 0;  // an empty context
  info[n++] = 1;  // the HKDF block counter
  EVP_MAC_CTX* mac = hmac_context(keys.hash_len);
  uint8_t block[EVP_MAX_MD_SIZE];
  std::size_t block_len = 0;
  // A key with no parameters: the context keeps its digest and only takes the new key.
  if (!mac || EVP_MAC_init(mac, secret, keys.hash_len, nullptr) != 1 ||
      EVP_MAC_update(mac, info, n) != 1 ||
      EVP_MAC_final(mac, block, &block_len, sizeof block) != 1) {
    return false;
  }
  std::memcpy(out, block, out_len);
  OPENSSL_cleanse(block, sizeof block);
  return true;
}

// One context per AEAD and thread, keyed anew for each record: connections hold keys, not
// contexts (an AES-GCM context is about 1 KB), and a key schedule costs far less than a
// record's encryption.
EVP_CIPHER_CTX* context(Aead aead) {
  struct Contexts {
    EVP_CIPHER_CTX* ctx[kAeads] = {};
    ~Contexts() {
      for (EVP_CIPHER_CTX* c : ctx) EVP_CIPHER_CTX_free(c);
    }
  };
  static EVP_CIPHER* const ciphers[kAeads] = {
      EVP_CIPHER_fetch(nullptr, kAeadInfo[0].name, nullptr),
      EVP_CIPHER_fetch(nullptr, kAeadInfo[1].name, nullptr),
      EVP_CIPHER_fetch(nullptr, kAeadInfo[2].name, nullptr)};
  thread_local Contexts contexts;
  const auto i = static_cast<std::size_t>(aead);
  if (!contexts.ctx[i] && ciphers[i]) {
    EVP_CIPHER_CTX* c = EVP_CIPHER_CTX_new();
    if (c && EVP_CipherInit_ex(c, ciphers[i], nullptr, nullptr, nullptr, 1) == 1) {
      contexts.ctx[i] = c;
    } else {
      EVP_CIPHER_CTX_free(c);
    }
  }
  return contexts.ctx[i];
}

// The per-record nonce: the IV with the sequence number XORed into its low 8 bytes.
void nonce_of(const TrafficKeys& dir, uint8_t* nonce) {
  std::memcpy(nonce, dir.iv, kIvBytes);
  for (int i = 0; i < 8; ++i) nonce[kIvBytes - 1 - i] ^= static_cast<uint8_t>(dir.seq >> (8 * i));
}

}  // namespace

bool aead_of_suite(uint16_t suite, Aead* aead, uint8_t* hash_len) {
  switch (suite) {
    case 0x1301: *aead = Aead::kAes128Gcm; *hash_len = 32; return true;
    case 0x1302: *aead = Aead::kAes256Gcm; *hash_len = 48; return true;
    case 0x1303: *aead = Aead::kChacha20Poly1305; *hash_len = 32; return true;
    default: return false;
  }
}

bool derive_traffic_keys(const RecordKeys& keys, TrafficKeys* dir) {
  dir->seq = 0;
  return expand_label(keys, dir->secret, "key", dir->key,
                      kAeadInfo[static_cast<int>(keys.aead)].key_bytes) &&
         expand_label(keys, dir->secret, "iv", dir->iv, kIvBytes);
}

bool update_traffic_secret(const RecordKeys& keys, TrafficKeys* dir) {
  uint8_t next[kMaxSecret];
  if (!expand_label(keys, dir->secret, "traffic upd", next, keys.hash_len)) return false;
  std::memcpy(dir->secret, next, keys.hash_len);
  OPENSSL_cleanse(next, sizeof next);
  return derive_traffic_keys(keys, dir);
}

std::size_t seal(RecordKeys& keys, ContentType type, uint8_t* out, std::size_t n) {
  EVP_CIPHER_CTX* ctx = context(keys.aead);
  if (!ctx || n > kMaxPlaintext) return 0;
  const std::size_t inner = n + 1;  // the plaintext and its content type; no padding
  const std::size_t body_len = inner + kTagBytes;
  out[0] = static_cast<uint8_t>(ContentType::kApplicationData);  // every protected record's
  out[1] = 3;
  out[2] = 3;
  out[3] = static_cast<uint8_t>(body_len >> 8);
  out[4] = static_cast<uint8_t>(body_len);
  uint8_t* body = out + kHeaderBytes;
  body[n] = static_cast<uint8_t>(type);
  uint8_t nonce[kIvBytes];
  nonce_of(keys.write, nonce);
  int len = 0;
  if (EVP_CipherInit_ex(ctx, nullptr, nullptr, keys.write.key, nonce, 1) != 1 ||
      EVP_CipherUpdate(ctx, nullptr, &len, out, kHeaderBytes) != 1 ||
      EVP_CipherUpdate(ctx, body, &len, body, static_cast<int>(inner)) != 1 ||
      EVP_CipherFinal_ex(ctx, body + inner, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, kTagBytes, body + inner) != 1) {
    return 0;
  }
  ++keys.write.seq;
  return kHeaderBytes + body_len;
}

bool open(RecordKeys& keys, uint8_t* rec, std::size_t len, ContentType* type,
          std::size_t* plain_len, const char** why) {
  if (len < kHeaderBytes + 1 + kTagBytes || len - kHeaderBytes > kMaxCiphertext) {
    *why = "a record of a bad length";
    return false;
  }
  EVP_CIPHER_CTX* ctx = context(keys.aead);
  if (!ctx) {
    *why = "no cipher context";
    return false;
  }
  uint8_t* body = rec + kHeaderBytes;
  const std::size_t sealed = len - kHeaderBytes - kTagBytes;
  uint8_t nonce[kIvBytes];
  nonce_of(keys.read, nonce);
  int out = 0;
  if (EVP_CipherInit_ex(ctx, nullptr, nullptr, keys.read.key, nonce, 0) != 1 ||
      EVP_CipherUpdate(ctx, nullptr, &out, rec, kHeaderBytes) != 1 ||
      EVP_CipherUpdate(ctx, body, &out, body, static_cast<int>(sealed)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, kTagBytes, body + sealed) != 1 ||
      EVP_CipherFinal_ex(ctx, body + sealed, &out) != 1) {
    *why = "bad record MAC";
    return false;
  }
  ++keys.read.seq;
  std::size_t n = sealed;
  while (n && body[n - 1] == 0) --n;  // padding
  if (!n || n - 1 > kMaxPlaintext) {
    *why = n ? "record overflow" : "a record without a content type";
    return false;
  }
  *type = static_cast<ContentType>(body[n - 1]);
  *plain_len = n - 1;
  return true;
}

}  // namespace tls
