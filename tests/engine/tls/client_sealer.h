// File: tests/engine/tls/client_sealer.h
// Records sealed with an OpenSSL client's own write keys, so that a test can send on that
// client's connection what OpenSSL's API never sends: empty records, bare handshake messages,
// many of them in one segment. The keys come from the keylog callback on the client's SSL_CTX:
// - TLS 1.3: CLIENT_TRAFFIC_SECRET_0, sealed with engine/tls/record.h's seal() (the suite is
//   pinned to TLS_AES_128_GCM_SHA256);
// - TLS 1.2: the master secret (CLIENT_RANDOM) with both randoms, expanded to the client's
//   write key (RFC 5246 6.3) and sealed as AES-128-GCM records (RFC 5288; the suite is pinned
//   to ECDHE-ECDSA-AES128-GCM-SHA256, which the test certificates' P-256 keys sign).
// Use: construct it on the configuration before the client connects, one client per sealer.
// Once the client's handshake is done, the client itself must write nothing more: the sealer
// goes on from the sequence number the handshake left (TLS 1.3: 0; TLS 1.2: 1, after its
// Finished). Threads: the test thread. Errors: EXPECT failures, and records of "" after them.
#ifndef TESTS_ENGINE_TLS_CLIENT_SEALER_H_
#define TESTS_ENGINE_TLS_CLIENT_SEALER_H_

#include <openssl/ssl.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "engine/tls/record.h"
#include "tests/testing/tls_client.h"

namespace testing_support {

// TLS record content types (RFC 8446 5.1, RFC 5246 6.2.1).
inline constexpr uint8_t kAlertRecord = 21;
inline constexpr uint8_t kHandshakeRecord = 22;
inline constexpr uint8_t kApplicationDataRecord = 23;

class ClientSealer {
 public:
  // Pins config's suites and takes its keylog callback (and its SSL_CTX app data).
  explicit ClientSealer(TlsClientConfig& config);
  ClientSealer(const ClientSealer&) = delete;
  ClientSealer& operator=(const ClientSealer&) = delete;

  // True once the handshake gave the client's application write secret.
  bool ready() const { return version_ != 0; }
  // The client's next record: `plain` (at most 16 KB) of content type `type`.
  std::string record(uint8_t type, std::string_view plain);
  // A TLS 1.3 KeyUpdate (update_not_requested) from the client: its record, sealed under the
  // current key, after which the sealer, as the server will, moves to the next key.
  std::string key_update();

 private:
  static void on_keylog(const SSL* ssl, const char* line);
  std::string record12(uint8_t type, std::string_view plain);

  int version_ = 0;  // TLS1_2_VERSION or TLS1_3_VERSION once ready
  tls::RecordKeys keys13_{};
  uint8_t key12_[16] = {};  // client_write_key
  uint8_t iv12_[4] = {};    // client_write_IV: the implicit part of the GCM nonce
  uint64_t seq12_ = 0;
};

}  // namespace testing_support

#endif  // TESTS_ENGINE_TLS_CLIENT_SEALER_H_
