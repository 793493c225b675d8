/**
 * pg-task: runs SQL that users write into a table, at the time they plan,
 * in the background, and writes back what happened.
 */
export * as Bootstrap from "./Bootstrap.js"
export * as Claimer from "./Claimer.js"
export { Clock } from "./Clock.js"
export * as Config from "./Config.js"
export { PgTaskConfig } from "./Config.js"
export * as Conninfo from "./Conninfo.js"
export { Database } from "./Database.js"
export * as Embedded from "./Embedded.js"
export { ConfigError, DatabaseError, TargetError } from "./Errors.js"
export * as Output from "./Output.js"
export * as PgStore from "./PgStore.js"
export * as PgTask from "./PgTask.js"
export { Scheduler } from "./Scheduler.js"
export { Store } from "./Store.js"
export type { Claimed, Finish, Held, Ran, StoreService, TargetStore, TaskSession, Wake } from "./Store.js"
export * as Task from "./Task.js"
export { TaskNotFoundError, Tasks, TaskSpecError, TaskTimeoutError } from "./Tasks.js"
export type { ResultOptions, TaskResult, TaskSpec, TasksOptions, TasksService } from "./Tasks.js"
