#include "tests/testing/test_pki.h"

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <atomic>
#include <cstdio>

namespace test_pki {
namespace {

// Certificates of one issuer need distinct serial numbers.
std::atomic<long> next_serial{1};

bool add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  const bool ok = ext && X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

// An unsigned certificate for `key`, subject CN=common_name, valid from now + from_s to now +
// until_s.
X509* new_certificate(EVP_PKEY* key, const std::string& common_name, long from_s, long until_s) {
  X509* cert = X509_new();
  if (!cert) return nullptr;
  X509_NAME* name = X509_get_subject_name(cert);
  const bool ok =
      X509_set_version(cert, X509_VERSION_3) == 1 &&
      ASN1_INTEGER_set(X509_get_serialNumber(cert), next_serial.fetch_add(1)) == 1 &&
      X509_gmtime_adj(X509_getm_notBefore(cert), from_s) &&
      X509_gmtime_adj(X509_getm_notAfter(cert), until_s) && X509_set_pubkey(cert, key) == 1 &&
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(common_name.c_str()), -1,
                                 -1, 0) == 1;
  if (!ok) {
    X509_free(cert);
    return nullptr;
  }
  return cert;
}

}  // namespace

Certificate Certificate::authority(const std::string& common_name) {
  Certificate ca;
  ca.key_.reset(EVP_EC_gen("P-256"));
  if (!ca.key_) return ca;
  X509* cert = new_certificate(ca.key_.get(), common_name, -3600, 365L * 24 * 3600);
  ca.cert_.reset(cert);
  if (cert && X509_set_issuer_name(cert, X509_get_subject_name(cert)) == 1 &&
      add_extension(cert, cert, NID_basic_constraints, "critical,CA:TRUE") &&
      add_extension(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign") &&
      add_extension(cert, cert, NID_subject_key_identifier, "hash") &&
      X509_sign(cert, ca.key_.get(), EVP_sha256()) > 0) {
    return ca;
  }
  ca.cert_.reset();
  return ca;
}

Certificate Certificate::server(const Certificate& ca, long from_s, long until_s) {
  Certificate leaf;
  if (!ca.ok()) return leaf;
  leaf.key_.reset(EVP_EC_gen("P-256"));
  if (!leaf.key_) return leaf;
  X509* cert = new_certificate(leaf.key_.get(), "localhost", from_s, until_s);
  leaf.cert_.reset(cert);
  X509* issuer = ca.cert_.get();
  if (cert && X509_set_issuer_name(cert, X509_get_subject_name(issuer)) == 1 &&
      add_extension(cert, issuer, NID_basic_constraints, "critical,CA:FALSE") &&
      add_extension(cert, issuer, NID_key_usage, "critical,digitalSignature") &&
      add_extension(cert, issuer, NID_ext_key_usage, "serverAuth") &&
      add_extension(cert, issuer, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1") &&
      add_extension(cert, issuer, NID_authority_key_identifier, "keyid") &&
      X509_sign(cert, ca.key_.get(), EVP_sha256()) > 0) {
    return leaf;
  }
  leaf.cert_.reset();
  return leaf;
}

bool Certificate::write(const std::string& cert_path, const std::string& key_path) const {
  if (!ok()) return false;
  FILE* cert = std::fopen(cert_path.c_str(), "w");
  FILE* key = std::fopen(key_path.c_str(), "w");
  bool written = cert && key && PEM_write_X509(cert, cert_.get()) == 1 &&
                 PEM_write_PrivateKey(key, key_.get(), nullptr, nullptr, 0, nullptr, nullptr) == 1;
  for (FILE* f : {cert, key}) {
    if (f && std::fclose(f) != 0) written = false;
  }
  return written;
}

}  // namespace test_pki
