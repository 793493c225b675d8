/**
 * Random schedules from a seed, played through a simulated scheduler, and
 * the rules every run must keep, written here from the contract rather
 * than taken from the code under test.
 */
import { Effect, Logger, LogLevel } from "effect"
import { type MemoryStore, Simulation, type TaskRow } from "../../src/testing.js"
import type { TaskSpec } from "../../src/Tasks.js"

export const minute = 60_000
export const hour = 60 * minute

/** A small, fast generator of numbers in [0, 1) (mulberry32). */
export const random = (seed: number) => {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export interface Schedule {
  readonly seed: number
  /** The target's `run`: tasks at once in the instance. */
  readonly run: number
  /** Each task's spec; `plan` in ms after the simulation's start. */
  readonly tasks: ReadonlyArray<TaskSpec & { readonly plan: number }>
  /** When a user sets a not yet ended task to `STOP`; `pick` chooses which. */
  readonly stops: ReadonlyArray<{ readonly at: number; readonly pick: number }>
  /** Tasks are planned within this; afterwards the schedule runs on for `drain`. */
  readonly horizon: number
  readonly drain: number
}

/**
 * A schedule: a few tasks in a few groups, planned within two hours, some
 * repeating (with or without drift), some with a timeout, `count` or
 * `live`, some failing, some deleted after an empty run, and up to two
 * STOPs. Each task's plan and run length end in a second of their own, so
 * that no two timers of different tasks meet by chance, where the order
 * of two fibers woken at one instant would decide.
 */
export const generate = (seed: number): Schedule => {
  const next = random(seed)
  const int = (low: number, high: number) => low + Math.floor(next() * (high - low + 1))
  const chance = (p: number) => next() < p
  const seconds = Array.from({ length: 59 }, (_, i) => i + 1).filter((s) => s !== 30)
  const second = () => seconds.splice(int(0, seconds.length - 1), 1)[0]! * 1000
  const groups = Array.from({ length: int(1, 3) }, (_, i) => ({ name: `g${i}`, max: int(1, 3) }))
  const tasks = Array.from({ length: int(1, 6) }, (_, i) => {
    const group = groups[int(0, groups.length - 1)]!
    const plan = int(0, 120) * minute + second()
    const length = chance(0.2) ? 0 : int(0, 40) * minute + second()
    const ending = next()
    const input = [
      `-- t${i}`,
      ...length > 0 ? [`sleep ${length / 1000} s`] : [],
      ...ending < 0.7 ? [`output t${i}`] : ending < 0.9 ? [`fail t${i} broke`] : []
    ].join("\n")
    const spec: TaskSpec & { plan: number } = {
      input,
      plan,
      group: group.name,
      max: chance(0.2) ? int(1, 4) : group.max,
      ...chance(0.25) && { timeout: `${int(1, 40)} minutes` },
      ...chance(0.35) && { repeat: `${int(30, 120)} minutes`, drift: chance(0.5) },
      ...chance(0.2) && { delete: true },
      ...chance(0.1) && { count: int(2, 4) },
      ...chance(0.1) && { live: `${int(30, 90)} minutes` }
    }
    return spec
  })
  const stops = Array.from({ length: int(0, 2) }, () => ({ at: int(1, 180) * minute + 30_000, pick: next() }))
    .sort((a, b) => a.at - b.at)
  return { seed, run: int(1, 4), tasks, stops, horizon: 3 * hour, drain: 5 * hour }
}

export interface Stopped {
  /** When the simulation set it to `STOP`. */
  readonly at: number
  /** The row just before. */
  readonly before: TaskRow
}

export interface Played {
  readonly start: number
  readonly rows: ReadonlyArray<TaskRow>
  readonly stopped: ReadonlyArray<Stopped>
}

const open = (row: TaskRow) => row.state === "PLAN" || row.state === "TAKE" || row.state === "WORK"

/** A row's name that does not depend on ids: its input and plan. */
export const rowKey = (row: TaskRow) => `${row.input.split("\n")[0]}@${row.plan}`

const byKey = (a: TaskRow, b: TaskRow) => rowKey(a) < rowKey(b) ? -1 : rowKey(a) > rowKey(b) ? 1 : 0

/** Plans the schedule's tasks, stops what it says when it says, and runs it to its end. */
export const play = (schedule: Schedule) =>
  Effect.gen(function*() {
    const sim = yield* Simulation
    const start = yield* sim.now
    for (const task of schedule.tasks) yield* sim.plan({ ...task, plan: new Date(start + task.plan) })
    const stopped: Array<Stopped> = []
    let now = 0
    for (const stop of schedule.stops) {
      yield* sim.advance(stop.at - now)
      now = stop.at
      const candidates = (yield* sim.rows).filter(open).sort(byKey)
      const row = candidates[Math.floor(stop.pick * candidates.length)]
      if (row !== undefined && (yield* sim.stop(row.id))) stopped.push({ at: start + now, before: row })
    }
    yield* sim.advance(schedule.horizon + schedule.drain - now)
    return { start, rows: yield* sim.rows, stopped } satisfies Played
  })

/** The plan a repeat should have, from the contract: on the grid with drift, after the stop without. */
const expectedRepeat = (parent: TaskRow) => {
  const repeat = parent.repeat!
  if (!parent.drift) return parent.stop! + repeat
  let plan = parent.plan + repeat
  while (plan <= parent.stop!) plan += repeat
  return plan
}

/**
 * The first instant after a task's plan from which, for a while, a session
 * was free and fewer than its `max` tasks of its group ran, or undefined.
 */
const roomFor = (task: TaskRow, rows: ReadonlyArray<TaskRow>, run: number) => {
  const runs = rows.filter((row) => row.start !== null)
  const instants = [...new Set([task.plan, ...runs.flatMap((row) => [row.start!, row.stop ?? Infinity])])]
    .filter((at) => at >= task.plan && at < Infinity)
    .sort((a, b) => a - b)
  for (const at of instants) {
    const running = runs.filter((row) => row.start! <= at && (row.stop ?? Infinity) > at)
    if (running.length < run && running.filter((row) => row.group === task.group).length < task.max) return at
  }
  return undefined
}

/** What went against the rules, one line each; empty when nothing did. */
export const violations = (schedule: Schedule, played: Played): ReadonlyArray<string> => {
  const found: Array<string> = []
  const { rows } = played
  const byId = new Map(rows.map((row) => [row.id, row]))
  const name = (row: TaskRow) => `task ${row.id} (${rowKey(row)})`
  for (const row of rows) {
    // Never before its plan.
    if (row.start !== null && row.start < row.plan) found.push(`${name(row)} started at ${row.start}, before its plan`)
    // A timeout bounds the run, and a timed-out run lasted exactly that.
    if (row.timeout !== null && row.timeout > 0 && row.start !== null && row.stop !== null) {
      const length = row.stop - row.start
      if (length > row.timeout) found.push(`${name(row)} ran ${length} ms, over its timeout of ${row.timeout}`)
      if (row.error?.includes("statement timeout") && length !== row.timeout) {
        found.push(`${name(row)} timed out after ${length} ms, not ${row.timeout}`)
      }
    }
    // A task due within the horizon and still waiting at the end was kept
    // out the whole time: no stretch after its plan found both a session
    // free and its group below its max. A task whose `max` is below its
    // group's busy tasks' may wait for ever; that is how `max` works.
    if (row.state === "PLAN" && row.plan <= played.start + schedule.horizon) {
      const chance = roomFor(row, rows, schedule.run)
      if (chance !== undefined) found.push(`${name(row)} was due at ${row.plan}, could have run at ${chance}, and never ran`)
    }
    if ((row.state === "TAKE" || row.state === "WORK") && row.plan <= played.start + schedule.horizon) {
      found.push(`${name(row)} is still ${row.state} at the end`)
    }
  }
  // A group's tasks running at once: never more than the largest max among them.
  const groups = new Set(rows.map((row) => row.group))
  for (const group of groups) {
    const runs = rows.filter((row) => row.group === group && row.start !== null)
    for (const { start: at } of runs) {
      const running = runs.filter((run) => run.start! <= at! && (run.stop ?? Infinity) > at!)
      if (running.length === 0) continue
      const max = Math.max(...running.map((run) => run.max))
      if (running.length > max) {
        found.push(`group ${group} ran ${running.length} tasks at ${at}, over its max of ${max}: `
          + running.map(name).join(", "))
      }
    }
  }
  // A run that ended repeats once, on the grid or after its stop as drift says;
  // a stopped task does not repeat.
  const children = new Map<string, Array<TaskRow>>()
  for (const row of rows) {
    if (row.parent !== null) children.set(row.parent, [...children.get(row.parent) ?? [], row])
  }
  for (const row of rows) {
    const next = children.get(row.id) ?? []
    const repeats = row.repeat !== null && row.repeat > 0
    if (row.state === "STOP" && next.length > 0) found.push(`${name(row)} was stopped, yet repeated`)
    if (!repeats || (row.state !== "DONE" && row.state !== "FAIL")) continue
    if (next.length !== 1) found.push(`${name(row)} ended and repeats, but has ${next.length} repeats`)
    for (const child of next) {
      const expected = expectedRepeat(row)
      if (child.plan !== expected) {
        found.push(`${name(child)} repeats ${name(row)} at ${child.plan}, not at ${expected} (drift ${row.drift})`)
      }
    }
  }
  // A STOP: a task not yet started never runs; a running one ends at once.
  for (const { at, before } of played.stopped) {
    const row = byId.get(before.id)
    if (row === undefined) continue
    if (row.state !== "STOP") found.push(`${name(row)} was stopped at ${at} but ended ${row.state}`)
    if (before.state !== "WORK" && row.start !== null) found.push(`${name(row)} was stopped at ${at}, yet started`)
    if (before.state === "WORK" && row.stop !== at) {
      found.push(`${name(row)} was stopped at ${at} while running, but ended at ${row.stop}`)
    }
  }
  return found
}

/** The rows as a user compares them: without ids, parents named by their key, in key order. */
export const comparable = (rows: ReadonlyArray<TaskRow>) => {
  const byId = new Map(rows.map((row) => [row.id, row]))
  return [...rows].sort((a, b) => byKey(a, b) || (a.start ?? -1) - (b.start ?? -1)).map((row) => ({
    key: rowKey(row),
    parent: row.parent === null ? null : rowKey(byId.get(row.parent)!),
    state: row.state,
    start: row.start,
    stop: row.stop,
    output: row.output,
    error: row.error
  }))
}

/** The seed a run starts from: `SIMULATION_SEED`, or a new one printed with any failure. */
export const baseSeed = () => {
  const given = process.env.SIMULATION_SEED
  if (given !== undefined && given !== "") {
    const seed = Number(given)
    if (!Number.isSafeInteger(seed)) throw new Error(`SIMULATION_SEED must be an integer, not "${given}"`)
    return { seed, given: true }
  }
  return { seed: Math.floor(Math.random() * 2 ** 31), given: false }
}

/** How a failing schedule is reported: its seed, how to run it again, what went wrong. */
export const report = (seed: number, problems: ReadonlyArray<string>) =>
  `schedule with seed ${seed} broke the rules; run it again with `
  + `SIMULATION_SEED=${seed} npm run test:simulation\n${problems.map((p) => `  - ${p}`).join("\n")}`

/** Plays the schedule of `seed` in memory and returns what it broke. */
export const check = (seed: number, table?: MemoryStore.MakeTable) => {
  const schedule = generate(seed)
  return play(schedule).pipe(
    Effect.map((played) => violations(schedule, played)),
    Effect.provide(Simulation.layer({ settings: { default_run: String(schedule.run) }, table })),
    Logger.withMinimumLogLevel(LogLevel.Warning),
    Effect.runPromise
  )
}

/** The report of the first of `seeds` whose schedule breaks a rule, or undefined. */
export const firstFailure = async (seeds: Iterable<number>, table?: MemoryStore.MakeTable) => {
  for (const seed of seeds) {
    const problems = await check(seed, table)
    if (problems.length > 0) return report(seed, problems)
  }
  return undefined
}
