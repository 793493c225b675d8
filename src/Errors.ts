/**
 * The failures a caller of pg-task can react to. Each carries the data that
 * names what went wrong; messages never contain a password.
 */
import * as Data from "effect/Data"

/** A setting is missing, malformed or out of range. */
export class ConfigError extends Data.TaggedError("ConfigError")<{
  /** Where the value came from: `server`, `environment`, `flags`. */
  readonly source: string
  /** The setting and, for `pg_task.json`, the entry and key: `pg_task.json[2].timeout`. */
  readonly path: string
  readonly reason: string
}> {
  override get message() {
    return `${this.source}: ${this.path} ${this.reason}`
  }
}

/** A database could not be reached or answered with an error. */
export class DatabaseError extends Data.TaggedError("DatabaseError")<{
  /** What was being done: `connect to admin database`, `claim tasks`. */
  readonly action: string
  /** The server's SQLSTATE, when the server answered. */
  readonly code?: string | undefined
  readonly reason: string
}> {
  override get message() {
    return `${this.action}: ${this.reason}`
  }
}

/** A target's database, role, schema or table could not be set up. */
export class TargetError extends Data.TaggedError("TargetError")<{
  /** `database/schema.table as role`, as in the logs. */
  readonly target: string
  readonly reason: string
}> {
  override get message() {
    return `target ${this.target}: ${this.reason}`
  }
}
