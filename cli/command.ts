// The shape of a streamserve command; cli/main.ts finds each in cli/commands/<name>.ts.
import type { Runtime } from "../lib/runtime.js";
import type { CommandArgs } from "./args.js";
import { sendJson, sendText } from "../lib/http.js";

export interface Command {
  name: string;
  /** One line for `streamserve --help`. */
  summary: string;
  /** Full help: synopsis, flags, examples. */
  usage: string;
  /**
   * Flags that take no value (besides --help, --json, --once). Every other flag the usage text
   * names takes a value; a flag it does not name is refused.
   */
  booleans?: readonly string[];
  /**
   * The command prints a table or report on stdout (for some arguments, when a function): its log
   * then shows only warnings unless --log-level or LOG_LEVEL asks for more.
   */
  printsReport?: boolean | ((args: CommandArgs) => boolean);
  /** Returns the exit code. Long-running commands resolve when stopped. */
  run(args: CommandArgs, runtime: Runtime): Promise<number>;
}

export function printsReport(command: Command, args: CommandArgs): boolean {
  return typeof command.printsReport === "function" ? command.printsReport(args) : Boolean(command.printsReport);
}

/** Resolves on the first SIGINT or SIGTERM; a second one exits at once. */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const handler = (signal: NodeJS.Signals) => {
      process.off("SIGINT", handler);
      process.off("SIGTERM", handler);
      process.once("SIGINT", () => process.exit(130));
      process.once("SIGTERM", () => process.exit(143));
      resolve(signal);
    };
    process.on("SIGINT", handler);
    process.on("SIGTERM", handler);
  });
}

/**
 * Runs a part that works in the background (features, sink, monitor) until SIGINT/SIGTERM, with /metrics and
 * /healthz (`health` under the part's name) on --http-port; then stops it. Resolves with the exit code.
 */
export async function runPartUntilSignal(
  runtime: Runtime,
  part: { name: string; health(): unknown; stop(): Promise<void> },
  onListening?: (port: number) => void,
): Promise<number> {
  runtime.http.route("GET", "/metrics", async (_req, res) => sendText(res, 200, await runtime.metrics.render(), runtime.metrics.contentType));
  runtime.http.route("GET", "/healthz", (_req, res) => sendJson(res, 200, { status: "ok", [part.name]: part.health() }));
  try {
    const port = await runtime.listenHttp();
    onListening?.(port);
  } catch (err) {
    await part.stop();
    throw new Error(`cannot listen on HTTP port ${runtime.config.httpPort} (${(err as Error).message}); pass --http-port (0 picks a free one)`);
  }
  const signal = await untilSignal();
  runtime.log.info({ signal }, `stopping the ${part.name} part`);
  await part.stop();
  return 0;
}
