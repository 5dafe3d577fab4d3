// grpc.health.v1 (Check and Watch), with a way to end Watch streams so they cannot hold a
// graceful shutdown open for the whole grace period.
import type { sendUnaryData, Server, ServerUnaryCall, ServerWritableStream } from "@grpc/grpc-js";
import { status as code } from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";

export const HEALTH_SERVICE = "grpc.health.v1.Health";
export type ServingStatus = "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

interface HealthRequest {
  service: string;
}
interface HealthResponse {
  status: ServingStatus;
}

export class Health {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly watchers = new Map<string, Set<ServerWritableStream<HealthRequest, HealthResponse>>>();

  set(service: string, status: ServingStatus): void {
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    for (const call of this.watchers.get(service) ?? []) call.write({ status });
  }

  closeWatches(): void {
    for (const calls of this.watchers.values()) for (const call of calls) call.end();
    this.watchers.clear();
  }

  addToServer(server: Server): void {
    server.addService(healthService, {
      Check: (call: ServerUnaryCall<HealthRequest, HealthResponse>, cb: sendUnaryData<HealthResponse>) => {
        const status = this.statuses.get(call.request.service);
        if (status) cb(null, { status });
        else cb({ code: code.NOT_FOUND, details: `unknown service "${call.request.service}"` });
      },
      Watch: (call: ServerWritableStream<HealthRequest, HealthResponse>) => {
        const service = call.request.service;
        const calls = this.watchers.get(service) ?? new Set();
        this.watchers.set(service, calls.add(call));
        call.on("cancelled", () => calls.delete(call));
        call.write({ status: this.statuses.get(service) ?? "SERVICE_UNKNOWN" });
      },
    });
  }
}
