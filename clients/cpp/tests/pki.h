// Certificates for the tests, of the shape `rollmesh certs init` issues: a CA, and per identity a
// certificate with CN = the name, one OU per role, O = rollmesh; server certificates also name
// <kind>.rollmesh, localhost and 127.0.0.1. Written to a fresh temporary directory.
#pragma once

#include <string>
#include <vector>

#include "rollmesh/tls.h"

namespace testpki {

class CA {
 public:
  CA();  // a new CA in a new directory
  ~CA();
  CA(const CA&) = delete;
  CA& operator=(const CA&) = delete;

  const std::string& dir() const { return dir_; }
  std::string ca_path() const { return dir_ + "/ca.pem"; }
  // Writes DIR/NAME.pem and DIR/NAME-key.pem; `serves`: the service kinds it may serve.
  rollmesh::TlsFiles Issue(const std::string& name, const std::vector<std::string>& roles,
                           const std::vector<std::string>& serves = {});
  // The files of an identity issued before, with this CA.
  rollmesh::TlsFiles Files(const std::string& name) const;
  // The PEM of an identity's certificate.
  std::string CertPem(const std::string& name) const;

 private:
  std::string dir_;
  void* key_ = nullptr;   // EVP_PKEY*
  void* cert_ = nullptr;  // X509*
};

}  // namespace testpki
