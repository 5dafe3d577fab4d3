// A command line for an environment server script: `node server.js --port 50051`.
import { parseArgs } from "node:util";
import { serve, type ServeOptions } from "./server.js";
import type { AnyEnvironment } from "./service.js";

const USAGE = `options:
  --host HOST              interface to bind (default 127.0.0.1)
  --port PORT              port, 0 = a free one (default 0)
  --max-episodes N         concurrent episodes (default 1024)
  --idle-timeout S         seconds an episode may wait for the client (default 300)
  --max-message-bytes N    largest message (default 16 MiB)
  --grace S                seconds in-flight episodes get on SIGTERM (default 10)
  --nats URL               register in the NATS registry at URL
  --advertise-host HOST    host clients reach this server at (default --host)`;

export function parseServeArgs(argv: string[]): ServeOptions & { graceS: number } {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string", default: "0" },
      "max-episodes": { type: "string", default: "1024" },
      "idle-timeout": { type: "string", default: "300" },
      "max-message-bytes": { type: "string", default: String(16 * 1024 * 1024) },
      grace: { type: "string", default: "10" },
      nats: { type: "string" },
      "advertise-host": { type: "string" },
    },
  });
  const num = (name: keyof typeof values, min: number): number => {
    const value = Number(values[name]);
    if (!Number.isFinite(value) || value < min) throw new Error(`--${name} must be a number >= ${min}`);
    return value;
  };
  return {
    host: values.host,
    port: num("port", 0),
    maxConcurrentEpisodes: num("max-episodes", 1),
    idleTimeoutS: num("idle-timeout", 0.001),
    maxMessageBytes: num("max-message-bytes", 1),
    graceS: num("grace", 0),
    natsUrl: values.nats,
    advertiseHost: values["advertise-host"],
  };
}

/** Parses argv, serves `envs`, prints "rollmesh env server on HOST:PORT: names" to stderr, exits 0 on SIGTERM. */
export async function runServer(envs: AnyEnvironment[], argv = process.argv.slice(2)): Promise<void> {
  let opts: ReturnType<typeof parseServeArgs>;
  try {
    opts = parseServeArgs(argv);
  } catch (e) {
    console.error(`${e instanceof Error ? e.message : e}\n${USAGE}`);
    process.exit(2);
  }
  const server = await serve(envs, opts);
  console.error(`rollmesh env server on ${server.address}: ${envs.map((e) => e.name).join(", ")}`);
  await server.serveUntilSignal(opts.graceS);
  process.exit(0);
}
