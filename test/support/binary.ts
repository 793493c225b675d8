/**
 * Runs the `pg-task` binary as a user would, and watches what it prints.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as path from "node:path"

export const binPath = path.resolve("bin/pg-task.js")

export interface Running {
  readonly child: ChildProcess
  readonly stdout: () => string
  readonly stderr: () => string
  /** Resolves with the exit code. */
  readonly exited: Promise<number | null>
  /** Resolves once the output matches, with the match. */
  readonly waitFor: (pattern: RegExp, seconds?: number) => Promise<RegExpMatchArray>
}

/** The environment without anything that names a server. */
export const cleanEnv = (extra: Record<string, string> = {}) => {
  const env: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith("PG") && key !== "DATABASE_URL") env[key] = value
  }
  return { ...env, ...extra }
}

export const runBinary = (
  args: ReadonlyArray<string>,
  options: { env?: Record<string, string>; cwd?: string } = {}
): Running => {
  const child = spawn(process.execPath, [binPath, ...args], {
    env: options.env ?? cleanEnv(),
    cwd: options.cwd,
    stdio: ["ignore", "pipe", "pipe"]
  })
  let out = ""
  let err = ""
  child.stdout!.on("data", (chunk) => (out += chunk))
  child.stderr!.on("data", (chunk) => (err += chunk))
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
  const waitFor = (pattern: RegExp, seconds = 30) =>
    new Promise<RegExpMatchArray>((resolve, reject) => {
      const deadline = Date.now() + seconds * 1000
      const check = () => {
        const match = out.match(pattern) ?? err.match(pattern)
        if (match) return resolve(match)
        if (Date.now() > deadline || child.exitCode !== null) {
          return reject(new Error(`no ${pattern} in the output:\n${out}\n${err}`))
        }
        setTimeout(check, 25)
      }
      check()
    })
  return { child, stdout: () => out, stderr: () => err, exited, waitFor }
}
