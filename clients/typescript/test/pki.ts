// A throwaway certificate authority for the TLS tests, made with the openssl command line: the same
// shape as `rollmesh certs init` (CN = identity, one OU per role, O = rollmesh; server certificates
// name <kind>.rollmesh, localhost, 127.0.0.1 and ::1).
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

export interface Pki {
  dir: string;
  ca: string;
  /** {cert, key, ca} paths of an identity made by `issue`. */
  files(name: string): { cert: string; key: string; ca: string };
  /** Issues a certificate for `name` with these roles; `serves` = the server kinds it names. */
  issue(name: string, roles: string[], serves?: string[]): void;
  remove(): void;
}

const openssl = (args: string[], cwd: string) => execFileSync("openssl", args, { cwd, stdio: "pipe" });
const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];

export function makePki(caName = "rollmesh test CA"): Pki {
  const dir = mkdtempSync(path.join(tmpdir(), "rollmesh-ts-pki-"));
  openssl(
    [
      "req",
      "-x509",
      ...EC,
      "-keyout",
      "ca-key.pem",
      "-out",
      "ca.pem",
      "-days",
      "30",
      "-subj",
      `/O=rollmesh/CN=${caName}`,
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    ],
    dir,
  );
  const pki: Pki = {
    dir,
    ca: path.join(dir, "ca.pem"),
    files: (name) => ({
      cert: path.join(dir, `${name}.pem`),
      key: path.join(dir, `${name}-key.pem`),
      ca: path.join(dir, "ca.pem"),
    }),
    issue(name, roles, serves = []) {
      const subject = ["/O=rollmesh", ...roles.map((r) => `/OU=${r}`), `/CN=${name}`].join("");
      openssl(["req", "-new", ...EC, "-keyout", `${name}-key.pem`, "-out", `${name}.csr`, "-subj", subject], dir);
      const ext = ["basicConstraints=CA:FALSE", `extendedKeyUsage=clientAuth${serves.length ? ",serverAuth" : ""}`];
      if (serves.length) {
        const names = [...serves.map((k) => `DNS:${k}.rollmesh`), "DNS:localhost", "IP:127.0.0.1", "IP:::1"];
        ext.push(`subjectAltName=${names.join(",")}`);
      }
      writeFileSync(path.join(dir, `${name}.ext`), ext.join("\n") + "\n");
      openssl(
        [
          "x509",
          "-req",
          "-in",
          `${name}.csr`,
          "-CA",
          "ca.pem",
          "-CAkey",
          "ca-key.pem",
          "-set_serial",
          String(Math.floor(Math.random() * 2 ** 40)),
          "-days",
          "30",
          "-extfile",
          `${name}.ext`,
          "-out",
          `${name}.pem`,
        ],
        dir,
      );
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
  return pki;
}
