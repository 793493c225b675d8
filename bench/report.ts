/**
 * The final figures: one row per figure with its value, unit and target, printed as a table and
 * written with the run's details (date, Node, PostgreSQL, CPUs, server) to bench/results.json.
 */
import * as fs from "node:fs"
import type { ClaimCase, ClaimResult } from "./claim.js"
import type { LatencyResult } from "./latency.js"
import type { MemoryResult } from "./memory.js"
import type { ProcessResult } from "./process.js"
import type { PunctualityResult } from "./punctuality.js"
import type { ThroughputResult } from "./throughput.js"

export interface Figure {
  readonly figure: string
  readonly value: number | null
  readonly unit: string
  readonly target: string
  /** Whether the target is met; null where there is no target. */
  readonly ok: boolean | null
  readonly note?: string | undefined
}

export interface Results {
  readonly throughput?: ThroughputResult | undefined
  readonly latency?: LatencyResult | undefined
  readonly punctuality?: PunctualityResult | undefined
  readonly claim?: ClaimResult | undefined
  readonly memory: MemoryResult
  readonly process?: ProcessResult | undefined
}

const figure = (name: string, value: number | null, unit: string, target = "", test?: (v: number) => boolean,
  note?: string): Figure => ({
  figure: name,
  value: value !== null && Number.isFinite(value) ? value : null,
  unit,
  target,
  ok: test === undefined ? null : value !== null && Number.isFinite(value) && test(value),
  note
})

const throughputFigures = (r: ThroughputResult | undefined): Array<Figure> => {
  const note = r === undefined ? "phase failed" : r.finished ? undefined
    : `only ${r.ended} of ${r.tasks} ended within the limit; rate of those`
  return [
    figure("throughput (commit to last DONE)", r?.tasksPerSecond ?? null, "tasks/s", ">= 10000", (v) =>
      v >= 10_000 && r!.finished, note),
    figure("throughput (max(stop) - min(start))", r?.spanTasksPerSecond ?? null, "tasks/s", "", undefined,
      note),
    figure("throughput: scheduler CPU a task", r?.cpu.processUs ?? null, "us", "", undefined,
      "this process: the scheduler and the driver"),
    figure("throughput: server CPU a task", r?.cpu.serverUs ?? null, "us", "", undefined,
      "every postgres process on this machine")
  ]
}

const latencyFigures = (r: LatencyResult | undefined): Array<Figure> => {
  const note = r === undefined ? "phase failed"
    : r.finished ? undefined
    : `${r.ran} of ${r.tasks} ran, ${r.failed} failed${r.error ? `: ${r.error}` : ""}`
  return [
    figure("latency p50", r?.latencyMs.p50 ?? null, "ms", "<= 3", (v) => v <= 3 && r!.finished, note),
    figure("latency p95", r?.latencyMs.p95 ?? null, "ms"),
    figure("latency max", r?.latencyMs.max ?? null, "ms")
  ]
}

const punctualityFigures = (r: PunctualityResult | undefined): Array<Figure> => {
  const note = r === undefined ? "phase failed" : r.finished ? undefined : `only ${r.ran} of ${r.tasks} ran`
  return [
    figure("punctuality lateness p50", r?.latenessMs.p50 ?? null, "ms"),
    figure("punctuality lateness p99", r?.latenessMs.p99 ?? null, "ms", "<= 100", (v) =>
      v <= 100 && r!.finished, note),
    figure("punctuality lateness max", r?.latenessMs.max ?? null, "ms"),
    figure("punctuality started early", r?.early ?? null, "tasks", "= 0", (v) => v === 0)
  ]
}

const memoryFigures = (p: ProcessResult | undefined, m: MemoryResult): Array<Figure> => [
  figure("scheduler peak RSS (pg-task binary)", p?.peakRssMiB ?? null, "MiB", "<= 150",
    (v) => v <= 150 && p!.finished,
    p === undefined ? "phase failed" : `VmHWM, ${p.tasks} tasks drained at ${p.tasksPerSecond} tasks/s`),
  figure("driver + scheduler peak RSS, sampled", m.sampledPeakMiB, "MiB", "", undefined, "one process"),
  figure("driver + scheduler maxRSS", m.maxRssMiB, "MiB")
]

const claimFigures = (r: ClaimResult | undefined): Array<Figure> => {
  const ratio = r === undefined ? null : Number((r.history.callMs.p50 / r.empty.callMs.p50).toFixed(2))
  const statement = (name: string, c: ClaimCase | undefined) =>
    figure(name, c?.statementMs?.p50 ?? null, "ms")
  // When the claim sends its statement within one script, only the whole call can be timed.
  const alone = r === undefined || r.empty.statementMs !== null
  return [
    figure("claim median, empty table", r?.empty.callMs.p50 ?? null, "ms"),
    figure("claim median, 1,000,000 finished rows", r?.history.callMs.p50 ?? null, "ms"),
    figure("claim median, history / empty", ratio, "x", "<= 2", (v) => v <= 2),
    figure("claim median, 100,000 due rows", r?.due.callMs.p50 ?? null, "ms"),
    ...alone
      ? [
        statement("claim statement median, empty", r?.empty),
        statement("claim statement median, 1,000,000 finished", r?.history),
        statement("claim statement median, 100,000 due", r?.due)
      ]
      : []
  ]
}

export const figures = (results: Results): Array<Figure> => [
  ...throughputFigures(results.throughput),
  ...latencyFigures(results.latency),
  ...punctualityFigures(results.punctuality),
  ...memoryFigures(results.process, results.memory),
  ...claimFigures(results.claim)
]

const verdict = (ok: boolean | null) => ok === null ? "" : ok ? "met" : "MISSED"

/** The figures as a plain-text table. */
export const table = (rows: ReadonlyArray<Figure>) => {
  const cells = rows.map((r) => [r.figure, r.value === null ? "n/a" : String(r.value), r.unit, r.target,
    verdict(r.ok), r.note ?? ""])
  const header = ["figure", "value", "unit", "target", "", "note"]
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)))
  const line = (c: ReadonlyArray<string>) =>
    c.map((cell, i) => i === 1 ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)).join("  ").trimEnd()
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...cells.map(line)].join("\n")
}

export const writeJson = (file: string, data: unknown) => {
  fs.writeFileSync(file, `${JSON.stringify(data, null, 2)}\n`)
}
