// File: tests/testing/tls_certs.h
// Certificates for TLS tests, made when a test first asks (OpenSSL's C API), never committed:
// ECDSA P-256 keys, two CAs and leaves, written as PEM files in a new directory under
// $TEST_TMPDIR (a Bazel test), else $TMPDIR, else /tmp (a fuzz target, a binary run by hand).
// Threads: test_pki() may be called from any thread (made once, then read-only), but not
// after main() returned (the files are gone then).
// Ownership: the process that made the directory removes it, with whatever tests put there,
// when it exits normally (static destruction); a crash leaves it, with the files to look at.
// Errors: a certificate that cannot be made throws std::runtime_error (the test fails).
#ifndef TESTS_TESTING_TLS_CERTS_H_
#define TESTS_TESTING_TLS_CERTS_H_

#include <string>

namespace testing_support {

// A certificate chain file and its private key file (PEM paths).
struct TlsFiles {
  std::string cert;
  std::string key;
};

struct TestPki {
  std::string dir;
  std::string ca;        // the CA's certificate: the trust anchor of verifying clients
  std::string other_ca;  // a second CA's certificate, which signed none of these leaves: a
                         // client trusting only it refuses them all (an unknown issuer)
  TlsFiles localhost;    // DNS:localhost and IP:127.0.0.1, signed by the CA, valid now
  TlsFiles other;        // DNS:other.example, signed by the CA, valid now
  TlsFiles expired;      // as localhost, but its validity ended a day ago
  TlsFiles self_signed;  // DNS:localhost and IP:127.0.0.1, signed by itself (not the CA)
};

// The files, made on the first call in the process.
const TestPki& test_pki();

}  // namespace testing_support

#endif  // TESTS_TESTING_TLS_CERTS_H_
