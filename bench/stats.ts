/**
 * Order statistics for the latency, punctuality and claim figures: nearest-rank percentiles over
 * the measured values, in the unit they were measured in.
 */
export interface Summary {
  readonly count: number
  readonly min: number
  readonly p50: number
  readonly p95: number
  readonly p99: number
  readonly max: number
  readonly mean: number
}

/** The nearest-rank percentile `p` (0..100) of already sorted values. */
export const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]!

export const summarize = (values: ReadonlyArray<number>): Summary => {
  const sorted = [...values].sort((a, b) => a - b)
  const sum = sorted.reduce((total, value) => total + value, 0)
  return {
    count: sorted.length,
    min: sorted[0] ?? NaN,
    p50: percentile(sorted, 50),
    p95: percentile(sorted, 95),
    p99: percentile(sorted, 99),
    max: sorted[sorted.length - 1] ?? NaN,
    mean: sorted.length === 0 ? NaN : sum / sorted.length
  }
}

/** The same summary with every figure rounded to `digits` decimals, for the JSON. */
export const rounded = (summary: Summary, digits = 3): Summary => {
  const r = (value: number) => Number.isFinite(value) ? Number(value.toFixed(digits)) : value
  return {
    count: summary.count,
    min: r(summary.min),
    p50: r(summary.p50),
    p95: r(summary.p95),
    p99: r(summary.p99),
    max: r(summary.max),
    mean: r(summary.mean)
  }
}
