// The shape of a streamserve command; cli/main.ts finds each in cli/commands/<name>.ts.
import type { Runtime } from "../lib/runtime.js";
import type { CommandArgs } from "./args.js";

export interface Command {
  name: string;
  /** One line for `streamserve --help`. */
  summary: string;
  /** Full help: synopsis, flags, examples. */
  usage: string;
  /** Flags that take no value (besides --help, --json, --once). */
  booleans?: readonly string[];
  /** Returns the exit code. Long-running commands resolve when stopped. */
  run(args: CommandArgs, runtime: Runtime): Promise<number>;
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
