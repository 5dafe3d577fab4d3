// Failed calls as RollmeshError: the gRPC status code plus the ErrorInfo reason and metadata the
// server put in the grpc-status-details-bin trailer (spec 2). Transport statuses carry no
// ErrorInfo (reason ""); an unknown reason is to be handled by its status code alone.
import { Metadata, status } from "@grpc/grpc-js";
import { ErrorInfo } from "../gen/google/rpc/error_details.js";
import { Status } from "../gen/google/rpc/status.js";
import { ERROR_DOMAIN, STATUS_DETAILS_KEY } from "../errors.js";

export interface ErrorInfoFields {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

/** A failed rollmesh call: `code` (grpc status), `reason` (an ErrorReason name, "" when none), `metadata`. */
export class RollmeshError extends Error {
  /** The status code's name, e.g. "NOT_FOUND". */
  readonly codeName: string;

  constructor(
    readonly code: status,
    /** The status message the server wrote, for people. */
    readonly details: string,
    readonly reason = "",
    readonly metadata: Readonly<Record<string, string>> = {},
    options?: { cause?: unknown },
  ) {
    const codeName = status[code] ?? `code ${code}`;
    super(`${codeName}${reason ? ` ${reason}` : ""}: ${details || "(no message)"}`, options);
    this.name = "RollmeshError";
    this.codeName = codeName;
  }
}

/** The google.rpc.ErrorInfo of a failed call (a grpc-js error, a RollmeshError), if it has one. */
export function errorInfo(err: unknown): ErrorInfoFields | undefined {
  if (err instanceof RollmeshError) {
    return err.reason ? { reason: err.reason, domain: ERROR_DOMAIN, metadata: { ...err.metadata } } : undefined;
  }
  const metadata = (err as { metadata?: unknown } | null)?.metadata;
  if (!(metadata instanceof Metadata)) return undefined;
  for (const value of metadata.get(STATUS_DETAILS_KEY)) {
    try {
      const detailsStatus = Status.decode(Buffer.isBuffer(value) ? value : Buffer.from(value));
      const any = detailsStatus.details.find((d) => d.typeUrl.endsWith("/google.rpc.ErrorInfo"));
      if (any) {
        const info = ErrorInfo.decode(any.value);
        return { reason: info.reason, domain: info.domain, metadata: info.metadata };
      }
    } catch {
      // undecodable details: as if there were none
    }
  }
  return undefined;
}

/** Any error of a call as a RollmeshError (errors that are not gRPC statuses are returned as they are). */
export function toRollmeshError(err: unknown): unknown {
  if (err instanceof RollmeshError) return err;
  const e = err as { code?: unknown; details?: unknown } | null;
  if (!e || typeof e.code !== "number" || typeof e.details !== "string") return err;
  const info = errorInfo(err);
  const ours = info?.domain === ERROR_DOMAIN;
  return new RollmeshError(e.code, e.details, ours ? info.reason : "", ours ? info.metadata : {}, { cause: err });
}
