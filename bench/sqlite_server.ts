/**
 * The SQLite anchor — the design allot replaces: one SQLite file (WAL, synchronous=FULL),
 * a partial index on free rows, a claim and a release as one UPDATE each. Served over
 * HTTP by Hono in the same claim/release shape as allot (201 {id, secret, resource, slot,
 * fencingToken}; DELETE with Allot-Claim-Secret → 204, else 409), so the same wrk script
 * and the same checker drive it. Env: PORT, SQLITE_PATH, POOL_SIZE.
 */
import { DatabaseSync } from "node:sqlite";
import { Hono } from "hono";

interface ClaimedRow {
  id: number;
  fencing: number;
}

/** Creates the pool table with `size` free rows. */
function openPool(path: string, size: number): DatabaseSync {
  const db = new DatabaseSync(path);
  db.exec(`
    PRAGMA journal_mode=WAL;
    PRAGMA synchronous=FULL;
    CREATE TABLE pool(id INTEGER PRIMARY KEY, holder TEXT, fencing INTEGER);
    CREATE INDEX pool_free ON pool(id) WHERE holder IS NULL;
    CREATE INDEX pool_fencing ON pool(fencing);
  `);
  const insert = db.prepare("INSERT INTO pool(id, holder, fencing) VALUES (?, NULL, NULL)");
  db.exec("BEGIN");
  for (let id = 1; id <= size; id++) insert.run(id);
  db.exec("COMMIT");
  return db;
}

/** The HTTP face: POST /claim, DELETE /claim/:id, GET /healthz. */
function poolApp(db: DatabaseSync): Hono {
  // The holder column stores the claim's secret: release matches on it, as allot's secret guard does.
  const claim = db.prepare(`
    UPDATE pool SET holder = ?, fencing = (SELECT coalesce(max(fencing), 0) + 1 FROM pool)
    WHERE id IN (SELECT id FROM pool WHERE holder IS NULL LIMIT 1)
    RETURNING id, fencing`);
  const release = db.prepare("UPDATE pool SET holder = NULL WHERE id = ? AND holder = ?");
  return new Hono()
    .get("/healthz", (c) => c.json({ status: "ok" }))
    .post("/claim", async (c) => {
      const { holder } = await c.req.json();
      if (typeof holder !== "string" || holder === "") {
        return c.json({ title: "holder is required" }, 422);
      }
      const secret = crypto.randomUUID();
      const row = claim.get(secret) as ClaimedRow | undefined;
      if (!row) return c.json({ title: "no free slot" }, 503, { "Retry-After": "1" });
      const id = String(row.id);
      return c.json(
        { id, resource: id, slot: 0, fencingToken: String(row.fencing), secret, holder },
        201,
      );
    })
    .delete("/claim/:id", (c) => {
      const secret = c.req.header("allot-claim-secret") ?? "";
      const { changes } = release.run(Number(c.req.param("id")), secret);
      return changes === 1 ? c.body(null, 204) : c.json({ title: "lease lost" }, 409);
    });
}

const db = openPool(Deno.env.get("SQLITE_PATH")!, Number(Deno.env.get("POOL_SIZE")));
Deno.serve({ port: Number(Deno.env.get("PORT")) }, poolApp(db).fetch);
