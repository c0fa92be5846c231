/** GET /v1/stats: this isolate's group-commit and status-apply counters (admin). */
import { createRoute, z } from "@hono/zod-openapi";
import type { ApplyStats } from "../lib/applier.ts";
import type { GroupStats } from "../lib/group.ts";
import type { EnderStats } from "../lib/ender.ts";
import type { RenewerStats } from "../lib/renewer.ts";
import { allow, bearerSecurity, newRouter, problems } from "./_shared.ts";

const Stats = z.object({
  claims: z.object({
    commits: z.number().int(),
    claims: z.number().int(),
    alone: z.number().int().openapi({ description: "Claims allocated outside a group." }),
    failedGroups: z.number().int(),
  }),
  releases: z.object({
    commits: z.number().int(),
    ended: z.number().int(),
    alone: z.number().int(),
  }),
  renews: z.object({
    commits: z.number().int(),
    renewed: z.number().int(),
    alone: z.number().int().openapi({
      description:
        "Renews settled outside a group (past expiry, resource gone, an Idempotency-Key to write again, a failed group).",
    }),
  }),
  status: z.object({
    commits: z.number().int(),
    updates: z.number().int(),
    effective: z.number().int(),
    messages: z.number().int(),
    conflicts: z.number().int(),
    deferred: z.number().int().openapi({
      description:
        "Status deliveries put back in the queue because this isolate held as many of their region's as it may (32; 1,024 of all regions).",
    }),
  }).nullable().openapi({ description: "Null when this isolate runs no queue consumer." }),
}).openapi("Stats");

const statsRoute = createRoute({
  method: "get",
  path: "/v1/stats",
  operationId: "getStats",
  tags: ["health"],
  summary: "This isolate's commit counters (admin)",
  description:
    "**Roles:** admin, not region-scoped (the counters span every region). Counters since this isolate started: claims, releases and renews per group commit, status updates per apply commit. Per isolate, not global: for dashboards and benchmarks.",
  security: bearerSecurity,
  middleware: [allow(["admin"], "unscoped")],
  responses: {
    200: {
      description: "Counters",
      content: {
        "application/json": {
          schema: Stats,
          example: {
            claims: { commits: 412, claims: 9650, alone: 3, failedGroups: 0 },
            releases: { commits: 390, ended: 9611, alone: 0 },
            renews: { commits: 52, renewed: 1210, alone: 1 },
            status: {
              commits: 120,
              updates: 10800,
              effective: 10790,
              messages: 225,
              conflicts: 0,
              deferred: 0,
            },
          },
        },
      },
    },
    ...problems(401, 403),
  },
});

/** Sources of the counters. */
export interface StatsSources {
  claims: { stats: GroupStats };
  releases: { stats: EnderStats };
  renews: { stats: RenewerStats };
  status?: { stats: ApplyStats };
}

/** Stats routes. */
export function statsRoutes(sources: StatsSources) {
  return newRouter().openapi(statsRoute, (c) => {
    return c.json({
      claims: { ...sources.claims.stats },
      releases: { ...sources.releases.stats },
      renews: { ...sources.renews.stats },
      status: sources.status ? { ...sources.status.stats } : null,
    }, 200);
  });
}
