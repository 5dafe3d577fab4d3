// Transport security settings, the same in every rollmesh process: PEM files of this process's
// certificate and key (who it is) and of the CA bundle it trusts. A client with a CA verifies
// servers against it and presents its certificate when it has one; a server with a CA requires
// every caller to present a certificate that CA signed (mutual TLS), whose organizational units
// are the caller's roles. `rollmesh certs init DIR` makes a development CA and certificates.
#pragma once

#include <string>

namespace rollmesh {

struct TlsFiles {
  std::string cert;  // --tls-cert, $ROLLMESH_TLS_CERT
  std::string key;   // --tls-key, $ROLLMESH_TLS_KEY
  std::string ca;    // --tls-ca, $ROLLMESH_TLS_CA

  // From ROLLMESH_TLS_CERT, ROLLMESH_TLS_KEY and ROLLMESH_TLS_CA.
  static TlsFiles FromEnv();
  // Whether connections use TLS at all (a certificate or a CA is given).
  bool enabled() const { return !cert.empty() || !ca.empty(); }
  // Whether a server with these settings knows who calls it (a CA: client certificates required).
  bool authenticates() const { return !ca.empty(); }
  // Throws std::invalid_argument when the settings are incomplete (a certificate without its key,
  // a server with a CA but no certificate) or a file cannot be read.
  void Validate(bool server) const;
};

// The name a client checks a server's certificate for: "<kind>.rollmesh" ("env", "nats", ...),
// whatever the address.
std::string ServerName(const std::string& kind);

// The contents of a PEM file; throws std::invalid_argument naming `what` when it cannot be read.
std::string ReadPem(const std::string& path, const std::string& what);

}  // namespace rollmesh
