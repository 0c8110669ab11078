// File: tests/testing/test_pki.h
// Certificates made at test time with OpenSSL's C API, so that no key lives in the repository
// and validity periods can lie in the past: ECDSA P-256 keys, a CA, and server certificates it
// signs for "localhost" and 127.0.0.1 (subjectAltName DNS and IP entries).
// Ownership: a Certificate owns its key and certificate (freed with it); write() leaves the
// files to the caller (tests write them into TEST_TMPDIR). Errors: the factories return an
// empty Certificate (ok() false) and write() false; OpenSSL's error queue says why.
// Threads: any, one Certificate per thread at a time.
#ifndef TESTS_TESTING_TEST_PKI_H_
#define TESTS_TESTING_TEST_PKI_H_

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string>

namespace test_pki {

class Certificate {
 public:
  // A self-signed CA (basicConstraints CA:TRUE, keyCertSign) named `common_name`, valid from an
  // hour ago for a year.
  static Certificate authority(const std::string& common_name);
  // A server certificate for localhost and 127.0.0.1 signed by `ca`, valid from now +
  // `from_s` to now + `until_s` seconds (negative: in the past).
  static Certificate server(const Certificate& ca, long from_s, long until_s);

  bool ok() const { return key_ && cert_; }
  // PEM files: the certificate, and the private key (unencrypted PKCS#8). False on failure.
  bool write(const std::string& cert_path, const std::string& key_path) const;

 private:
  struct FreeKey {
    void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
  };
  struct FreeCert {
    void operator()(X509* cert) const { X509_free(cert); }
  };
  std::unique_ptr<EVP_PKEY, FreeKey> key_;
  std::unique_ptr<X509, FreeCert> cert_;
};

}  // namespace test_pki

#endif  // TESTS_TESTING_TEST_PKI_H_
