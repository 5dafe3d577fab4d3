// The error statuses the environment server sends (spec 2): every one carries, in the trailer
// grpc-status-details-bin, a google.rpc.Status whose details hold one google.rpc.ErrorInfo
// {reason = a rollmesh.v1.ErrorReason name, domain = "rollmesh.dev", metadata}.
import { Metadata, status, type StatusObject } from "@grpc/grpc-js";
import { ErrorInfo } from "./gen/google/rpc/error_details.js";
import { Status } from "./gen/google/rpc/status.js";
import type { ErrorReason } from "./gen/rollmesh/v1/errors.js";

export const ERROR_DOMAIN = "rollmesh.dev";
export const STATUS_DETAILS_KEY = "grpc-status-details-bin";
export const ERROR_INFO_TYPE_URL = "type.googleapis.com/google.rpc.ErrorInfo";

/** The name of a rollmesh.v1.ErrorReason value, e.g. "UNKNOWN_TASK". */
export type ReasonName = Exclude<keyof typeof ErrorReason, "ERROR_REASON_UNSPECIFIED" | "UNRECOGNIZED">;

// A status message (and each metadata value) is capped, as in Python: an error that quotes client
// strings or an environment's exception must not become megabytes of trailer and log.
export const MAX_MESSAGE_CHARS = 2000;
const MAX_METADATA_CHARS = 512;

/** `text`, cut to `limit` characters (saying how long it was). */
export function clip(text: string, limit = MAX_MESSAGE_CHARS): string {
  return text.length <= limit ? text : `${text.slice(0, limit)}... (${text.length} chars)`;
}

/** An error that ends an RPC with this status code, reason and message (for people). */
export class RpcError extends Error {
  readonly metadata: Record<string, string>;

  constructor(
    readonly code: status,
    readonly reason: ReasonName,
    message: string,
    metadata: Record<string, string> = {},
  ) {
    super(clip(message));
    this.name = "RpcError";
    this.metadata = Object.fromEntries(Object.entries(metadata).map(([k, v]) => [k, clip(v, MAX_METADATA_CHARS)]));
  }
}

type Make = (reason: ReasonName, message: string, metadata?: Record<string, string>) => RpcError;
const maker =
  (code: status): Make =>
  (reason, message, metadata) =>
    new RpcError(code, reason, message, metadata);

export const invalidArgument = maker(status.INVALID_ARGUMENT);
export const notFound = maker(status.NOT_FOUND);
export const failedPrecondition = maker(status.FAILED_PRECONDITION);
export const resourceExhausted = maker(status.RESOURCE_EXHAUSTED);
export const deadlineExceeded = maker(status.DEADLINE_EXCEEDED);
export const unavailable = maker(status.UNAVAILABLE);
export const unauthenticated = maker(status.UNAUTHENTICATED);
export const permissionDenied = maker(status.PERMISSION_DENIED);
export const unimplemented = maker(status.UNIMPLEMENTED);
export const internal = maker(status.INTERNAL);

/** Serialized google.rpc.Status{code, message, details: [Any(ErrorInfo)]}. */
export function statusDetails(
  code: status,
  message: string,
  reason: string,
  metadata: Record<string, string> = {},
): Buffer {
  const info = ErrorInfo.encode({ reason, domain: ERROR_DOMAIN, metadata }).finish();
  const details = [{ typeUrl: ERROR_INFO_TYPE_URL, value: Buffer.from(info) }];
  return Buffer.from(Status.encode({ code, message, details }).finish());
}

/**
 * The status to send for any error, ready for a unary callback, call.emit("error") or
 * call.destroy(): an RpcError keeps its code and reason; anything else is the environment's own
 * code failing (INTERNAL, ENVIRONMENT_FAILED), described as "<where> raised <error>".
 */
export function toServiceError(error: unknown, where: string): Partial<StatusObject> & Error {
  const { code, details, metadata } = toStatus(error, where);
  return Object.assign(new Error(details), { code, details, metadata });
}

/** The same status as a grpc-js status object (for an interceptor's sendStatus). */
export function toStatus(error: unknown, where: string): Pick<StatusObject, "code" | "details" | "metadata"> {
  const rpc =
    error instanceof RpcError
      ? error
      : internal("ENVIRONMENT_FAILED", where ? `${where} raised ${describeError(error)}` : describeError(error));
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, statusDetails(rpc.code, rpc.message, rpc.reason, rpc.metadata));
  return { code: rpc.code, details: rpc.message, metadata };
}

/** "Name: message" of an error (its text for anything else). */
export function describeError(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/** A client-supplied string for an error message, cut to 120 chars (a status message is a header). */
export function quoted(value: string, limit = 120): string {
  return value.length <= limit
    ? JSON.stringify(value)
    : `${JSON.stringify(value.slice(0, limit))}... (${value.length} chars)`;
}
