#include "tests/testing/tls_certs.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <system_error>

namespace testing_support {
namespace {

constexpr long kDay = 24 * 3600;

using Key = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
using Cert = std::unique_ptr<X509, decltype(&X509_free)>;

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string("test certificates: ") + what);
}

Key new_key() {
  Key key(EVP_EC_gen("P-256"), EVP_PKEY_free);
  check(key != nullptr, "EC P-256 key generation");
  return key;
}

void add_extension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  check(ext != nullptr && X509_add_ext(cert, ext, -1) == 1, value);
  X509_EXTENSION_free(ext);
}

// A version 3 certificate valid from `from_s` to `to_s` seconds from now. issuer == nullptr:
// self-signed with `key`; otherwise signed by issuer_key.
Cert new_cert(EVP_PKEY* key, const char* common_name, const char* alt_names, bool ca, long from_s,
              long to_s, X509* issuer, EVP_PKEY* issuer_key) {
  Cert cert(X509_new(), X509_free);
  check(cert != nullptr, "X509_new");
  static long serial = 1;
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), from_s);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), to_s);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("libsock++ tests"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(common_name), -1, -1, 0);
  X509* signer = issuer ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  add_extension(cert.get(), signer, NID_subject_key_identifier, "hash");
  if (issuer) add_extension(cert.get(), signer, NID_authority_key_identifier, "keyid:always");
  if (ca) {
    add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
    add_extension(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
    add_extension(cert.get(), signer, NID_key_usage, "critical,digitalSignature");
    add_extension(cert.get(), signer, NID_ext_key_usage, "serverAuth");
    add_extension(cert.get(), signer, NID_subject_alt_name, alt_names);
  }
  check(X509_sign(cert.get(), issuer ? issuer_key : key, EVP_sha256()) > 0, "X509_sign");
  return cert;
}

void write_pem(const std::string& path, X509* cert, EVP_PKEY* key) {
  FILE* f = std::fopen(path.c_str(), "w");
  check(f != nullptr, "cannot create a PEM file");
  const bool ok = cert ? PEM_write_X509(f, cert) == 1
                       : PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
  check(std::fclose(f) == 0 && ok, "cannot write a PEM file");
}

TlsFiles write_pair(const std::string& dir, const char* name, X509* cert, EVP_PKEY* key) {
  TlsFiles files{dir + "/" + name + ".crt", dir + "/" + name + ".key"};
  write_pem(files.cert, cert, nullptr);
  write_pem(files.key, nullptr, key);
  return files;
}

// A new directory under $TEST_TMPDIR, else $TMPDIR, else /tmp, removed with everything in it by
// the destructor in the process that made it: a child forked from that process (a death test, a
// spawn that fails before exec) may run static destructors too, and must leave it alone.
class ScratchDir {
 public:
  ScratchDir() : maker_(getpid()) {
    std::string base = "/tmp";
    for (const char* name : {"TEST_TMPDIR", "TMPDIR"}) {
      const char* dir = std::getenv(name);
      if (dir && *dir) {
        base = dir;
        break;
      }
    }
    path_ = base + "/tls_pki.XXXXXX";
    check(mkdtemp(path_.data()) != nullptr, "mkdtemp");
  }
  ~ScratchDir() {
    if (getpid() != maker_) return;
    std::error_code ignored;  // nothing to be done about a file that cannot be removed at exit
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  pid_t maker_;
  std::string path_;
};

TestPki make_pki(const std::string& dir) {
  TestPki pki;
  pki.dir = dir;

  const char* kLocal = "DNS:localhost,IP:127.0.0.1";
  Key ca_key = new_key();
  Cert ca = new_cert(ca_key.get(), "libsock++ test CA", nullptr, true, -kDay, 30 * kDay, nullptr,
                     nullptr);
  pki.ca = pki.dir + "/ca.crt";
  write_pem(pki.ca, ca.get(), nullptr);

  Key other_ca_key = new_key();
  Cert other_ca = new_cert(other_ca_key.get(), "libsock++ other test CA", nullptr, true, -kDay,
                           30 * kDay, nullptr, nullptr);
  pki.other_ca = pki.dir + "/other_ca.crt";
  write_pem(pki.other_ca, other_ca.get(), nullptr);

  Key key = new_key();
  Cert leaf =
      new_cert(key.get(), "localhost", kLocal, false, -kDay, 30 * kDay, ca.get(), ca_key.get());
  pki.localhost = write_pair(pki.dir, "localhost", leaf.get(), key.get());

  Key other_key = new_key();
  Cert other = new_cert(other_key.get(), "other.example", "DNS:other.example", false, -kDay,
                        30 * kDay, ca.get(), ca_key.get());
  pki.other = write_pair(pki.dir, "other", other.get(), other_key.get());

  Key expired_key = new_key();
  Cert expired = new_cert(expired_key.get(), "localhost", kLocal, false, -2 * kDay, -kDay, ca.get(),
                          ca_key.get());
  pki.expired = write_pair(pki.dir, "expired", expired.get(), expired_key.get());

  Key self_key = new_key();
  Cert self =
      new_cert(self_key.get(), "localhost", kLocal, false, -kDay, 30 * kDay, nullptr, nullptr);
  pki.self_signed = write_pair(pki.dir, "self_signed", self.get(), self_key.get());
  return pki;
}

// The directory first: when making a certificate throws, it is removed already.
struct OwnedPki {
  ScratchDir dir;
  TestPki files = make_pki(dir.path());
};

}  // namespace

const TestPki& test_pki() {
  static const OwnedPki pki;
  return pki.files;
}

}  // namespace testing_support
