// The shape of a streamserve command; cli/main.ts finds each in cli/commands/<name>.ts.
import type { Runtime } from "../lib/runtime.js";
import type { CommandArgs } from "./args.js";

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
