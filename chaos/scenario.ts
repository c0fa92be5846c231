/**
 * What chaos and soak runs share: the regions they seed (a primary with a backup, so
 * fallback can happen), the workload over them, and the full audit after the load.
 */
import { checkHistory } from "../tests/_checker.ts";
import {
  auditClaims,
  auditDrained,
  auditPoolsWhole,
  auditStatus,
  type ChaosViolation,
} from "./audit.ts";
import type { ApiClient } from "./http.ts";
import { auditKvFile } from "./kv_audit.ts";
import { CHAOS_TOKENS, type ServerProcess } from "./server.ts";
import { Workload, type WorkloadOptions } from "./workload.ts";

/** The region claims ask for and status is reported to. */
export const PRIMARY = "iad";
/** Its backup, which serves its claims while it lags. */
const BACKUP = "fra";
/** Leases short enough that expiry happens during a run. */
const LEASE_MS = { defaultMs: 2000, maxMs: 3000 } as const;
/** Lag thresholds low enough that a backlog can switch claims to the backup. */
const LAG_MS = { enterMs: 1000, exitMs: 300 } as const;

/** Pool sizes of a scenario: resources per region (each with 1 or 2 slots). */
export interface PoolShape {
  primary: number;
  backup: number;
}

/** Ids of a region's resources. */
function resourceIds(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `res-${String(i).padStart(3, "0")}`);
}

async function admin(api: ApiClient, method: string, path: string, body: unknown): Promise<void> {
  const res = await api.call(method, path, { token: CHAOS_TOKENS.admin, body });
  if (!res.ok || res.status >= 300) throw new Error(`seeding ${path}: ${JSON.stringify(res)}`);
}

/** Creates the backup, then the primary pointing at it, and their resources (every third has 2 slots). */
export async function seedRegions(api: ApiClient, shape: PoolShape): Promise<void> {
  await admin(api, "PUT", `/v1/regions/${BACKUP}`, { lease: LEASE_MS });
  await admin(api, "PUT", `/v1/regions/${PRIMARY}`, {
    backup: BACKUP,
    lag: LAG_MS,
    lease: LEASE_MS,
  });
  const pools = [[PRIMARY, shape.primary], [BACKUP, shape.backup]] as const;
  for (const [region, count] of pools) {
    for (const [i, id] of resourceIds(count).entries()) {
      await admin(api, "PUT", `/v1/regions/${region}/resources/${id}`, {
        slots: i % 3 === 0 ? 2 : 1,
      });
    }
  }
}

/** A workload on the primary region, waiting for the server through restarts. */
export function scenarioWorkload(
  api: ApiClient,
  server: ServerProcess,
  shape: PoolShape,
  options: Omit<WorkloadOptions, "region" | "resources" | "leaseMs">,
): Workload {
  return new Workload(api, () => server.whenUp(), {
    region: PRIMARY,
    resources: resourceIds(shape.primary),
    leaseMs: [1000, LEASE_MS.maxMs],
    ...options,
  });
}

/**
 * Everything checked after the load has stopped (the server running): the history, the
 * answers, nothing acknowledged lost, the queue drained, every pool whole again; then,
 * with the server stopped, its KV file. `settleMs` bounds each wait.
 */
export async function auditRun(
  api: ApiClient,
  server: ServerProcess,
  workload: Workload,
  settleMs: number,
): Promise<ChaosViolation[]> {
  const violations: ChaosViolation[] = [
    ...checkHistory(workload.history.events).map((v) => ({ kind: v.kind, message: v.message })),
    ...workload.unexpected.map((u): ChaosViolation => ({
      kind: "unexpected-answer",
      message: `${u.what} answered ${u.status}: ${JSON.stringify(u.body)}`,
    })),
    ...await auditClaims(api, workload),
    ...await auditDrained(api, PRIMARY, settleMs),
    ...await auditStatus(api, workload, PRIMARY),
  ];
  // Every resource ready again, so that a whole pool means free == total.
  await workload.reportAllReady();
  violations.push(
    ...await auditDrained(api, PRIMARY, settleMs),
    ...await auditPoolsWhole(api, [PRIMARY, BACKUP], workload.leaseHorizon, settleMs),
    ...await auditDrained(api, BACKUP, settleMs),
  );
  await server.stop();
  violations.push(...await auditKvFile(server.kvPath, [PRIMARY, BACKUP]));
  return violations;
}
