import assert from "node:assert/strict";
import {
  KvFileInUseError,
  localKvFile,
  lockKvFile,
  redactedKv,
  withoutKvCredentials,
} from "../lib/kv_file.ts";

Deno.test("localKvFile() names only a local file: not :memory:, a KV Connect URL or Deno's default", () => {
  assert.equal(localKvFile("/var/lib/allot/kv.sqlite"), "/var/lib/allot/kv.sqlite");
  assert.equal(localKvFile("kv.sqlite"), "kv.sqlite");
  assert.equal(localKvFile(":memory:"), null);
  assert.equal(localKvFile("https://kv.example.com/db"), null);
  assert.equal(localKvFile("http://127.0.0.1:4512"), null);
  assert.equal(localKvFile("HTTPS://kv.example.com/db"), null);
  assert.equal(localKvFile(undefined), null);
});

Deno.test("lockKvFile() lets one handle own a KV file, which Deno KV still commits to", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/kv.sqlite`;
  try {
    const owner = await lockKvFile(path);
    assert.ok(owner, "locked (not Windows)");
    // A second handle is refused even in the same process (flock is per open file).
    await assert.rejects(lockKvFile(path), (error: Error) => {
      assert.ok(error instanceof KvFileInUseError);
      assert.equal(
        error.message,
        `ALLOT_KV: "${path}" is in use by another process (one process owns one KV file: stop the other, or give this one another file)`,
      );
      return true;
    });
    // The lock is flock's, which SQLite's own locks on the same file do not see.
    using kv = await Deno.openKv(path);
    const commits = await Promise.all(
      Array.from(
        { length: 20 },
        (_, i) =>
          kv.atomic().check({ key: ["n", i], versionstamp: null }).set(["n", i], i).commit(),
      ),
    );
    assert.ok(commits.every((res) => res.ok));
    owner.close();
    const next = await lockKvFile(path);
    assert.ok(next, "free again once its owner closed it");
    next.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("redactedKv() keeps a KV Connect URL's user and password out of what is printed", () => {
  assert.equal(redactedKv("https://user:pass@kv.example.com/db"), "https://***@kv.example.com/db");
  assert.equal(redactedKv("http://token@127.0.0.1:4512/"), "http://***@127.0.0.1:4512/");
  assert.equal(redactedKv("https://kv.example.com/a@b"), "https://kv.example.com/a@b");
  assert.equal(redactedKv("/var/lib/allot/kv.sqlite"), "/var/lib/allot/kv.sqlite");
  assert.equal(redactedKv("HTTPS://user:pw@kv.example.com/"), "HTTPS://***@kv.example.com/");
  for (const password of ["kv'secret", "kv secret", 'kv"secret', "abc/def+ghi==", "a@b"]) {
    assert.equal(redactedKv(`http://kvuser:${password}@127.0.0.1:9/`), "http://***@127.0.0.1:9/");
  }
  assert.equal(redactedKv(" https://kvuser:s3cret@kv.test/ "), " https://***@kv.test/ ");
  assert.equal(redactedKv("https:/kvuser:s3cret@kv.test/db"), "https:/***@kv.test/db");
  assert.equal(redactedKv("https://kvuser:s3cret@kv.test/a@b"), "https://***@kv.test/a@b");
});

Deno.test("withoutKvCredentials() masks the URL however Deno's error spells it", () => {
  const kvPath = "https://user:hunter 2@LOCALHOST:00009/a/../";
  assert.equal(
    withoutKvCredentials(
      `cannot open ${kvPath}: failed to connect to 'https://user:hunter%202@localhost:9/': ` +
        "error sending request for url (https://user:hunter%202@localhost:9/)",
      kvPath,
    ),
    "cannot open https://***@LOCALHOST:00009/a/../: failed to connect to 'https://***@localhost:9/': " +
      "error sending request for url (https://***@localhost:9/)",
  );
  const quoted = "http://kvuser:kv'secret@127.0.0.1:9/";
  assert.equal(
    withoutKvCredentials(`failed to connect to '${quoted}' (${quoted})`, quoted),
    "failed to connect to 'http://***@127.0.0.1:9/' (http://***@127.0.0.1:9/)",
  );
});
