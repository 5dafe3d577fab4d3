// A client of the rubric service (RubricService, spec 10): scores trajectories with named or
// inline rubrics, and groups of rollouts with group-relative advantages.
import {
  ListRubricsRequest,
  type ListRubricsResponse,
  type RewardResult,
  RubricServiceClient,
  RubricSpec,
  ScoreGroupRequest,
  type ScoreGroupResponse,
  ScoreTrajectoryRequest,
  type ScoreTrajectoryResponse,
} from "../gen/rollmesh/v1/rubric.js";
import { type DeepPartial, Trajectory } from "../gen/rollmesh/v1/trajectory.js";
import { type CallOptions, channelArgs, checkTimeout, type ClientOptions, DEFAULT_TIMEOUT_S, unary } from "./call.js";

/** A trajectory as callers write it: usually `messages` (prompt included) and `task: { answer }`. */
export type TrajectoryInit = DeepPartial<Trajectory>;
/** A rubric: a configured rubric's name, or an inline spec ({ name, functions: [{ name, function, weight, params }] }). */
export type RubricRef = string | DeepPartial<RubricSpec>;

export interface Score {
  /** Value of each weighted function that succeeded. */
  rewards: Record<string, number>;
  /** Sum of weight x value over the functions that succeeded. */
  reward: number;
  /** Weight-0 functions and the rubric's bookkeeping ("rubric/failed", "rubric/partial", "rubric/skipped"). */
  metrics: Record<string, number>;
  /** Per-function errors: that function's reward is absent, never a silent 0. */
  errors: Record<string, string>;
}

export class RubricClient {
  readonly stub: RubricServiceClient;
  private readonly timeoutS: number;

  /** `address` is host:port. Nothing connects before the first call. */
  constructor(
    readonly address: string,
    opts: ClientOptions = {},
  ) {
    this.stub = new RubricServiceClient(address, ...channelArgs(opts, "rubric"));
    this.timeoutS = checkTimeout(opts.timeoutS ?? DEFAULT_TIMEOUT_S);
  }

  async scoreTrajectory(rubric: RubricRef, trajectory: TrajectoryInit, opts: CallOptions = {}): Promise<Score> {
    const request: ScoreTrajectoryRequest = {
      ...rubricFields(rubric),
      trajectory: Trajectory.fromPartial(trajectory),
    };
    const r = await unary<ScoreTrajectoryResponse>(
      (md, o, cb) => this.stub.scoreTrajectory(request, md, o, cb),
      opts,
      this.timeoutS,
    );
    return toScore(r.result);
  }

  /** Scores rollouts of the same task; the advantages are in the same order. */
  async scoreGroup(
    rubric: RubricRef,
    trajectories: readonly TrajectoryInit[],
    opts: CallOptions = {},
  ): Promise<{ results: Score[]; advantages: number[] }> {
    const request: ScoreGroupRequest = {
      ...rubricFields(rubric),
      trajectories: trajectories.map((t) => Trajectory.fromPartial(t)),
    };
    const r = await unary<ScoreGroupResponse>(
      (md, o, cb) => this.stub.scoreGroup(request, md, o, cb),
      opts,
      this.timeoutS,
    );
    return { results: r.results.map(toScore), advantages: r.advantages };
  }

  /** The rubrics the server has configured. */
  async listRubrics(opts: CallOptions = {}): Promise<RubricSpec[]> {
    const r = await unary<ListRubricsResponse>(
      (md, o, cb) => this.stub.listRubrics(ListRubricsRequest.fromPartial({}), md, o, cb),
      opts,
      this.timeoutS,
    );
    return r.rubrics;
  }

  close(): void {
    this.stub.close();
  }
}

function rubricFields(rubric: RubricRef): { rubric: string; spec: RubricSpec | undefined } {
  return typeof rubric === "string"
    ? { rubric, spec: undefined }
    : { rubric: "", spec: RubricSpec.fromPartial(rubric) };
}

function toScore(result: RewardResult | undefined): Score {
  return {
    rewards: { ...result?.rewards },
    reward: result?.reward ?? 0,
    metrics: { ...result?.metrics },
    errors: { ...result?.errors },
  };
}
