/**
 * What pg-task counts, as Effect metrics, and the Prometheus text of them.
 * Every metric is tagged with its target and, where it applies, the group.
 */
import { Effect, Metric, MetricBoundaries, MetricKeyType, MetricState, Option } from "effect"

const seconds = MetricBoundaries.exponential({ start: 0.001, factor: 4, count: 10 })

export const tasksStarted = Metric.counter("pg_task_tasks_started_total", {
  description: "tasks that started running",
  incremental: true
})
export const tasksFinished = Metric.counter("pg_task_tasks_finished_total", {
  description: "tasks that ended, by state",
  incremental: true
})
export const tasksFailed = Metric.counter("pg_task_tasks_failed_total", {
  description: "tasks that ended FAIL",
  incremental: true
})
export const tasksReset = Metric.counter("pg_task_tasks_reset_total", {
  description: "tasks of dead workers put back to PLAN",
  incremental: true
})
export const tasksRunning = Metric.gauge("pg_task_tasks_running", { description: "tasks running now" })
export const lateness = Metric.histogram(
  "pg_task_task_lateness_seconds",
  seconds,
  "from a task's plan to its start"
)
export const duration = Metric.histogram("pg_task_task_duration_seconds", seconds, "from a task's start to its stop")

const escape = (value: string) => value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, "\\\"")

const labels = (tags: ReadonlyArray<{ key: string; value: string }>, extra: Record<string, string> = {}) => {
  const all = [...tags.map((tag) => [tag.key, tag.value] as const), ...Object.entries(extra)]
  return all.length === 0 ? "" : `{${all.map(([key, value]) => `${key}="${escape(value)}"`).join(",")}}`
}

/** Every pg-task metric in Prometheus' text exposition format. */
export const prometheus = Effect.map(Metric.snapshot, (pairs) => {
  const families = new Map<string, { type: string; help: string; lines: Array<string> }>()
  for (const { metricKey: key, metricState: state } of pairs) {
    if (!key.name.startsWith("pg_task_")) continue
    const tags = key.tags.map((tag) => ({ key: tag.key, value: tag.value }))
    const help = Option.getOrElse(key.description, () => key.name)
    const family = (type: string) => {
      let found = families.get(key.name)
      if (found === undefined) {
        found = { type, help, lines: [] }
        families.set(key.name, found)
      }
      return found.lines
    }
    if (MetricState.isCounterState(state)) {
      family("counter").push(`${key.name}${labels(tags)} ${Number(state.count)}`)
    } else if (MetricState.isGaugeState(state)) {
      family("gauge").push(`${key.name}${labels(tags)} ${Number(state.value)}`)
    } else if (MetricState.isHistogramState(state) && MetricKeyType.isHistogramKey(key.keyType)) {
      const lines = family("histogram")
      for (const [bound, count] of state.buckets) {
        const le = Number.isFinite(bound) ? String(bound) : "+Inf"
        lines.push(`${key.name}_bucket${labels(tags, { le })} ${count}`)
      }
      if (!state.buckets.some(([bound]) => !Number.isFinite(bound))) {
        lines.push(`${key.name}_bucket${labels(tags, { le: "+Inf" })} ${state.count}`)
      }
      lines.push(`${key.name}_sum${labels(tags)} ${state.sum}`)
      lines.push(`${key.name}_count${labels(tags)} ${state.count}`)
    }
  }
  const text: Array<string> = []
  for (const [name, { type, help, lines }] of families) {
    text.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`, ...lines)
  }
  return text.join("\n") + "\n"
})
