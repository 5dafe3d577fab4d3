// Requests that do not parse reach the handler as Undecodable, so that it can answer
// INVALID_ARGUMENT (MALFORMED_REQUEST) where grpc-js would answer INTERNAL. The generated decoders
// are lenient (a nested length past the end of the bytes reads as an empty message), so the bytes
// are first checked against the schema by @bufbuild/protobuf's strict parser.
import type { ServiceDefinition } from "@grpc/grpc-js";
import { createFileRegistry, type DescMessage, fromBinary, type Registry } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { descriptorSetBase64 } from "./gen/descriptors.js";

export class Undecodable {
  constructor(readonly reason: string) {}
}

let registry: Registry | undefined;

/** The request message of a method path "/package.Service/Method", from the embedded descriptors. */
function requestSchema(path: string): DescMessage {
  registry ??= createFileRegistry(fromBinary(FileDescriptorSetSchema, Buffer.from(descriptorSetBase64, "base64")));
  const [, service = "", method = ""] = path.split("/");
  const schema = registry.getService(service)?.methods.find((m) => m.name === method)?.input;
  if (!schema) throw new Error(`no method ${path} in the embedded descriptors: run gen.sh`);
  return schema;
}

export function withLenientDecoding<D extends ServiceDefinition>(definition: D): D {
  const methods = Object.entries(definition).map(([name, method]) => {
    const decode = method.requestDeserialize;
    const schema = requestSchema(method.path);
    const requestDeserialize = (bytes: Buffer): unknown => {
      try {
        fromBinary(schema, bytes); // throws on truncated fields, illegal tags, wrong wire types
        return decode(bytes);
      } catch (e) {
        return new Undecodable(e instanceof Error ? e.message : String(e));
      }
    };
    return [name, { ...method, requestDeserialize }];
  });
  return Object.fromEntries(methods) as D;
}
