/**
 * Phase (e), peak memory: the resident set of this Node process, where the benchmark driver and
 * the scheduler both run (the PostgreSQL server is another process and is not counted). Sampled
 * with process.memoryUsage().rss every 100 ms over the whole run, and per phase ("setup" is before
 * the first phase), then read once more at the end as process.resourceUsage().maxRSS, the
 * kernel's own peak.
 */
const mib = (bytes: number) => Number((bytes / 1024 / 1024).toFixed(1))

export interface MemoryResult {
  readonly sampledPeakMiB: number
  readonly maxRssMiB: number
  /** The largest V8 heap in use that a sample saw. */
  readonly heapUsedPeakMiB: number
  readonly samples: number
  readonly perPhasePeakMiB: Record<string, number>
}

export const startSampler = () => {
  let phase = "setup"
  let peak = 0
  let heapPeak = 0
  let samples = 0
  const perPhase: Record<string, number> = {}
  const sample = () => {
    const { rss, heapUsed } = process.memoryUsage()
    samples += 1
    heapPeak = Math.max(heapPeak, heapUsed)
    peak = Math.max(peak, rss)
    perPhase[phase] = Math.max(perPhase[phase] ?? 0, rss)
  }
  sample()
  const timer = setInterval(sample, 100)
  timer.unref()
  return {
    /** Samples from now on count for `name`. */
    enter: (name: string) => {
      phase = name
      sample()
    },
    stop: (): MemoryResult => {
      sample()
      clearInterval(timer)
      const perPhasePeakMiB: Record<string, number> = {}
      for (const [name, bytes] of Object.entries(perPhase)) perPhasePeakMiB[name] = mib(bytes)
      return {
        sampledPeakMiB: mib(peak),
        // maxRSS is in kibibytes.
        maxRssMiB: mib(process.resourceUsage().maxRSS * 1024),
        heapUsedPeakMiB: mib(heapPeak),
        samples,
        perPhasePeakMiB
      }
    }
  }
}
