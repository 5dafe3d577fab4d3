// @rollmesh/client 1.x (protocol rollmesh.v1): clients of the environment, inference and rubric
// services, an environment-server helper, and the bus (traces, scores, registry).

// Clients.
export {
  EnvClient,
  type EnvClientOptions,
  type RunEpisodeOptions,
  type RunEpisodeResult,
  type ScoreResult,
  type ServerDescription,
  type StartOptions,
  type TaskPage,
} from "./client/env-client.js";
export { EpisodeSession } from "./client/episode.js";
export {
  type Completion,
  type GenerateInput,
  type GenerateResult,
  InferenceClient,
  type ModelInfo,
  type PromptInput,
} from "./client/inference-client.js";
export { RubricClient, type RubricRef, type Score, type TrajectoryInit } from "./client/rubric-client.js";
export type { CallOptions, ClientOptions } from "./client/call.js";
export { errorInfo, type ErrorInfoFields, RollmeshError } from "./client/errors.js";
export type {
  ActionInit,
  EnvironmentDescription,
  Message,
  SamplingInit,
  StepResult,
  StopReasonName,
  Task,
  TaskInit,
  ToolCall,
} from "./client/types.js";

// The bus.
export { publishMonitorTrace, type PublishOptions, type PublishResult, type TraceInit } from "./monitor.js";
export { readScores, type ReadScoresOptions, ScoreReader } from "./scores.js";
export { MONITOR_STREAM, monitorSubject, SCORES_STREAM, scoresSubject } from "./streams.js";
export { kindToken, Registration, REGISTRY_BUCKET, registryKey, type RegistryOptions } from "./registry.js";
export { type BusOptions, connectBus } from "./bus.js";

// Transport security: TLS settings, mutual TLS and roles.
export {
  checkBind,
  ENV_TLS_CA,
  ENV_TLS_CERT,
  ENV_TLS_KEY,
  isLoopback,
  natsTlsOptions,
  serverName,
  type ServerKind,
  tlsFromEnv,
  type TlsOptions,
} from "./tls.js";
export {
  allows,
  type AuditLog,
  authorizationInterceptor,
  authorize,
  type Identity,
  identityFromCertificate,
  METHOD_ROLES,
  type Role,
  ROLES,
} from "./authorize.js";

// Writing an environment server.
export {
  type Agent,
  ChatAgent,
  type ChatAgentOptions,
  type ChatTool,
  ModelCallError,
  TurnLimitReached,
} from "./agent.js";
export { parseServeArgs, runServer, SERVE_USAGE } from "./cli.js";
export {
  defineEnvironment,
  Environment,
  type EnvironmentKindName,
  type EnvironmentSpec,
  type EpisodeContext,
  type Rewards,
  type RunContext,
  type RunOutcome,
  type RunStopReason,
  type ScoreInput,
  type State,
  type StepOutcome,
  weightedReward,
} from "./environment.js";
export { Episode } from "./episode.js";
export { ERROR_DOMAIN, type ReasonName, RpcError } from "./errors.js";
export type { MessageInit } from "./messages.js";
export { EnvironmentServer, serve, SERVICE_NAME, type ServeOptions } from "./server.js";
export type { TaskRow, TaskSource } from "./tasks.js";
export type { Tool } from "./tools.js";
export { PROTOCOL_VERSION, VERSION } from "./version.js";

// The generated messages and service clients, one namespace per proto file.
export * as bus from "./gen/rollmesh/v1/bus.js";
export * as environment from "./gen/rollmesh/v1/environment.js";
export * as errors from "./gen/rollmesh/v1/errors.js";
export * as inference from "./gen/rollmesh/v1/inference.js";
export * as messages from "./gen/rollmesh/v1/messages.js";
export * as rubric from "./gen/rollmesh/v1/rubric.js";
export * as trajectory from "./gen/rollmesh/v1/trajectory.js";
