/**
 * Progress lines and waiting: every line carries the seconds since the run began, and every wait
 * has a time limit, so a phase whose tasks never finish reports a failure instead of hanging.
 */
const began = performance.now()

/** Prints one progress line. */
export const say = (text: string) => {
  const seconds = ((performance.now() - began) / 1000).toFixed(1).padStart(6)
  console.log(`[${seconds} s] ${text}`)
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** A phase's time limit ran out; the message says what was still missing. */
export class TimeLimit extends Error {}

export interface PollOptions<A> {
  /** Milliseconds between reads. */
  readonly every: number
  /** Give up after this many milliseconds. */
  readonly limit: number
  /** Called about every `reportEvery` milliseconds with the last value read. */
  readonly report?: ((value: A, elapsed: number) => void) | undefined
  readonly reportEvery?: number | undefined
}

export interface Polled<A> {
  readonly value: A
  /** Milliseconds from the start of polling to the read that satisfied `done`. */
  readonly elapsed: number
  /** False when the limit ran out first. */
  readonly finished: boolean
}

/** Reads until `done` holds or the limit runs out; from `since` (a performance.now()) when given. */
export const pollUntil = async <A>(
  read: () => Promise<A>,
  done: (value: A) => boolean,
  options: PollOptions<A>,
  since = performance.now()
): Promise<Polled<A>> => {
  let lastReport = performance.now()
  for (;;) {
    const value = await read()
    const now = performance.now()
    if (done(value)) return { value, elapsed: now - since, finished: true }
    if (now - since > options.limit) return { value, elapsed: now - since, finished: false }
    if (options.report && now - lastReport >= (options.reportEvery ?? 2000)) {
      options.report(value, now - since)
      lastReport = now
    }
    await sleep(options.every)
  }
}

export const round = (value: number, digits = 2) => Number(value.toFixed(digits))

export const thousands = (value: number) => value.toLocaleString("en-US")
