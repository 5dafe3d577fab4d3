#include "pki.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>

namespace testpki {
namespace {

EVP_PKEY* NewKey() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  if (!key) throw std::runtime_error("cannot make an EC key");
  return key;
}

void AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (!ext) throw std::runtime_error("cannot make the extension " + value);
  X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
}

X509* NewCert(EVP_PKEY* key, const std::string& cn, const std::vector<std::string>& roles) {
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof serial);
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert), -300);
  X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  auto add = [&](const char* field, const std::string& value) {
    X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(value.c_str()), -1,
                               -1, 0);
  };
  add("O", "rollmesh");
  for (const auto& r : roles) add("OU", r);
  add("CN", cn);
  return cert;
}

void WritePem(const std::string& path, X509* cert, EVP_PKEY* key) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) throw std::runtime_error("cannot write " + path);
  bool ok = cert ? PEM_write_X509(f, cert) : PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
  if (!ok) throw std::runtime_error("cannot write " + path);
}

}  // namespace

CA::CA() {
  std::string pattern = (std::filesystem::temp_directory_path() / "rollmesh-certs-XXXXXX").string();
  if (!mkdtemp(pattern.data())) throw std::runtime_error("cannot make a temporary directory");
  dir_ = pattern;
  EVP_PKEY* key = NewKey();
  X509* cert = NewCert(key, "rollmesh test CA", {});
  X509_set_issuer_name(cert, X509_get_subject_name(cert));
  AddExtension(cert, cert, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
  AddExtension(cert, cert, NID_key_usage, "critical,keyCertSign,cRLSign");
  AddExtension(cert, cert, NID_subject_key_identifier, "hash");
  X509_sign(cert, key, EVP_sha256());
  WritePem(ca_path(), cert, nullptr);
  key_ = key;
  cert_ = cert;
}

CA::~CA() {
  EVP_PKEY_free(static_cast<EVP_PKEY*>(key_));
  X509_free(static_cast<X509*>(cert_));
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

rollmesh::TlsFiles CA::Issue(const std::string& name, const std::vector<std::string>& roles,
                             const std::vector<std::string>& serves) {
  auto* ca_cert = static_cast<X509*>(cert_);
  EVP_PKEY* key = NewKey();
  X509* cert = NewCert(key, name, roles);
  X509_set_issuer_name(cert, X509_get_subject_name(ca_cert));
  AddExtension(cert, ca_cert, NID_basic_constraints, "critical,CA:FALSE");
  AddExtension(cert, ca_cert, NID_authority_key_identifier, "keyid:always");
  if (serves.empty()) {
    AddExtension(cert, ca_cert, NID_ext_key_usage, "clientAuth");
  } else {
    AddExtension(cert, ca_cert, NID_ext_key_usage, "clientAuth,serverAuth");
    std::string sans;
    for (const auto& kind : serves) sans += "DNS:" + rollmesh::ServerName(kind) + ",";
    AddExtension(cert, ca_cert, NID_subject_alt_name, sans + "DNS:localhost,IP:127.0.0.1,IP:::1");
  }
  X509_sign(cert, static_cast<EVP_PKEY*>(key_), EVP_sha256());
  rollmesh::TlsFiles files = Files(name);
  WritePem(files.cert, cert, nullptr);
  WritePem(files.key, nullptr, key);
  X509_free(cert);
  EVP_PKEY_free(key);
  return files;
}

rollmesh::TlsFiles CA::Files(const std::string& name) const {
  return rollmesh::TlsFiles{dir_ + "/" + name + ".pem", dir_ + "/" + name + "-key.pem", ca_path()};
}

std::string CA::CertPem(const std::string& name) const { return rollmesh::ReadPem(Files(name).cert, "certificate"); }

}  // namespace testpki
