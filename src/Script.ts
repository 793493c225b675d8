/**
 * The language of simulated tasks: their `input` is a script the simulation
 * runs on the scheduler's clock instead of SQL, so that a task can take
 * virtual hours and still end in milliseconds under `TestClock`.
 *
 *     sleep 5 minutes; output report sent
 *     sleep 90 s; fail disk full
 *
 * Statements are separated by `;` or new lines; a line starting with `--`
 * is a comment:
 * - `sleep <n> <unit>` waits that long (units: ms, s, min, h, d and their
 *   long names);
 * - `output <text>` adds a line to the output;
 * - `fail <text>` ends the run in `FAIL` with `ERROR:  <text>`.
 *
 * A run with no `output` ends with a NULL output, as SQL that returns no
 * rows does; anything else is a syntax error, reported the way PostgreSQL
 * reports one.
 */
import * as Effect from "effect/Effect"
import { formatError } from "./Output.js"
import type { Ran } from "./Store.js"

const units: Record<string, number> = {
  ms: 1,
  millis: 1,
  millisecond: 1,
  milliseconds: 1,
  s: 1000,
  sec: 1000,
  second: 1000,
  seconds: 1000,
  m: 60_000,
  min: 60_000,
  minute: 60_000,
  minutes: 60_000,
  h: 3_600_000,
  hour: 3_600_000,
  hours: 3_600_000,
  d: 86_400_000,
  day: 86_400_000,
  days: 86_400_000
}

export type Step =
  | { readonly _tag: "Sleep"; readonly millis: number }
  | { readonly _tag: "Output"; readonly text: string }
  | { readonly _tag: "Fail"; readonly text: string }

/** The script's steps, or the error text of its first bad statement. */
export const parse = (input: string): { readonly steps: ReadonlyArray<Step> } | { readonly error: string } => {
  const steps: Array<Step> = []
  const lines = input.split("\n").filter((line) => !line.trimStart().startsWith("--"))
  for (const raw of lines.join("\n").split(/[;\n]/)) {
    const statement = raw.trim()
    if (statement === "") continue
    const [word = "", ...rest] = statement.split(/\s+/)
    const argument = statement.slice(word.length).trim()
    switch (word.toLowerCase()) {
      case "sleep": {
        const match = /^(\d+(?:\.\d+)?)\s*([a-z]+)$/i.exec(argument)
        const unit = match ? units[match[2]!.toLowerCase()] : undefined
        if (!match || unit === undefined) {
          return { error: formatError({ message: `invalid duration "${argument}" in "${statement}"` }) }
        }
        steps.push({ _tag: "Sleep", millis: Number(match[1]) * unit })
        break
      }
      case "output":
        steps.push({ _tag: "Output", text: argument })
        break
      case "fail":
        steps.push({ _tag: "Fail", text: argument })
        break
      default:
        return { error: formatError({ message: `syntax error at or near "${rest.length ? word : statement}"` }) }
    }
  }
  return { steps }
}

/**
 * Runs a script on Effect's clock. Interrupting it (timeout, STOP) ends it
 * at once, as cancelling a query does.
 */
export const run = (input: string): Effect.Effect<Ran> =>
  Effect.gen(function*() {
    const parsed = parse(input)
    if ("error" in parsed) return failed(parsed.error)
    const lines: Array<string> = []
    for (const step of parsed.steps) {
      switch (step._tag) {
        case "Sleep":
          yield* Effect.sleep(step.millis)
          break
        case "Output":
          lines.push(step.text)
          break
        case "Fail":
          return failed(formatError({ message: step.text }))
      }
    }
    return { outcome: { state: "DONE", output: lines.length ? lines.join("\n") : null, error: null }, clean: true }
  })

const failed = (error: string): Ran => ({ outcome: { state: "FAIL", output: null, error }, clean: true })
