/**
 * Testing schedules without a database: `pg-task/testing`.
 *
 * `Simulation.layer()` runs the real scheduler over an in-memory table on
 * `TestClock`; task inputs are scripts (`sleep 5 minutes; output done`,
 * `fail disk full`) that take virtual time. Plan tasks, advance the clock,
 * read back the rows.
 */
export * as MemoryStore from "./MemoryStore.js"
export * as Script from "./Script.js"
export { Simulation } from "./Simulation.js"
export type { SimulationOptions, SimulationService, TaskRow } from "./Simulation.js"
