import assert from "node:assert/strict";
import { InFlight, queueDrained, queueFinishesRecorded, within } from "../lib/in_flight.ts";

Deno.test("InFlight.idle() waits for every tracked handler, including those started while it waits", async () => {
  const work = new InFlight();
  await work.idle(); // nothing running: at once
  const first = Promise.withResolvers<string>();
  const second = Promise.withResolvers<void>();
  const tracked = work.track(first.promise);
  assert.equal(work.size, 1);
  let idle = false;
  const waiting = work.idle().then(() => idle = true);
  first.resolve("done");
  assert.equal(await tracked, "done", "the work's own result passes through");
  // Started before the first settled has been noticed: idle() waits for it too.
  const failing = work.track(second.promise);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(idle, false);
  second.reject(new Error("handler failed"));
  await assert.rejects(failing, /handler failed/, "a rejection still reaches the caller");
  await waiting;
  assert.equal(work.size, 0);
});

Deno.test("queueFinishesRecorded() resolves on an open store and rejects on a closed one", async () => {
  const kv = await Deno.openKv(":memory:");
  await queueFinishesRecorded(kv);
  kv.close();
  await assert.rejects(queueFinishesRecorded(kv));
});

Deno.test("queueDrained() waits again for a handler the listener started while finishes were recorded", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const work = new InFlight();
    const late = Promise.withResolvers<void>();
    let commits = 0;
    // The first barrier commit stands for a message taken meanwhile: its handler starts.
    const watched = {
      atomic: () => ({
        commit: () => {
          if (++commits === 1) {
            work.track(late.promise);
            setTimeout(late.resolve, 10);
          }
          return kv.atomic().commit();
        },
      }),
    } as unknown as Deno.Kv;
    await queueDrained(watched, work);
    assert.equal(commits, 2, "a second round, after the late handler settled");
    assert.equal(work.size, 0);
  } finally {
    kv.close();
  }
});

Deno.test("within() answers the work's value in time, the fallback after, and leaves no timer", async () => {
  assert.equal(await within(Promise.resolve("done"), 10_000, "late"), "done");
  assert.equal(await within(new Promise(() => {}), 10, "late"), "late");
  await assert.rejects(within(Promise.reject(new Error("failed")), 10_000, "late"), /failed/);
  // The test's sanitizer fails it if a 10 s timer were left running.
});
