// ListTasks page tokens (spec 5): opaque to clients, valid only for the listing that made them.
import { invalidArgument, quoted } from "./errors.js";

/** base64url of [env, split, offset], the same encoding as the Python reference server. */
export function pageToken(env: string, split: string, offset: number): string {
  return Buffer.from(JSON.stringify([env, split, offset])).toString("base64url");
}

/** The offset a token stands for: 0 for "", INVALID_PAGE_TOKEN unless it came from this listing. */
export function pageOffset(token: string, env: string, split: string, total: number): number {
  if (!token) return 0;
  try {
    const value: unknown = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
    if (Array.isArray(value) && value.length === 3 && value[0] === env && value[1] === split) {
      const offset = value[2];
      if (Number.isInteger(offset) && offset >= 0 && offset <= total) return offset as number;
    }
  } catch {
    // not base64url JSON: refused below
  }
  throw invalidArgument(
    "INVALID_PAGE_TOKEN",
    `invalid page_token ${quoted(token)} for ${quoted(env)}/${quoted(split)}; pass a previous next_page_token of the same environment and split`,
    { field: "page_token" },
  );
}
