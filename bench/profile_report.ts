/**
 * What `deno task profile` prints, from what it measured: V8's CPU profile of the server's JS
 * thread, summed by module and by function over the samples where the thread was busy, and
 * each server thread's share of a core from /proc.
 */

/** The parts of a V8 `.cpuprofile` (Profiler.stop's result) read here. */
export interface CpuProfile {
  nodes: {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
  }[];
  samples: number[];
}

/** One line of a summary: a name and its share (0..1). */
export interface Share {
  name: string;
  share: number;
}

/** The JS thread's profile, summed. */
export interface ProfileSummary {
  samples: number;
  /** Share of samples where the thread ran code (not idle). */
  busy: number;
  /** Self time by module, as a share of the busy samples, largest first. */
  modules: Share[];
  /** Self time by function, as a share of the busy samples, largest first. */
  functions: Share[];
}

const IDLE = "(idle)";

/**
 * Where a frame's code comes from: an npm package, a Deno extension, one of allot's files, a
 * native op (named, since Deno KV's ops are a large share), or V8's own entries (GC, program).
 */
export function moduleOf(frame: { functionName: string; url: string }): string {
  const { url, functionName } = frame;
  if (url === "") return functionName.startsWith("op_") ? `op ${functionName}` : functionName;
  const npm = url.match(/registry\.npmjs\.org\/((?:@[^/]+\/)?[^/]+)\//);
  if (npm) return `npm:${npm[1]}`;
  if (url.startsWith("ext:")) return url.split("/")[0];
  const file = url.match(/\/((?:lib|routes|bench)\/[^/]+|[^/]+\.tsx?)$/);
  return file ? `allot:${file[1]}` : url;
}

/** A frame's file, short: `npm:hono/dist/compose.js`, `ext:core/01_core.js`, `allot:app.ts`. */
export function sourceOf(url: string): string {
  const npm = url.match(/registry\.npmjs\.org\/((?:@[^/]+\/)?[^/]+)\/[^/]+\/(.+)$/);
  if (npm) return `npm:${npm[1]}/${npm[2]}`;
  const module = moduleOf({ url, functionName: "" });
  return module.startsWith("ext:") ? url : module;
}

function ranked(counts: Map<string, number>, total: number, top: number): Share[] {
  return [...counts]
    .map(([name, n]) => ({ name, share: total === 0 ? 0 : n / total }))
    .sort((a, b) => b.share - a.share || a.name.localeCompare(b.name))
    .slice(0, top);
}

/** Sums a profile's self time by module and by function, over its busy samples. */
export function summarizeProfile(profile: CpuProfile, top = 25): ProfileSummary {
  const frames = new Map(profile.nodes.map((node) => [node.id, node.callFrame]));
  const modules = new Map<string, number>();
  const functions = new Map<string, number>();
  let busy = 0;
  for (const id of profile.samples) {
    const frame = frames.get(id);
    if (!frame || frame.functionName === IDLE) continue;
    busy++;
    const module = moduleOf(frame);
    modules.set(module, (modules.get(module) ?? 0) + 1);
    const name = frame.url === ""
      ? module
      : `${frame.functionName || "(anonymous)"} ${sourceOf(frame.url)}:${frame.lineNumber + 1}`;
    functions.set(name, (functions.get(name) ?? 0) + 1);
  }
  const samples = profile.samples.length;
  return {
    samples,
    busy: samples === 0 ? 0 : busy / samples,
    modules: ranked(modules, busy, top),
    functions: ranked(functions, busy, top),
  };
}

/** A thread's name and cumulative CPU seconds, keyed by thread id. */
export type ThreadTimes = Map<string, { name: string; seconds: number }>;

/**
 * Each thread name's share of one core over a window (threads of one name, such as V8's GC
 * helpers, summed); a thread born in the window counts from zero.
 */
export function threadShares(before: ThreadTimes, after: ThreadTimes, seconds: number): Share[] {
  const byName = new Map<string, number>();
  for (const [tid, { name, seconds: cpu }] of after) {
    const used = cpu - (before.get(tid)?.seconds ?? 0);
    if (used > 0) byName.set(name, (byName.get(name) ?? 0) + used);
  }
  return ranked(new Map([...byName].map(([name, cpu]) => [name, cpu / seconds])), 1, Infinity);
}

/** A percentage with one decimal, e.g. `12.3 %`. */
export const percent = (share: number) => `${(100 * share).toFixed(1)} %`;

/** A two-column markdown table of shares. */
export function shareTable(heading: string, shares: readonly Share[], of: string): string {
  const rows = shares.map(({ name, share }) =>
    `| ${name.replaceAll("|", "\\|")} | ${percent(share)} |`
  );
  return [`| ${heading} | ${of} |`, "| --- | ---: |", ...rows].join("\n");
}
