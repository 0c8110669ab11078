// File: engine/tls/record.h
// The TLS 1.3 record layer after the handshake (RFC 8446 section 5): what a connection keeps
// once OpenSSL's SSL object is freed (layer.cc hands over when the handshake completes), so
// an idle TLS 1.3 connection holds two directions' keys and sequence numbers, not an SSL.
// Records are sealed and opened with a per-thread EVP_CIPHER_CTX per AEAD, keyed for each
// record. Threads: the connection's owner thread. Errors: false / -1, the reason in *why.
#ifndef ENGINE_TLS_RECORD_H_
#define ENGINE_TLS_RECORD_H_

#include <cstddef>
#include <cstdint>

namespace tls {

// Record framing (RFC 8446 5.1, 5.2): a 5-byte header; at most 2^14 bytes of plaintext; a
// protected record adds its inner content type and a 16-byte tag, and at most 255 bytes more.
inline constexpr std::size_t kHeaderBytes = 5;
inline constexpr std::size_t kMaxPlaintext = 16384;
inline constexpr std::size_t kTagBytes = 16;
inline constexpr std::size_t kMaxCiphertext = kMaxPlaintext + 256;
// What sealing adds to n bytes of plaintext.
inline constexpr std::size_t kSealOverhead = kHeaderBytes + 1 + kTagBytes;
inline constexpr std::size_t kMaxSecret = 48;  // SHA-384's output

enum class ContentType : uint8_t { kAlert = 21, kHandshake = 22, kApplicationData = 23 };

enum class Aead : uint8_t { kAes128Gcm, kAes256Gcm, kChacha20Poly1305 };

// One direction: its traffic secret (for KeyUpdate), the key and IV derived from it, and the
// next record's sequence number.
struct TrafficKeys {
  uint8_t secret[kMaxSecret];
  uint8_t key[32];
  uint8_t iv[12];
  uint64_t seq;
};

struct RecordKeys {
  Aead aead;
  uint8_t hash_len;  // 32 (SHA-256 suites) or 48 (SHA-384)
  TrafficKeys read;
  TrafficKeys write;
};

// The AEAD of a TLS 1.3 suite by its IANA number (0x1301..0x1303); false for others.
bool aead_of_suite(uint16_t suite, Aead* aead, uint8_t* hash_len);

// Derives a direction's key and IV from the traffic secret in dir->secret (HKDF-Expand-Label
// "key" and "iv") and starts its sequence at 0.
bool derive_traffic_keys(const RecordKeys& keys, TrafficKeys* dir);

// KeyUpdate (RFC 8446 7.2): the next traffic secret, "traffic upd", and its key and IV.
bool update_traffic_secret(const RecordKeys& keys, TrafficKeys* dir);

// Seals n bytes (at most kMaxPlaintext) found at out + kHeaderBytes into one record at out
// (its buffer must hold n + kSealOverhead bytes). Returns the record's length, or 0.
std::size_t seal(RecordKeys& keys, ContentType type, uint8_t* out, std::size_t n);

// Opens the whole record at rec (header included, `len` bytes) in place: its plaintext is at
// rec + kHeaderBytes, *plain_len bytes of it, of inner type *type. False: a bad record (tag,
// length, padding), the reason in *why.
bool open(RecordKeys& keys, uint8_t* rec, std::size_t len, ContentType* type,
          std::size_t* plain_len, const char** why);

}  // namespace tls

#endif  // ENGINE_TLS_RECORD_H_
