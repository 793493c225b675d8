/**
 * Sessions to remote databases, kept for reuse: up to four idle per
 * connection string, each closed after a minute unused. Opening one is
 * interruptible, so a task's timeout or a STOP cuts a hung connect short;
 * a pool that waits for its connections could not be interrupted there.
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as Conninfo from "../Conninfo.js"
import { formatError } from "../Output.js"
import * as Session from "./session.js"

const keptIdle = 4
const idleLife = 60_000

interface Kept {
  readonly session: Session.Session
  readonly close: Effect.Effect<void>
  readonly since: number
}

/** A session to a remote for one task; set `reuse` when the task left it clean. */
export interface Lease {
  readonly session: Session.Session
  reuse: boolean
}

export interface Remotes {
  /** A session to `remote`, kept for the next task when the lease says so, else closed. */
  readonly lease: (remote: string) => Effect.Effect<Lease, Session.TaskFailure, Scope.Scope>
}

const connect = (remote: string) =>
  Effect.gen(function*() {
    const info = yield* Effect.mapError(
      Conninfo.parse(remote),
      (error) => new Session.TaskFailure(formatError({ message: `invalid remote: ${error.message}` }))
    )
    return yield* Session.open(Conninfo.toClientConfig(info), "connect to the remote").pipe(
      Effect.mapError((error) =>
        new Session.TaskFailure(formatError({ message: `could not connect to the remote: ${error.reason}` }))
      )
    )
  })

/** The remotes of one worker; every kept session is closed with the worker's scope. */
export const make = Effect.gen(function*() {
  const scope = yield* Effect.scope
  const idle = new Map<string, Array<Kept>>()
  yield* Effect.addFinalizer(() =>
    Effect.forEach([...idle.values()].flat(), (kept) => kept.close, { discard: true }))

  const open = (remote: string) =>
    Effect.gen(function*() {
      const own = yield* Scope.fork(scope, ExecutionStrategy.sequential)
      const close = Scope.close(own, Exit.void)
      const session = yield* connect(remote).pipe(Scope.extend(own), Effect.onError(() => close))
      return { session, close }
    })

  /** An idle session still usable, closing those that waited too long. */
  const reuse = (remote: string, now: number) =>
    Effect.gen(function*() {
      const kept = idle.get(remote) ?? []
      const fresh = kept.filter((entry) => now - entry.since < idleLife && entry.session.isHealthy())
      yield* Effect.forEach(kept.filter((entry) => !fresh.includes(entry)), (entry) => entry.close)
      const found = fresh.pop()
      idle.set(remote, fresh)
      return found
    })

  // Not acquireRelease: its acquisition cannot be interrupted, and a
  // connect that hangs must be.
  const lease: Remotes["lease"] = (remote) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        const found = yield* reuse(remote, yield* Clock.currentTimeMillis)
        const entry = found ?? (yield* restore(open(remote)))
        const lease: Lease = { session: entry.session, reuse: false }
        yield* Effect.addFinalizer((exit) =>
          Effect.gen(function*() {
            const kept = idle.get(remote) ?? []
            if (Exit.isSuccess(exit) && lease.reuse && kept.length < keptIdle) {
              kept.push({ ...entry, since: yield* Clock.currentTimeMillis })
              idle.set(remote, kept)
            } else {
              yield* entry.close
            }
          }))
        return lease
      })
    )

  const remotes: Remotes = { lease }
  return remotes
})
