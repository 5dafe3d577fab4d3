// Requests that do not parse reach the handler as Undecodable, so it can answer INVALID_ARGUMENT
// (grpc-js itself would answer INTERNAL), as the Python reference server does.
import type { ServiceDefinition } from "@grpc/grpc-js";

export class Undecodable {
  constructor(readonly reason: string) {}
}

export function withLenientDecoding<D extends ServiceDefinition>(definition: D): D {
  const methods = Object.entries(definition).map(([name, method]) => {
    const decode = method.requestDeserialize;
    const requestDeserialize = (bytes: Buffer): unknown => {
      try {
        return decode(bytes);
      } catch (e) {
        return new Undecodable(e instanceof Error ? e.message : String(e));
      }
    };
    return [name, { ...method, requestDeserialize }];
  });
  return Object.fromEntries(methods) as D;
}
