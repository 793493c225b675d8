/**
 * Task sessions kept open between tasks. Taking one and giving it back are
 * on every task's path, so the pool is a plain list rather than a pool with
 * a scope per loan. It sets no limit of its own: a worker never runs more
 * tasks at once than its target's `run`, nor asks for more sessions.
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"

interface Kept<S> {
  readonly session: S
  readonly scope: Scope.CloseableScope
  idleSince: number
}

export interface SessionPool<S, E> {
  /** An idle session, or a new one. */
  readonly take: Effect.Effect<S, E>
  /** Keeps the session for the next task when `reuse`, else closes it. */
  readonly giveBack: (session: S, reuse: boolean) => Effect.Effect<void>
  /**
   * Opens sessions in the background, by the pool's `openAhead`, until `n`
   * are open, lent or being opened, each kept idle for the next task; one
   * that fails to open is dropped, and the task that wants it opens its own.
   */
  readonly warm: (n: number) => Effect.Effect<void>
}

/** Idle sessions close after this long; the pool checks them on the same period. */
const idleLife = Duration.minutes(30)

/**
 * A pool of sessions made by `open`, each in a scope of its own under the
 * pool's, so that closing the pool's scope closes every session. Sessions
 * are known by `key` (their backend pid), so that a caller may wrap them.
 * Sessions opened ahead of tasks are made by `openAhead`, which may do in
 * advance what a new session's first task would otherwise wait for.
 */
export const make = <S, E>(
  open: Effect.Effect<S, E, Scope.Scope>,
  key: (session: S) => number,
  healthy: (session: S) => boolean,
  openAhead: Effect.Effect<S, E, Scope.Scope> = open
): Effect.Effect<SessionPool<S, E>, never, Scope.Scope> =>
  Effect.gen(function*() {
    // The sessions' scopes hang under one made now, so that they close
    // where the pool stands among its scope's finalizers: after whatever
    // was opened later and may still use a session, such as running tasks.
    const parent = yield* Effect.flatMap(Effect.scope, (scope) => Scope.fork(scope, ExecutionStrategy.sequential))
    const idle: Array<Kept<S>> = []
    const lent = new Map<number, Scope.CloseableScope>()
    const close = (scope: Scope.CloseableScope) => Scope.close(scope, Exit.void)

    const take = Effect.suspend((): Effect.Effect<S, E> => {
      const kept = idle.pop()
      if (kept !== undefined) {
        lent.set(key(kept.session), kept.scope)
        return Effect.succeed(kept.session)
      }
      return Effect.flatMap(Scope.fork(parent, ExecutionStrategy.sequential), (scope) =>
        Scope.extend(open, scope).pipe(
          Effect.tap((session) => Effect.sync(() => lent.set(key(session), scope))),
          Effect.onError(() => close(scope))
        ))
    })

    const keep = (session: S, scope: Scope.CloseableScope) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        idle.push({ session, scope, idleSince: now })
      })

    const pool = yield* Effect.scope
    let opening = 0
    const openIdle = Effect.flatMap(Scope.fork(parent, ExecutionStrategy.sequential), (scope) =>
      Scope.extend(openAhead, scope).pipe(
        Effect.flatMap((session) => keep(session, scope)),
        Effect.onError(() => close(scope))
      )).pipe(Effect.ignore, Effect.ensuring(Effect.sync(() => (opening -= 1))))
    const warm = (n: number) =>
      Effect.suspend(() => {
        const more = n - idle.length - lent.size - opening
        if (more <= 0) return Effect.void
        opening += more
        const opens = Array.from({ length: more }, () => openIdle)
        const all = Effect.all(opens, { concurrency: "unbounded", discard: true })
        return Effect.asVoid(Effect.forkIn(all, pool))
      })

    const giveBack = (session: S, reuse: boolean) =>
      Effect.suspend(() => {
        const scope = lent.get(key(session))
        if (scope === undefined) return Effect.void
        lent.delete(key(session))
        if (!reuse || !healthy(session)) return close(scope)
        return keep(session, scope)
      })

    yield* Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      const old = idle.filter((kept) => now - kept.idleSince >= Duration.toMillis(idleLife))
      idle.splice(0, idle.length, ...idle.filter((kept) => !old.includes(kept)))
      yield* Effect.forEach(old, (kept) => close(kept.scope), { discard: true })
    }).pipe(Effect.delay(idleLife), Effect.forever, Effect.forkScoped)

    return { take, giveBack, warm }
  })
