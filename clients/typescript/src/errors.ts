// Errors that end an RPC with a gRPC status and a message a person can act on.
import { status } from "@grpc/grpc-js";

export class RpcError extends Error {
  constructor(
    readonly code: status,
    message: string,
  ) {
    super(message);
    this.name = "RpcError";
  }
}

export const invalidArgument = (message: string) => new RpcError(status.INVALID_ARGUMENT, message);
export const notFound = (message: string) => new RpcError(status.NOT_FOUND, message);
export const failedPrecondition = (message: string) => new RpcError(status.FAILED_PRECONDITION, message);
export const resourceExhausted = (message: string) => new RpcError(status.RESOURCE_EXHAUSTED, message);
export const deadlineExceeded = (message: string) => new RpcError(status.DEADLINE_EXCEEDED, message);
export const unavailable = (message: string) => new RpcError(status.UNAVAILABLE, message);
export const unimplemented = (message: string) => new RpcError(status.UNIMPLEMENTED, message);

/** The status for any error: RpcError keeps its code, anything else is INTERNAL. */
export function toStatus(error: unknown, where: string): { code: status; details: string } {
  if (error instanceof RpcError) return { code: error.code, details: error.message };
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return { code: status.INTERNAL, details: where ? `${where} raised ${text}` : text };
}

/** A client-supplied string for an error message, cut to a bound (a status message is a header). */
export function quoted(value: string, limit = 120): string {
  return value.length <= limit ? JSON.stringify(value) : `${JSON.stringify(value.slice(0, limit))}... (${value.length} chars)`;
}
