// @rollmesh/client: the generated contract, an environment-server helper and a trace publisher.
// The generated messages and service clients, one namespace per proto file.
export * as bus from "./gen/rollmesh/v1/bus.js";
export * as environment from "./gen/rollmesh/v1/environment.js";
export * as inference from "./gen/rollmesh/v1/inference.js";
export * as messages from "./gen/rollmesh/v1/messages.js";
export * as rubric from "./gen/rollmesh/v1/rubric.js";
export * as trajectory from "./gen/rollmesh/v1/trajectory.js";
export { runServer, parseServeArgs } from "./cli.js";
export {
  defineEnvironment,
  Environment,
  type EnvironmentKindName,
  type EnvironmentSpec,
  type EpisodeContext,
  type Rewards,
  type ScoreInput,
  type State,
  type StepOutcome,
  weightedReward,
} from "./environment.js";
export { Episode } from "./episode.js";
export { RpcError } from "./errors.js";
export type { MessageInit } from "./messages.js";
export { publishMonitorTrace, type PublishResult } from "./monitor.js";
export { Registration, REGISTRY_BUCKET } from "./registry.js";
export { EnvironmentServer, serve, SERVICE_NAME, type ServeOptions } from "./server.js";
export type { TaskRow, TaskSource } from "./tasks.js";
export type { Tool } from "./tools.js";
