import assert from "node:assert/strict";
import { Semaphore } from "../lib/semaphore.ts";

Deno.test("Semaphore", async (t) => {
  await t.step("runs at most its limit at once, the rest in arrival order", async () => {
    const semaphore = new Semaphore(2);
    const releases: Array<() => void> = [];
    const started: number[] = [];
    const tasks = [0, 1, 2, 3].map((i) =>
      semaphore.run(async () => {
        started.push(i);
        await new Promise<void>((resolve) => releases[i] = resolve);
        return i;
      })
    );
    await Promise.resolve();
    assert.deepEqual(started, [0, 1]);
    assert.equal(semaphore.waiting, 2);
    releases[1]();
    await tasks[1];
    await Promise.resolve();
    assert.deepEqual(started, [0, 1, 2]);
    releases[0]();
    releases[2]();
    await Promise.all([tasks[0], tasks[2]]);
    await Promise.resolve();
    releases[3]();
    assert.deepEqual(await Promise.all(tasks), [0, 1, 2, 3]);
    assert.equal(semaphore.waiting, 0);
  });

  await t.step(
    "a task that throws gives its place to the next and rejects its caller",
    async () => {
      const semaphore = new Semaphore(1);
      const failing = semaphore.run(() => Promise.reject(new Error("boom")));
      const next = semaphore.run(() => Promise.resolve("ran"));
      await assert.rejects(failing, /boom/);
      assert.equal(await next, "ran");
      assert.equal(await semaphore.run(() => Promise.resolve("free again")), "free again");
    },
  );
});
