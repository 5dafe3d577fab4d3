// A command line for an environment server script: `node server.js --port 50051`.
import { parseArgs } from "node:util";
import { serve, type ServeOptions } from "./server.js";
import type { AnyEnvironment } from "./service.js";
import { checkBind, ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY, loadTls, tlsFromEnv } from "./tls.js";

export const SERVE_USAGE = `options:
  --host HOST              interface to bind (default 127.0.0.1)
  --port PORT              port, 0 = a free one (default 0)
  --max-episodes N         concurrent episodes (default 1024)
  --idle-timeout S         seconds an episode may wait for the client, 0 = no limit (default 300)
  --max-message-mb MIB     largest gRPC message, MiB (default 16)
  --grace S                seconds in-flight episodes get on SIGTERM (default 10)
  --nats URL               register in the NATS registry at URL
  --advertise-host HOST    host clients reach this server at (default --host)
  --tls-cert PEM           this server's certificate; turns TLS on (env ${ENV_TLS_CERT})
  --tls-key PEM            the certificate's private key (env ${ENV_TLS_KEY})
  --tls-ca PEM             CA that signs callers: mutual TLS, each method checks the caller's roles (env ${ENV_TLS_CA})
  --insecure               allow a non-loopback --host without TLS and --tls-ca (warns)`;

/**
 * The options of the command line; throws an Error that names the bad flag. TLS flags default to
 * the environment (ROLLMESH_TLS_CERT, ROLLMESH_TLS_KEY, ROLLMESH_TLS_CA).
 */
export function parseServeArgs(
  argv: string[],
  env: NodeJS.ProcessEnv = process.env,
): ServeOptions & { graceS: number; help: boolean; insecure: boolean } {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "0" },
      "max-episodes": { type: "string", default: "1024" },
      "idle-timeout": { type: "string", default: "300" },
      "max-message-mb": { type: "string", default: "16" },
      grace: { type: "string", default: "10" },
      nats: { type: "string" },
      "advertise-host": { type: "string" },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      "tls-ca": { type: "string" },
      insecure: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  const num = (name: Exclude<keyof typeof values, "help" | "insecure">, min: number): number => {
    const value = Number(values[name]);
    if (!Number.isFinite(value) || value < min) throw new Error(`--${name} must be a number >= ${min}`);
    return value;
  };
  return {
    host: values.host,
    port: num("port", 0),
    maxConcurrentEpisodes: num("max-episodes", 1),
    idleTimeoutS: num("idle-timeout", 0),
    maxMessageBytes: Math.floor(num("max-message-mb", 0.001) * 1024 * 1024),
    graceS: num("grace", 0),
    natsUrl: values.nats,
    advertiseHost: values["advertise-host"],
    tls: {
      ...tlsFromEnv(env),
      ...(values["tls-cert"] ? { cert: values["tls-cert"] } : {}),
      ...(values["tls-key"] ? { key: values["tls-key"] } : {}),
      ...(values["tls-ca"] ? { ca: values["tls-ca"] } : {}),
    },
    insecure: values.insecure,
    help: values.help,
  };
}

/**
 * Parses argv, serves `envs`, prints "rollmesh env server on HOST:PORT: names" to stderr, exits 0
 * on SIGTERM. Exits 2 on a bad flag, unreadable TLS files, or a non-loopback host without TLS and a
 * CA (unless --insecure).
 */
export async function runServer(envs: AnyEnvironment[], argv = process.argv.slice(2)): Promise<void> {
  let opts: ReturnType<typeof parseServeArgs>;
  try {
    opts = parseServeArgs(argv);
  } catch (e) {
    console.error(`${e instanceof Error ? e.message : e}\n${SERVE_USAGE}`);
    process.exit(2);
  }
  if (opts.help) {
    console.log(`usage: node ${process.argv[1] ?? "server.js"} [options]\n${SERVE_USAGE}`);
    process.exit(0);
  }
  try {
    loadTls(opts.tls ?? {}, { server: true });
    await checkBind(opts.host ?? "127.0.0.1", opts.tls ?? {}, { insecure: opts.insecure });
  } catch (e) {
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    process.exit(2);
  }
  const server = await serve(envs, opts);
  // the SIGTERM handler is in place before the line that tells supervisors the server is up
  const stopped = server.serveUntilSignal(opts.graceS);
  console.error(`rollmesh env server on ${server.address}: ${envs.map((e) => e.name).join(", ")}`);
  await stopped;
  process.exit(0);
}
