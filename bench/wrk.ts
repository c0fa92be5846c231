/** Drives an HTTP server with wrk and bench/claim_release.lua, and reads back its counts. */
import { describeExit, REPO_ROOT, type Supervisor } from "./procs.ts";

/** wrk as Debian ships it. */
const WRK = "/usr/bin/wrk";
const SCRIPT = `${REPO_ROOT}bench/claim_release.lua`;

/** Where a claim/release client (wrk's Lua script or the checker) claims and releases. */
export interface ClaimTarget {
  baseUrl: string;
  claimPath: string;
  /** The claim id is appended to this for the release (DELETE). */
  releasePrefix: string;
  /** Sent as `Authorization: Bearer <token>`. */
  token: string;
}

/** wrk's load shape. */
export interface WrkLoad {
  threads: number;
  connections: number;
  seconds: number;
}

/** What one wrk run measured. Latency is wrk's: over all requests, claims and releases alike. */
export interface WrkResult {
  seconds: number;
  requests: number;
  /** 201 answers carrying an id and a secret. */
  claims: number;
  /** 204 answers. */
  releases: number;
  statuses: Record<string, number>;
  socketErrors: { connect: number; read: number; write: number; timeout: number };
  latencyMs: { p50: number; p99: number; mean: number; max: number };
  /** A few bodies of unexpected answers, prefixed by their status. */
  samples: string[];
}

/** The command line a load describes, for the report. */
export function describeLoad(load: WrkLoad): string {
  return `wrk -t${load.threads} -c${load.connections}`;
}

interface RawResult {
  durationUs: number;
  requests: number;
  claims: number;
  releases: number;
  statuses: Record<string, number>;
  socketErrors: WrkResult["socketErrors"];
  latencyUs: { p50: number; p99: number; mean: number; max: number };
  samples: string[];
}

/** Runs wrk against `target` for `load.seconds` and parses the script's WRK_RESULT line. */
export async function runWrk(
  sup: Supervisor,
  target: ClaimTarget,
  load: WrkLoad,
): Promise<WrkResult> {
  const wrk = sup.spawn("wrk", WRK, [
    `-t${load.threads}`,
    `-c${load.connections}`,
    `-d${load.seconds}s`,
    "--timeout",
    "10s",
    "-s",
    SCRIPT,
    target.baseUrl,
    "--",
    target.claimPath,
    target.releasePrefix,
    target.token,
  ]);
  const status = await wrk.done;
  const line = wrk.stdout().split("\n").find((l) => l.startsWith("WRK_RESULT "));
  if (!status.success || !line) {
    throw new Error(`wrk failed: ${describeExit(wrk)}\nstdout:\n${wrk.stdout()}`);
  }
  const raw: RawResult = JSON.parse(line.slice("WRK_RESULT ".length));
  const ms = (us: number) => us / 1000;
  return {
    seconds: raw.durationUs / 1e6,
    requests: raw.requests,
    claims: raw.claims,
    releases: raw.releases,
    statuses: raw.statuses,
    socketErrors: raw.socketErrors,
    latencyMs: {
      p50: ms(raw.latencyUs.p50),
      p99: ms(raw.latencyUs.p99),
      mean: ms(raw.latencyUs.mean),
      max: ms(raw.latencyUs.max),
    },
    samples: raw.samples,
  };
}

/** Answers that were neither expected statuses nor clean: other statuses plus socket errors. */
export function wrkErrors(result: WrkResult, expected: readonly number[]): number {
  const unexpected = Object.entries(result.statuses)
    .filter(([status]) => !expected.includes(Number(status)))
    .reduce((sum, [, n]) => sum + n, 0);
  const sockets = Object.values(result.socketErrors).reduce((sum, n) => sum + n, 0);
  return unexpected + sockets;
}
