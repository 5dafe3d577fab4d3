// What every client shares: the channel options, a deadline on every call, errors as RollmeshError.
import {
  type CallOptions as GrpcCallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientUnaryCall,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";
import { channelCredentials, serverName, type ServerKind, tlsFromEnv, type TlsOptions } from "../tls.js";
import { toRollmeshError } from "./errors.js";

export interface ClientOptions {
  /** Default deadline of each call, in seconds (default 30). */
  timeoutS?: number;
  /** Largest message either way, MiB (default 16, the servers' default). */
  maxMessageMb?: number;
  /**
   * TLS: the CA that signs the servers (else the system's roots) and this client's certificate and
   * key (paths or PEM). Default: ROLLMESH_TLS_CA, ROLLMESH_TLS_CERT, ROLLMESH_TLS_KEY; none set:
   * plaintext.
   */
  tls?: TlsOptions;
  /**
   * The name the server's certificate must hold (default "<kind>.rollmesh": env.rollmesh,
   * inference.rollmesh, rubric.rollmesh), whatever the address.
   */
  serverName?: string;
  /** grpc-js credentials of your own; they replace `tls`. */
  credentials?: ChannelCredentials;
  channelOptions?: ChannelOptions;
}

export interface CallOptions {
  /** This call's deadline, in seconds (default: the client's timeoutS). */
  timeoutS?: number;
  /** Cancels the call (it then rejects with CANCELLED). */
  signal?: AbortSignal;
  /** Request headers. */
  headers?: Record<string, string>;
}

export const DEFAULT_TIMEOUT_S = 30;

/** The arguments of a generated client's constructor, for a server of `kind`. */
export function channelArgs(opts: ClientOptions, kind: ServerKind): [ChannelCredentials, ChannelOptions] {
  const bytes = Math.floor((opts.maxMessageMb ?? 16) * 1024 * 1024);
  const creds = opts.credentials ?? channelCredentials(opts.tls ?? tlsFromEnv());
  const options: ChannelOptions = {
    "grpc.max_send_message_length": bytes,
    "grpc.max_receive_message_length": bytes,
    // over TLS, the certificate must be one issued to serve this kind, wherever the address points
    "grpc.ssl_target_name_override": opts.serverName ?? serverName(kind),
  };
  return [creds, { ...options, ...opts.channelOptions }];
}

export function checkTimeout(timeoutS: number, what = "timeoutS"): number {
  if (!(timeoutS > 0) || !Number.isFinite(timeoutS)) throw new Error(`${what} must be a number > 0, got ${timeoutS}`);
  return timeoutS;
}

/** Metadata and grpc call options (deadline) for one call. */
export function callArgs(opts: CallOptions, defaultTimeoutS: number): [Metadata, Partial<GrpcCallOptions>] {
  const metadata = new Metadata();
  for (const [k, v] of Object.entries(opts.headers ?? {})) metadata.set(k, v);
  const timeoutS = checkTimeout(opts.timeoutS ?? defaultTimeoutS);
  return [metadata, { deadline: Date.now() + timeoutS * 1000 }];
}

type Callback<Res> = (err: ServiceError | null, res: Res) => void;

/** One unary call as a promise: deadline, abort signal, errors as RollmeshError. */
export function unary<Res>(
  start: (metadata: Metadata, options: Partial<GrpcCallOptions>, cb: Callback<Res>) => ClientUnaryCall,
  opts: CallOptions,
  defaultTimeoutS: number,
): Promise<Res> {
  const [metadata, options] = callArgs(opts, defaultTimeoutS);
  return new Promise<Res>((resolve, reject) => {
    let call: ClientUnaryCall | undefined;
    const cancel = () => call?.cancel();
    call = start(metadata, options, (err, res) => {
      opts.signal?.removeEventListener("abort", cancel);
      if (err) reject(toRollmeshError(err));
      else resolve(res);
    });
    if (opts.signal?.aborted) cancel();
    else opts.signal?.addEventListener("abort", cancel, { once: true });
  });
}

/** Cancels a streaming call when `signal` aborts (the listener goes when the call ends). */
export function cancelOnAbort(
  call: { cancel(): void; on(event: "status", fn: () => void): unknown },
  signal?: AbortSignal,
): void {
  if (!signal) return;
  const cancel = () => call.cancel();
  if (signal.aborted) return cancel();
  signal.addEventListener("abort", cancel, { once: true });
  call.on("status", () => signal.removeEventListener("abort", cancel));
}
