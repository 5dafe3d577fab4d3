// Server reflection (v1 and v1alpha) for the EnvironmentService and the health service.
import path from "node:path";
import type { Server } from "@grpc/grpc-js";
import { loadFileDescriptorSetFromBuffer, loadSync } from "@grpc/proto-loader";
import { ReflectionService } from "@grpc/reflection";
import { protoPath as healthProtoPath } from "grpc-health-check";
import { descriptorSetBase64 } from "./gen/descriptors.js";

export function addReflection(server: Server, services: string[]): void {
  const rollmesh = loadFileDescriptorSetFromBuffer(Buffer.from(descriptorSetBase64, "base64"));
  const health = loadSync("health/v1/health.proto", { includeDirs: [path.resolve(healthProtoPath, "../../..")] });
  new ReflectionService({ ...rollmesh, ...health }, { services }).addToServer(server);
}
