// Test helpers: how a call failed ([status name, ErrorInfo reason]) and raw-bytes calls.
import { credentials, makeGenericClientConstructor, Metadata, type ServiceError } from "@grpc/grpc-js";
import { errorInfo, RollmeshError } from "../src/index.js";

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** ["OK", ""] when `p` resolves, else the RollmeshError's [code name, reason]. */
export async function failure(p: Promise<unknown>): Promise<[string, string]> {
  try {
    await p;
    return ["OK", ""];
  } catch (e) {
    if (!(e instanceof RollmeshError)) throw e;
    return [e.codeName, e.reason];
  }
}

/** The RollmeshError `p` rejects with (fails the test when it resolves). */
export async function rejection(p: Promise<unknown>): Promise<RollmeshError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof RollmeshError) return e;
    throw e;
  }
  throw new Error("expected the call to fail");
}

const identity = (b: Buffer) => b;

/** Sends `bytes` as the request of a unary method (e.g. "/rollmesh.v1.EnvironmentService/Describe"). */
export function rawUnary(address: string, path: string, bytes: Buffer): Promise<ServiceError | "ok"> {
  const Raw = makeGenericClientConstructor(
    {
      call: {
        path,
        requestStream: false,
        responseStream: false,
        requestSerialize: identity,
        requestDeserialize: identity,
        responseSerialize: identity,
        responseDeserialize: identity,
      },
    },
    "Raw",
  );
  const client = new Raw(address, credentials.createInsecure()) as unknown as {
    call: (req: Buffer, md: Metadata, opts: object, cb: (e: ServiceError | null) => void) => void;
    close: () => void;
  };
  return new Promise((resolve) =>
    client.call(bytes, new Metadata(), { deadline: Date.now() + 10_000 }, (e) => {
      client.close();
      resolve(e ?? "ok");
    }),
  );
}

/** Sends `bytes` as the first message of an Episode stream; resolves with how the call ended. */
export function rawEpisode(address: string, bytes: Buffer): Promise<ServiceError | "ok"> {
  const Raw = makeGenericClientConstructor(
    {
      call: {
        path: "/rollmesh.v1.EnvironmentService/Episode",
        requestStream: true,
        responseStream: true,
        requestSerialize: identity,
        requestDeserialize: identity,
        responseSerialize: identity,
        responseDeserialize: identity,
      },
    },
    "Raw",
  );
  const client = new Raw(address, credentials.createInsecure()) as unknown as {
    call: (md: Metadata, opts: object) => NodeJS.ReadWriteStream;
    close: () => void;
  };
  const call = client.call(new Metadata(), { deadline: Date.now() + 10_000 });
  return new Promise((resolve) => {
    call.on("data", () => undefined);
    call.on("error", (e: ServiceError) => {
      client.close();
      resolve(e);
    });
    call.on("end", () => {
      client.close();
      resolve("ok");
    });
    call.write(bytes);
  });
}

/** [code, reason, domain] of a raw grpc-js error. */
export function statusOf(e: ServiceError | "ok"): [number, string, string] | "ok" {
  if (e === "ok") return "ok";
  const info = errorInfo(e);
  return [e.code, info?.reason ?? "", info?.domain ?? ""];
}
