#include "tests/engine/tls/client_sealer.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <cstring>
#include <vector>

namespace testing_support {
namespace {

std::vector<uint8_t> unhex(std::string_view text) {
  std::vector<uint8_t> out;
  for (std::size_t i = 0; i + 1 < text.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(std::string(text.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

// TLS 1.2's PRF with SHA-256 (the suite's hash): `length` bytes of P_SHA256(secret, label +
// seed).
bool prf_sha256(const std::vector<uint8_t>& secret, const std::string& label,
                const std::vector<uint8_t>& seed, uint8_t* out, std::size_t length) {
  std::vector<uint8_t> label_seed(label.begin(), label.end());
  label_seed.insert(label_seed.end(), seed.begin(), seed.end());
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "TLS1-PRF", nullptr);
  EVP_KDF_CTX* ctx = kdf ? EVP_KDF_CTX_new(kdf) : nullptr;
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET,
                                        const_cast<uint8_t*>(secret.data()), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, label_seed.data(),
                                        label_seed.size()),
      OSSL_PARAM_construct_end()};
  const bool ok = ctx && EVP_KDF_derive(ctx, out, length, params) == 1;
  EVP_KDF_CTX_free(ctx);
  EVP_KDF_free(kdf);
  return ok;
}

}  // namespace

ClientSealer::ClientSealer(TlsClientConfig& config) {
  SSL_CTX* ctx = config.ctx();
  EXPECT_EQ(SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256"), 1);
  EXPECT_EQ(SSL_CTX_set_cipher_list(ctx, "ECDHE-ECDSA-AES128-GCM-SHA256"), 1);
  SSL_CTX_set_app_data(ctx, this);
  SSL_CTX_set_keylog_callback(ctx, on_keylog);
}

void ClientSealer::on_keylog(const SSL* ssl, const char* line) {
  auto* self = static_cast<ClientSealer*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  const std::string_view text(line);
  const std::size_t last_space = text.rfind(' ');
  if (last_space == std::string_view::npos) return;
  const std::vector<uint8_t> secret = unhex(text.substr(last_space + 1));
  if (text.rfind("CLIENT_TRAFFIC_SECRET_0 ", 0) == 0) {
    tls::RecordKeys& keys = self->keys13_;
    ASSERT_TRUE(tls::aead_of_suite(0x1301, &keys.aead, &keys.hash_len));
    ASSERT_EQ(secret.size(), keys.hash_len);
    std::memcpy(keys.write.secret, secret.data(), secret.size());
    ASSERT_TRUE(tls::derive_traffic_keys(keys, &keys.write));
    self->version_ = TLS1_3_VERSION;
  } else if (text.rfind("CLIENT_RANDOM ", 0) == 0) {
    // key_block = PRF(master, "key expansion", server_random + client_random): the client's
    // and the server's write keys, then their IVs (AES-128-GCM has no MAC keys).
    std::vector<uint8_t> randoms(2 * SSL3_RANDOM_SIZE);
    SSL_get_server_random(ssl, randoms.data(), SSL3_RANDOM_SIZE);
    SSL_get_client_random(ssl, randoms.data() + SSL3_RANDOM_SIZE, SSL3_RANDOM_SIZE);
    uint8_t block[2 * sizeof key12_ + 2 * sizeof iv12_];
    ASSERT_TRUE(prf_sha256(secret, "key expansion", randoms, block, sizeof block));
    std::memcpy(self->key12_, block, sizeof key12_);
    std::memcpy(self->iv12_, block + 2 * sizeof key12_, sizeof iv12_);
    self->seq12_ = 1;  // the client's Finished was record 0 under these keys
    self->version_ = TLS1_2_VERSION;
  }
}

std::string ClientSealer::record(uint8_t type, std::string_view plain) {
  EXPECT_TRUE(ready()) << "no client secret yet: is the handshake done?";
  EXPECT_LE(plain.size(), tls::kMaxPlaintext);
  if (!ready() || plain.size() > tls::kMaxPlaintext) return "";
  if (version_ == TLS1_2_VERSION) return record12(type, plain);
  std::string out(plain.size() + tls::kSealOverhead, '\0');
  auto* bytes = reinterpret_cast<uint8_t*>(out.data());
  std::memcpy(bytes + tls::kHeaderBytes, plain.data(), plain.size());
  const std::size_t n = tls::seal(keys13_, static_cast<tls::ContentType>(type), bytes,
                                  plain.size());
  EXPECT_EQ(n, out.size());
  return n == out.size() ? out : "";
}

std::string ClientSealer::key_update() {
  EXPECT_EQ(version_, TLS1_3_VERSION);
  const char message[] = {24, 0, 0, 1, 0};  // KeyUpdate, update_not_requested
  std::string out = record(kHandshakeRecord, std::string_view(message, sizeof message));
  EXPECT_TRUE(tls::update_traffic_secret(keys13_, &keys13_.write));
  return out;
}

// RFC 5246 6.2.3.3 with RFC 5288: nonce = client_write_IV + an explicit 8 bytes (sent in the
// record; the sequence number, as OpenSSL sends), additional data = the sequence number, type,
// version and plaintext length.
std::string ClientSealer::record12(uint8_t type, std::string_view plain) {
  constexpr std::size_t kExplicit = 8, kTag = 16;
  uint8_t seq[8];
  for (int i = 0; i < 8; ++i) seq[i] = static_cast<uint8_t>(seq12_ >> (8 * (7 - i)));
  ++seq12_;
  uint8_t nonce[sizeof iv12_ + kExplicit];
  std::memcpy(nonce, iv12_, sizeof iv12_);
  std::memcpy(nonce + sizeof iv12_, seq, kExplicit);
  const uint8_t aad[13] = {seq[0], seq[1], seq[2], seq[3], seq[4], seq[5], seq[6], seq[7], type,
                           3,      3,      static_cast<uint8_t>(plain.size() >> 8),
                           static_cast<uint8_t>(plain.size())};
  const std::size_t body = kExplicit + plain.size() + kTag;
  std::string out(tls::kHeaderBytes + body, '\0');
  auto* bytes = reinterpret_cast<uint8_t*>(out.data());
  bytes[0] = type;
  bytes[1] = 3;
  bytes[2] = 3;
  bytes[3] = static_cast<uint8_t>(body >> 8);
  bytes[4] = static_cast<uint8_t>(body);
  std::memcpy(bytes + tls::kHeaderBytes, seq, kExplicit);
  uint8_t* cipher = bytes + tls::kHeaderBytes + kExplicit;
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int len = 0;
  const bool ok =
      ctx && EVP_EncryptInit_ex(ctx, EVP_aes_128_gcm(), nullptr, key12_, nonce) == 1 &&
      EVP_EncryptUpdate(ctx, nullptr, &len, aad, sizeof aad) == 1 &&
      EVP_EncryptUpdate(ctx, cipher, &len, reinterpret_cast<const uint8_t*>(plain.data()),
                        static_cast<int>(plain.size())) == 1 &&
      EVP_EncryptFinal_ex(ctx, cipher + plain.size(), &len) == 1 &&
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, kTag, cipher + plain.size()) == 1;
  EVP_CIPHER_CTX_free(ctx);
  EXPECT_TRUE(ok) << "AES-128-GCM failed";
  return ok ? out : "";
}

}  // namespace testing_support
