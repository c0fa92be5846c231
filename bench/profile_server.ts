/**
 * allot's main.ts under V8's sampling CPU profiler, for `deno task profile`: SIGUSR1 starts
 * sampling the JS thread, SIGUSR2 stops it and writes the profile to PROFILE_OUT (a
 * `.cpuprofile`, which Chrome DevTools opens). Environment otherwise as main.ts.
 */
import { Session } from "node:inspector";

const out = Deno.env.get("PROFILE_OUT");
if (!out) throw new Error("PROFILE_OUT must name the .cpuprofile to write");

const session = new Session();
session.connect();
const post = <T>(method: string, params: object = {}) =>
  new Promise<T>((resolve, reject) =>
    session.post(method, params, (error, result) => error ? reject(error) : resolve(result as T))
  );

/**
 * Microseconds between samples. The profiler's own thread costs CPU (about 13 % of a core at
 * 5 kHz here); 1 kHz still gives thousands of samples a second of load.
 */
const SAMPLING_US = 1000;
await post("Profiler.enable");
await post("Profiler.setSamplingInterval", { interval: SAMPLING_US });
Deno.addSignalListener("SIGUSR1", () => void post("Profiler.start"));
Deno.addSignalListener("SIGUSR2", async () => {
  const { profile } = await post<{ profile: unknown }>("Profiler.stop");
  await Deno.writeTextFile(`${out}.part`, JSON.stringify(profile));
  await Deno.rename(`${out}.part`, out); // the driver waits for the whole file
});

await import("../main.ts");
