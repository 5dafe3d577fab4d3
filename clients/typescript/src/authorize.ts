// Who may call what on an environment server with mutual TLS (spec 14): the caller is the client
// certificate the TLS handshake verified (CN = name, each OU = a role), and each method needs one
// of its roles (operator may do everything). Refusals are UNAUTHENTICATED (NO_CREDENTIALS) or
// PERMISSION_DENIED (MISSING_ROLE, with ErrorInfo metadata {identity, required}), each logged as one
// audit line with the identity, the method, the peer and the reason.
import type { PeerCertificate } from "node:tls";
import {
  type Metadata,
  type ServerInterceptingCallInterface,
  ServerInterceptingCall,
  type ServerInterceptor,
  ServerListenerBuilder,
  ResponderBuilder,
} from "@grpc/grpc-js";
import { clip, permissionDenied, toStatus, unauthenticated } from "./errors.js";

export const SERVER = "server";
export const ORCHESTRATOR = "orchestrator";
export const TRAINER = "trainer";
export const PUBLISHER = "publisher";
export const READER = "reader";
export const OPERATOR = "operator";
export const ROLES = [SERVER, ORCHESTRATOR, TRAINER, PUBLISHER, READER, OPERATOR] as const;
export type Role = (typeof ROLES)[number];

const ENV = "/rollmesh.v1.EnvironmentService/";
const OPEN: readonly Role[] = []; // no identity needed

/**
 * gRPC method -> the roles that may call it (any one will do; operator always may). A method that
 * is not listed is refused to everyone but operator: a new method is closed until listed.
 */
export const METHOD_ROLES: Readonly<Record<string, readonly Role[]>> = {
  "/grpc.health.v1.Health/Check": OPEN,
  "/grpc.health.v1.Health/Watch": OPEN,
  "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": [ORCHESTRATOR, READER, TRAINER],
  "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": [ORCHESTRATOR, READER, TRAINER],
  [`${ENV}Describe`]: [ORCHESTRATOR, READER],
  [`${ENV}ListTasks`]: [ORCHESTRATOR, READER],
  [`${ENV}Episode`]: [ORCHESTRATOR],
  [`${ENV}Score`]: [ORCHESTRATOR],
  [`${ENV}RunEpisode`]: [ORCHESTRATOR],
};

export interface Identity {
  /** The certificate's common name. */
  name: string;
  /** Its organizational units that are roles. */
  roles: Role[];
}

const asList = (value: string | string[] | undefined): string[] =>
  value === undefined ? [] : Array.isArray(value) ? value : [value];

/** The identity a verified certificate names: CN = name, each OU that is a role = a role. */
export function identityFromCertificate(cert: Pick<PeerCertificate, "subject">): Identity {
  const subject = cert.subject as unknown as Record<string, string | string[] | undefined>;
  const name =
    asList(subject.CN)[0] ??
    Object.entries(subject)
      .map(([k, v]) => `${k}=${asList(v).join("+")}`)
      .join(",");
  const roles = asList(subject.OU).filter((ou): ou is Role => (ROLES as readonly string[]).includes(ou));
  return { name, roles: [...new Set(roles)] };
}

/** Whether one of `roles` may call `method`. */
export function allows(roles: readonly string[], method: string): boolean {
  if (roles.includes(OPERATOR)) return true;
  const required = METHOD_ROLES[method];
  if (required === undefined) return false;
  return required.length === 0 || required.some((r) => roles.includes(r));
}

/** A refusal, logged as one audit line: "access denied: METHOD by IDENTITY from PEER (REASON)". */
export type AuditLog = (
  line: string,
  fields: { method: string; identity: string; peer: string; reason: string },
) => void;

const defaultAudit: AuditLog = (line) => console.error(line);

/**
 * The caller's identity if it may call `method`; throws the RpcError that refuses it otherwise
 * (logged). `identity` undefined = no verified certificate.
 */
export function authorize(
  method: string,
  identity: Identity | undefined,
  peer: string,
  audit = defaultAudit,
): Identity | undefined {
  const required = METHOD_ROLES[method];
  if (required !== undefined && required.length === 0) return identity; // open (health)
  const deny = (who: string, reason: string) =>
    audit(`access denied: ${method} by ${who} from ${peer} (${reason})`, { method, identity: who, peer, reason });
  if (!identity) {
    deny("unknown", "NO_CREDENTIALS");
    throw unauthenticated("NO_CREDENTIALS", `${method} needs credentials: a client certificate`);
  }
  if (!allows(identity.roles, method)) {
    const needed = [...(required ?? [OPERATOR])].sort();
    deny(identity.name, "MISSING_ROLE");
    throw permissionDenied(
      "MISSING_ROLE",
      `'${clip(identity.name, 64)}' may not call ${method}: it needs one of the roles ${needed.join(", ")}`,
      { identity: identity.name, required: needed.join(",") },
    );
  }
  return identity;
}

/** The identity of the connection a call came in on: its verified client certificate, if any. */
export function callerIdentity(call: Pick<ServerInterceptingCallInterface, "getAuthContext">): Identity | undefined {
  const cert = call.getAuthContext().sslPeerCertificate;
  return cert?.subject ? identityFromCertificate(cert) : undefined;
}

/** The longest a refused streaming call waits for the client's first message before its status is sent. */
export const STREAM_REFUSAL_WAIT_MS = 1000;

/**
 * A grpc-js server interceptor that runs `authorize` on every call before its handler: a refused
 * call ends with its status (and ErrorInfo) and never reaches the handler.
 *
 * A client of a request-streaming method (Episode) writes its first message right after opening
 * the stream. A status that arrives before that write makes some clients (grpc's Python aio) report
 * the failed write instead of the refusal, so such a call is refused when its first message or its
 * half-close arrives (at the latest STREAM_REFUSAL_WAIT_MS after it opened); the message is dropped.
 */
export function authorizationInterceptor(audit: AuditLog = defaultAudit): ServerInterceptor {
  return (descriptor, call) => {
    let refused = false;
    let refusal: ReturnType<typeof toStatus> | undefined;
    let timer: NodeJS.Timeout | undefined;
    const refuse = () => {
      clearTimeout(timer);
      if (refusal) call.sendStatus(refusal);
      refusal = undefined;
    };
    const listener = new ServerListenerBuilder()
      .withOnReceiveMetadata((metadata: Metadata, next) => {
        try {
          authorize(descriptor.path, callerIdentity(call), call.getPeer(), audit);
        } catch (e) {
          refused = true;
          refusal = toStatus(e, descriptor.path);
          if (!descriptor.requestStream) return refuse();
          timer = setTimeout(refuse, STREAM_REFUSAL_WAIT_MS);
          call.startRead();
          return;
        }
        next(metadata);
      })
      .withOnReceiveMessage((message, next) => (refused ? refuse() : next(message)))
      .withOnReceiveHalfClose((next) => (refused ? refuse() : next()))
      .withOnCancel(() => {
        clearTimeout(timer);
        refusal = undefined;
      })
      .build();
    const responder = new ResponderBuilder().withStart((next) => next(listener)).build();
    return new ServerInterceptingCall(call, responder);
  };
}
