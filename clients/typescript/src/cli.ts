// A command line for an environment server script: `node server.js --port 50051`.
import { parseArgs } from "node:util";
import { serve, type ServeOptions } from "./server.js";
import type { AnyEnvironment } from "./service.js";

export const SERVE_USAGE = `options:
  --host HOST              interface to bind (default 127.0.0.1)
  --port PORT              port, 0 = a free one (default 0)
  --max-episodes N         concurrent episodes (default 1024)
  --idle-timeout S         seconds an episode may wait for the client, 0 = no limit (default 300)
  --max-message-mb MIB     largest gRPC message, MiB (default 16)
  --grace S                seconds in-flight episodes get on SIGTERM (default 10)
  --nats URL               register in the NATS registry at URL
  --advertise-host HOST    host clients reach this server at (default --host)`;

/** The options of the command line; throws an Error that names the bad flag. */
export function parseServeArgs(argv: string[]): ServeOptions & { graceS: number; help: boolean } {
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
      help: { type: "boolean", short: "h", default: false },
    },
  });
  const num = (name: Exclude<keyof typeof values, "help">, min: number): number => {
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
    help: values.help,
  };
}

/** Parses argv, serves `envs`, prints "rollmesh env server on HOST:PORT: names" to stderr, exits 0 on SIGTERM. */
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
  const server = await serve(envs, opts);
  console.error(`rollmesh env server on ${server.address}: ${envs.map((e) => e.name).join(", ")}`);
  await server.serveUntilSignal(opts.graceS);
  process.exit(0);
}
