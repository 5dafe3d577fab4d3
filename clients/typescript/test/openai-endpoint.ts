// A stand-in for the caller's OpenAI-compatible endpoint: a real HTTP server on loopback that
// records every call and answers what the test scripts (a reply, an HTTP error, or nothing).
import { createServer, type IncomingHttpHeaders, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface Call {
  path: string;
  headers: IncomingHttpHeaders;
  body: {
    model?: string;
    messages: { role: string; content: string; tool_calls?: unknown[]; tool_call_id?: string }[];
    tools?: unknown[];
  };
  /** Set when the client went away before the answer (an aborted call). */
  aborted: boolean;
}

/** The answer to one call: a chat-completion message, an HTTP status with a body, or "hang". */
export type Script = (
  call: Call,
) => { message: Record<string, unknown> } | { status: number; body: string; headers?: Record<string, string> } | "hang";

export interface Endpoint {
  /** The base URL, ending in /v1. */
  url: string;
  calls: Call[];
  script: Script;
  close(): Promise<void>;
}

export async function startEndpoint(script: Script): Promise<Endpoint> {
  const calls: Call[] = [];
  const open = new Set<ServerResponse>();
  const endpoint = { calls, script } as Endpoint;
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const call: Call = {
        path: req.url ?? "",
        headers: req.headers,
        body: JSON.parse(Buffer.concat(chunks).toString() || "{}"),
        aborted: false,
      };
      calls.push(call);
      res.on("close", () => {
        open.delete(res);
        if (!res.writableFinished) call.aborted = true;
      });
      const answer = endpoint.script(call);
      if (answer === "hang") return void open.add(res);
      if ("status" in answer) return void res.writeHead(answer.status, answer.headers).end(answer.body);
      const completion = {
        id: `chatcmpl-${calls.length}`,
        object: "chat.completion",
        choices: [{ index: 0, message: { role: "assistant", ...answer.message }, finish_reason: "stop" }],
      };
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(completion));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  endpoint.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  endpoint.close = () =>
    new Promise<void>((resolve) => {
      for (const res of open) res.destroy();
      server.close(() => resolve());
      server.closeAllConnections();
    });
  return endpoint;
}

/** A model that plays higher/lower by binary search on the feedback in the conversation it is sent. */
export const bisect: Script = (call) => {
  let [low, high] = [1, 100];
  const messages = call.body.messages;
  messages.forEach((m, i) => {
    const guess = Number(m.content);
    const feedback = messages[i + 1]?.content ?? "";
    if (m.role !== "assistant") return;
    if (feedback.startsWith("Higher")) low = guess + 1;
    if (feedback.startsWith("Lower")) high = guess - 1;
  });
  return { message: { content: String(Math.floor((low + high) / 2)) } };
};
