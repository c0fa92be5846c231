/**
 * A small terminal progress display: one line redrawn in place on a terminal, and
 * printed once, final, when the output is a pipe or a file (CI logs stay readable).
 */
const encoder = new TextEncoder();
const live = Deno.stdout.isTerminal();

/** Writes text to stdout as is. */
export function write(text: string): void {
  Deno.stdout.writeSync(encoder.encode(text));
}

/** Writes one line. */
export function line(text = ""): void {
  write(`${text}\n`);
}

/** A bar of `width` cells filled to `fraction` (0..1), with eighth-cell precision. */
export function bar(fraction: number, width = 30): string {
  const cells = Math.max(0, Math.min(1, fraction)) * width;
  const full = Math.floor(cells);
  const part = full < width ? " ▏▎▍▌▋▊▉"[Math.floor((cells - full) * 8)] : "";
  return `${"█".repeat(full)}${part}${" ".repeat(Math.max(0, width - full - part.length))}`;
}

/** A line that can be redrawn until it is done. */
export class StatusLine {
  #last = "";

  /** Redraws the line (on a terminal; elsewhere only the final text is printed). */
  update(text: string): void {
    this.#last = text;
    if (live) write(`\r\x1b[K${text}`);
  }

  /** Draws the final text and moves to the next line. */
  done(text = this.#last): void {
    write(live ? `\r\x1b[K${text}\n` : `${text}\n`);
  }
}

/** Thousands separators. */
export function n(value: number): string {
  return value.toLocaleString("en");
}
