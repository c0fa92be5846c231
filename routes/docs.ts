/**
 * Interactive API docs at /docs: Scalar's API reference over the generated
 * /openapi.json. The page is served by the app; the browser loads Scalar's script
 * from a pinned CDN build.
 */
import { Scalar } from "@scalar/hono-api-reference";
import { Hono } from "hono";

/** The Scalar build the docs page loads (pinned, so the page does not change under us). */
export const SCALAR_CDN = "https://cdn.jsdelivr.net/npm/@scalar/api-reference@1.72.1";

/** The docs page. */
export function docsRoutes() {
  return new Hono().get(
    "/docs",
    Scalar({ url: "/openapi.json", pageTitle: "allot API reference", cdn: SCALAR_CDN }),
  );
}
