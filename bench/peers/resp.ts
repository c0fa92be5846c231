/**
 * A minimal Redis client for the bench: one TCP connection, one command in flight at a
 * time (no pipelining), RESP2 replies. Lean on purpose, so that the Redis peer's load
 * generator spends as little CPU per call as it can. Also the pool's Lua scripts.
 */

/** A reply: simple or bulk string, integer, nil, array; an error reply is thrown. */
export type Reply = string | number | null | Reply[];

/** An error reply (`-ERR …`). */
export class RespError extends Error {}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const CR = 13;

/** A command as RESP: an array of bulk strings. */
export function encodeCommand(args: readonly string[]): Uint8Array {
  let text = `*${args.length}\r\n`;
  for (const arg of args) text += `$${encoder.encode(arg).length}\r\n${arg}\r\n`;
  return encoder.encode(text);
}

interface Parsed {
  value: Reply | RespError;
  next: number;
}

/** Parses one reply at `pos`, or returns null when `buf[pos..end)` does not hold all of it. */
export function parseReply(buf: Uint8Array, pos: number, end: number): Parsed | null {
  if (pos >= end) return null;
  const lineEnd = buf.indexOf(CR, pos + 1);
  if (lineEnd < 0 || lineEnd + 1 >= end) return null;
  const line = decoder.decode(buf.subarray(pos + 1, lineEnd));
  const next = lineEnd + 2;
  switch (buf[pos]) {
    case 0x2b: // +
      return { value: line, next };
    case 0x2d: // -
      return { value: new RespError(line), next };
    case 0x3a: // :
      return { value: Number(line), next };
    case 0x24: { // $
      const length = Number(line);
      if (length < 0) return { value: null, next };
      if (next + length + 2 > end) return null;
      return { value: decoder.decode(buf.subarray(next, next + length)), next: next + length + 2 };
    }
    case 0x2a: { // *
      const length = Number(line);
      if (length < 0) return { value: null, next };
      const items: Reply[] = [];
      let at = next;
      for (let i = 0; i < length; i++) {
        const item = parseReply(buf, at, end);
        if (!item) return null;
        if (item.value instanceof RespError) throw item.value;
        items.push(item.value);
        at = item.next;
      }
      return { value: items, next: at };
    }
    default:
      throw new Error(
        `not a RESP reply: ${JSON.stringify(decoder.decode(buf.subarray(pos, end)))}`,
      );
  }
}

/** One connection; `call` sends a command and reads its reply. */
export class RespConnection {
  #conn: Deno.TcpConn;
  #buf = new Uint8Array(16 * 1024);
  #end = 0;

  private constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
  }

  static async connect(port: number, hostname = "127.0.0.1"): Promise<RespConnection> {
    const conn = await Deno.connect({ hostname, port });
    conn.setNoDelay(true);
    return new RespConnection(conn);
  }

  /** Sends a pre-encoded command and reads its reply; an error reply is thrown. */
  async send(command: Uint8Array): Promise<Reply> {
    for (let written = 0; written < command.length;) {
      written += await this.#conn.write(command.subarray(written));
    }
    for (;;) {
      const parsed = parseReply(this.#buf, 0, this.#end);
      if (parsed) {
        this.#buf.copyWithin(0, parsed.next, this.#end);
        this.#end -= parsed.next;
        if (parsed.value instanceof RespError) throw parsed.value;
        return parsed.value;
      }
      if (this.#end === this.#buf.length) {
        const bigger = new Uint8Array(this.#buf.length * 2);
        bigger.set(this.#buf);
        this.#buf = bigger;
      }
      const n = await this.#conn.read(this.#buf.subarray(this.#end));
      if (n === null) throw new Error("redis closed the connection");
      this.#end += n;
    }
  }

  call(...args: string[]): Promise<Reply> {
    return this.send(encodeCommand(args));
  }

  close(): void {
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
  }
}

/** The pool's keys: free ids (a set), holders by id (a hash), the fencing counter. */
export const KEYS = { free: "pool:free", held: "pool:held", fence: "pool:fence" } as const;

/**
 * Claim: pop a free id, record its holder, return {id, INCR fencing token}; nil when
 * none is free. KEYS: free, held, fence; ARGV: holder.
 */
export const CLAIM_LUA = `
local id = redis.call('SPOP', KEYS[1])
if not id then return nil end
redis.call('HSET', KEYS[2], id, ARGV[1])
return {id, redis.call('INCR', KEYS[3])}
`;

/** Release: only by its holder; 1 when released, 0 otherwise. KEYS: free, held; ARGV: id, holder. */
export const RELEASE_LUA = `
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[1], ARGV[1])
return 1
`;
