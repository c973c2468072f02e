/**
 * An app module for the CLI tests whose app sets its own logger: one line per message on
 * standard output, `app-logger <level>: <message>`. Same app id and tasks as `_cli_app.ts`.
 */
import { Nenc } from "../core/app.ts";
import type { Logger } from "../core/log.ts";
import { APP_ID, defineTasks } from "./_cli_app.ts";

const line = (level: string) => (message: string): void =>
  console.log(`app-logger ${level}: ${message}`);
const logger: Logger = {
  debug: () => {},
  info: line("info"),
  warn: line("warn"),
  error: line("error"),
};

const app = new Nenc({ appId: APP_ID, logger });
defineTasks(app);
export default app;
