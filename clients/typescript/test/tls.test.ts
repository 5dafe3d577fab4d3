// TLS, mutual TLS and the role check of the server helper, with certificates of a throwaway CA
// (test/pki.ts), over real loopback servers.
import assert from "node:assert/strict";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { type ServiceError, status } from "@grpc/grpc-js";
import {
  allows,
  authorize,
  checkBind,
  EnvClient,
  type EnvironmentServer,
  errorInfo,
  identityFromCertificate,
  InferenceClient,
  isLoopback,
  parseServeArgs,
  serve,
  serverName,
  tlsFromEnv,
} from "../src/index.js";
import { loadTls } from "../src/tls.js";
import { echo, wordle } from "./fixtures.js";
import { failure, rejection, sleep } from "./helpers.js";
import { makePki, type Pki } from "./pki.js";

const ENV = "/rollmesh.v1.EnvironmentService/";

describe("mutual TLS: each method needs a role of the caller's certificate", () => {
  let pki: Pki;
  let other: Pki;
  let server: EnvironmentServer;
  const audit: { line: string; identity: string; method: string; reason: string }[] = [];
  const client = (who: string, extra: object = {}) =>
    new EnvClient(server.address, { timeoutS: 10, tls: pki.files(who), ...extra });

  before(async () => {
    pki = makePki();
    pki.issue("env", ["server"], ["env"]);
    pki.issue("orchestrator", ["orchestrator"]);
    pki.issue("reader", ["reader"]);
    pki.issue("operator", ["operator"]);
    pki.issue("nobody", ["not-a-role"]);
    other = makePki("another CA");
    other.issue("orchestrator", ["orchestrator"]);
    server = await serve([wordle(), echo()], {
      tls: pki.files("env"),
      audit: (line, f) => audit.push({ line, identity: f.identity, method: f.method, reason: f.reason }),
    });
  });
  after(async () => {
    await server.stop(0);
    pki.remove();
    other.remove();
  });

  test("the orchestrator describes, lists, plays and scores", async () => {
    const c = client("orchestrator");
    try {
      assert.deepEqual(
        (await c.describe()).environments.map((e) => e.name),
        ["wordle", "echo"],
      );
      const page = await c.tasksPage("echo");
      assert.equal(page.tasks[0]?.taskId, "e0");
      const episode = await c.episode("echo", { taskId: "e0" });
      assert.equal((await episode.act("hi")).messages[0]?.content, "echo: hi");
      await episode.close();
      const score = await c.score("echo", { task: { taskId: "e0" }, messages: [{ role: "assistant", content: "x" }] });
      assert.deepEqual(score.rewards, { said: 1 });
    } finally {
      c.close();
    }
  });

  test("a reader describes and lists tasks; Episode and Score are PERMISSION_DENIED, MISSING_ROLE", async () => {
    const c = client("reader");
    audit.length = 0;
    try {
      assert.equal((await c.describe()).environments.length, 2);
      assert.equal((await c.tasksPage("echo")).total, 1);
      const refused = await rejection(c.episode("echo", { taskId: "e0" }));
      assert.deepEqual([refused.codeName, refused.reason], ["PERMISSION_DENIED", "MISSING_ROLE"]);
      assert.deepEqual(refused.metadata, { identity: "reader", required: "orchestrator" });
      assert.match(
        refused.message,
        /'reader' may not call \/rollmesh\.v1\.EnvironmentService\/Episode: it needs one of the roles orchestrator$/,
      );
      const score = c.score("echo", { task: { taskId: "e0" }, messages: [] });
      assert.deepEqual(await failure(score), ["PERMISSION_DENIED", "MISSING_ROLE"]);
    } finally {
      c.close();
    }
    assert.deepEqual(
      audit.map((a) => [a.identity, a.method, a.reason]),
      [
        ["reader", `${ENV}Episode`, "MISSING_ROLE"],
        ["reader", `${ENV}Score`, "MISSING_ROLE"],
      ],
    );
    assert.match(
      audit[0]?.line ?? "",
      /^access denied: \/rollmesh\.v1\.EnvironmentService\/Episode by reader from \S+:\d+ \(MISSING_ROLE\)$/,
    );
  });

  test("a refused Episode stream whose client sends nothing still gets its refusal", async () => {
    const c = client("reader");
    try {
      const begin = Date.now();
      const error = await new Promise<ServiceError>((resolve) => {
        const call = c.stub.episode();
        call.on("data", () => undefined);
        call.on("error", resolve);
      });
      assert.deepEqual([error.code, errorInfo(error)?.reason], [status.PERMISSION_DENIED, "MISSING_ROLE"]);
      assert.ok(Date.now() - begin < 5000);
    } finally {
      c.close();
    }
  });

  test("the operator may do everything", async () => {
    const c = client("operator");
    try {
      const episode = await c.episode("echo", { taskId: "e0" });
      assert.equal((await episode.act("hi")).messages[0]?.content, "echo: hi");
      await episode.close();
    } finally {
      c.close();
    }
  });

  test("a server's certificate, or one without any role, may not call the environment service", async () => {
    for (const [who, roles] of [
      ["env", "server"],
      ["nobody", ""],
    ]) {
      const c = client(who ?? "");
      try {
        const refused = await rejection(c.describe());
        assert.deepEqual([refused.codeName, refused.reason], ["PERMISSION_DENIED", "MISSING_ROLE"], roles);
        assert.deepEqual(refused.metadata, { identity: who, required: "orchestrator,reader" });
      } finally {
        c.close();
      }
    }
  });

  test("without a client certificate, or with one of another CA, the handshake fails", async () => {
    audit.length = 0;
    for (const tls of [{ ca: pki.ca }, { ...other.files("orchestrator"), ca: pki.ca }]) {
      const c = new EnvClient(server.address, { timeoutS: 5, tls });
      try {
        assert.deepEqual(await failure(c.describe()), ["UNAVAILABLE", ""]);
      } finally {
        c.close();
      }
    }
    assert.equal(audit.length, 0, "refused in the handshake: no call reached the server");
  });

  test("clients check the server's certificate for <kind>.rollmesh, not for the address", async () => {
    const port = server.address.split(":").at(-1);
    const byName = new EnvClient(`localhost:${port}`, { timeoutS: 5, tls: pki.files("reader") });
    const wrongKind = new InferenceClient(server.address, { timeoutS: 5, tls: pki.files("orchestrator") });
    const wrongName = client("reader", { serverName: "rubric.rollmesh" });
    const untrusted = new EnvClient(server.address, { timeoutS: 5, tls: { ...pki.files("reader"), ca: other.ca } });
    try {
      assert.equal((await byName.describe()).environments.length, 2);
      assert.deepEqual(await failure(wrongKind.modelInfo()), ["UNAVAILABLE", ""]);
      assert.deepEqual(await failure(wrongName.describe()), ["UNAVAILABLE", ""]);
      assert.deepEqual(await failure(untrusted.describe()), ["UNAVAILABLE", ""]);
    } finally {
      for (const c of [byName, wrongKind, wrongName, untrusted]) c.close();
    }
    assert.equal(serverName("env"), "env.rollmesh");
  });

  test("settings as PEM buffers or strings, or from ROLLMESH_TLS_* by default", async () => {
    const files = pki.files("orchestrator");
    const pem = {
      cert: readFileSync(files.cert),
      key: readFileSync(files.key).toString(),
      ca: readFileSync(files.ca),
    };
    const names = ["ROLLMESH_TLS_CERT", "ROLLMESH_TLS_KEY", "ROLLMESH_TLS_CA"] as const;
    const saved = names.map((n) => process.env[n]);
    [process.env.ROLLMESH_TLS_CERT, process.env.ROLLMESH_TLS_KEY, process.env.ROLLMESH_TLS_CA] = [
      files.cert,
      files.key,
      files.ca,
    ];
    let fromEnv: EnvClient;
    try {
      fromEnv = new EnvClient(server.address, { timeoutS: 10 });
    } finally {
      names.forEach((n, i) => (saved[i] === undefined ? delete process.env[n] : (process.env[n] = saved[i])));
    }
    const fromPem = new EnvClient(server.address, { timeoutS: 10, tls: pem });
    try {
      for (const c of [fromEnv, fromPem]) {
        const episode = await c.episode("echo", { taskId: "e0" });
        await episode.close();
      }
    } finally {
      fromEnv.close();
      fromPem.close();
    }
    assert.deepEqual(
      tlsFromEnv({ ROLLMESH_TLS_CERT: "c.pem", ROLLMESH_TLS_KEY: "k.pem", ROLLMESH_TLS_CA: "", OTHER: "x" }),
      { cert: "c.pem", key: "k.pem" },
    );
  });
});

describe("TLS without a CA: encrypted, no client certificate, no role check", () => {
  let pki: Pki;
  let server: EnvironmentServer;
  before(async () => {
    pki = makePki();
    pki.issue("env", ["server"], ["env"]);
    const { cert, key } = pki.files("env");
    server = await serve([echo()], { tls: { cert, key } });
  });
  after(async () => {
    await server.stop(0);
    pki.remove();
  });

  test("any client that trusts the CA plays; a plaintext client cannot connect", async () => {
    const c = new EnvClient(server.address, { timeoutS: 10, tls: { ca: pki.ca } });
    const plain = new EnvClient(server.address, { timeoutS: 5, tls: {} });
    try {
      const episode = await c.episode("echo", { taskId: "e0" });
      await episode.close();
      assert.equal((await failure(plain.describe()))[0], "UNAVAILABLE");
    } finally {
      c.close();
      plain.close();
    }
  });
});

describe("rotation: the server rereads its certificate files when they change", () => {
  let first: Pki;
  let second: Pki;
  let dir: string;
  let server: EnvironmentServer;
  const logged: string[] = [];

  before(async () => {
    first = makePki();
    second = makePki("the next CA");
    for (const pki of [first, second]) pki.issue("env", ["server"], ["env"]);
    first.issue("orchestrator", ["orchestrator"]);
    dir = mkdtempSync(path.join(tmpdir(), "rollmesh-ts-rotate-"));
    copyFileSync(first.files("env").cert, path.join(dir, "env.pem"));
    copyFileSync(first.files("env").key, path.join(dir, "env-key.pem"));
    server = await serve([echo()], {
      tls: { cert: path.join(dir, "env.pem"), key: path.join(dir, "env-key.pem"), ca: first.ca },
    });
  });
  after(async () => {
    await server.stop(0);
    for (const pki of [first, second]) pki.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  // a fresh connection each time (no subchannel shared with an earlier client)
  const trusting = (ca: string) =>
    new EnvClient(server.address, {
      timeoutS: 5,
      tls: { ...first.files("orchestrator"), ca },
      channelOptions: { "grpc.use_local_subchannel_pool": 1 },
    });
  const describes = async (ca: string) => {
    const c = trusting(ca);
    try {
      return (await failure(c.describe()))[0];
    } finally {
      c.close();
    }
  };
  const eventually = async (ca: string, want: string) => {
    const deadline = Date.now() + 10_000;
    let got = await describes(ca);
    while (got !== want && Date.now() < deadline) {
      await sleep(200);
      got = await describes(ca);
    }
    return got;
  };

  test("new connections get the new certificate; one that does not load keeps the current one", async () => {
    assert.equal(await describes(first.ca), "OK");
    // a half-written replacement: the server keeps serving the current certificate
    writeFileSync(path.join(dir, "env.pem"), "-----BEGIN CERTIFICATE-----\ngarbage\n");
    await sleep(2500);
    assert.equal(await describes(first.ca), "OK");
    // the next certificate (another CA signed it): clients that trust that CA connect, others not
    copyFileSync(second.files("env").key, path.join(dir, "env-key.pem"));
    copyFileSync(second.files("env").cert, path.join(dir, "env.pem"));
    assert.equal(await eventually(second.ca, "OK"), "OK");
    assert.equal(await describes(first.ca), "UNAVAILABLE");
  });
});

describe("the role table", () => {
  const reader = { name: "reader", roles: ["reader" as const] };
  const operator = { name: "ops", roles: ["operator" as const] };
  const audit: string[] = [];
  const log = (line: string) => void audit.push(line);

  test("health is open; other methods need an identity (UNAUTHENTICATED, NO_CREDENTIALS)", () => {
    assert.equal(authorize("/grpc.health.v1.Health/Check", undefined, "p:1", log), undefined);
    assert.equal(authorize("/grpc.health.v1.Health/Watch", undefined, "p:1", log), undefined);
    assert.throws(
      () => authorize(`${ENV}Describe`, undefined, "127.0.0.1:9", log),
      (e: Error & { code?: number; reason?: string }) => e.code === 16 && e.reason === "NO_CREDENTIALS",
    );
    assert.equal(audit.at(-1), `access denied: ${ENV}Describe by unknown from 127.0.0.1:9 (NO_CREDENTIALS)`);
  });

  test("per method; operator always; a method not in the table only for operator", () => {
    const table: [string, string[]][] = [
      [`${ENV}Describe`, ["orchestrator", "reader"]],
      [`${ENV}ListTasks`, ["orchestrator", "reader"]],
      [`${ENV}Episode`, ["orchestrator"]],
      [`${ENV}Score`, ["orchestrator"]],
      [`${ENV}RunEpisode`, ["orchestrator"]],
      ["/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", ["orchestrator", "reader", "trainer"]],
      ["/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", ["orchestrator", "reader", "trainer"]],
    ];
    for (const [method, roles] of table) {
      for (const role of ["server", "orchestrator", "trainer", "publisher", "reader", "operator"]) {
        assert.equal(allows([role], method), role === "operator" || roles.includes(role), `${role} ${method}`);
      }
    }
    assert.equal(allows(["orchestrator", "reader", "trainer"], `${ENV}NewMethod`), false);
    assert.equal(allows(["operator"], `${ENV}NewMethod`), true);
    assert.throws(
      () => authorize(`${ENV}NewMethod`, reader, "p:1", log),
      (e: Error & { metadata?: object }) =>
        JSON.stringify(e.metadata) === '{"identity":"reader","required":"operator"}',
    );
    assert.deepEqual(authorize(`${ENV}NewMethod`, operator, "p:1", log), operator);
  });

  test("the identity of a certificate: CN, and the OUs that are roles", () => {
    assert.deepEqual(
      identityFromCertificate({
        subject: { O: "rollmesh", OU: ["server", "orchestrator", "x"], CN: "rubric" } as never,
      }),
      { name: "rubric", roles: ["server", "orchestrator"] },
    );
    assert.deepEqual(identityFromCertificate({ subject: { OU: "reader", CN: "grafana" } as never }), {
      name: "grafana",
      roles: ["reader"],
    });
  });
});

describe("settings and binding", () => {
  test("--tls-* flags over ROLLMESH_TLS_*; --insecure", () => {
    const env = { ROLLMESH_TLS_CERT: "env-c.pem", ROLLMESH_TLS_KEY: "env-k.pem", ROLLMESH_TLS_CA: "env-ca.pem" };
    assert.deepEqual(parseServeArgs([], env).tls, { cert: "env-c.pem", key: "env-k.pem", ca: "env-ca.pem" });
    const flags = parseServeArgs(["--tls-cert", "c.pem", "--tls-key", "k.pem", "--insecure"], env);
    assert.deepEqual(flags.tls, { cert: "c.pem", key: "k.pem", ca: "env-ca.pem" });
    assert.equal(flags.insecure, true);
    assert.deepEqual(parseServeArgs([], {}).tls, {});
    assert.equal(parseServeArgs([], {}).insecure, false);
  });

  test("a certificate needs its key; a server with a CA needs a certificate; files must be readable", () => {
    assert.throws(() => loadTls({ cert: "c.pem" }, { server: false }), /both the TLS certificate and its key/);
    assert.throws(() => loadTls({ ca: "ca.pem" }, { server: true }), /needs its own certificate/);
    assert.throws(
      () => loadTls({ ca: "/no/such/ca.pem" }, { server: false }),
      /cannot read the CA bundle \/no\/such\/ca\.pem: ENOENT/,
    );
  });

  test("serve() refuses unreadable TLS files before binding", async () => {
    await assert.rejects(
      serve([echo()], { tls: { cert: "/no/cert.pem", key: "/no/key.pem" } }),
      /cannot read the certificate/,
    );
  });

  test("a non-loopback host needs TLS and a CA, unless insecure (then a warning)", async () => {
    assert.equal(await isLoopback("127.0.0.1"), true);
    assert.equal(await isLoopback("127.3.2.1"), true);
    assert.equal(await isLoopback("::1"), true);
    assert.equal(await isLoopback("localhost"), true);
    assert.equal(await isLoopback("0.0.0.0"), false);
    assert.equal(await isLoopback("::"), false);
    assert.equal(await isLoopback(""), false);
    await checkBind("127.0.0.1", {});
    await assert.rejects(
      checkBind("0.0.0.0", {}),
      /refusing to serve environments on 0\.0\.0\.0 without TLS and caller authentication/,
    );
    await assert.rejects(checkBind("0.0.0.0", { cert: "c", key: "k" }), /without caller authentication \(--tls-ca\)/);
    await checkBind("0.0.0.0", { cert: "c", key: "k", ca: "ca" });
    const warnings: string[] = [];
    await checkBind("0.0.0.0", {}, { insecure: true, warn: (line) => void warnings.push(line) });
    assert.match(warnings[0] ?? "", /without TLS and caller authentication \(--insecure\)/);
  });
});
