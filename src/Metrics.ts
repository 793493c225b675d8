/**
 * What pg-task counts, as Effect metrics, and the Prometheus text of them.
 * Every metric is tagged with its target and, where it applies, the group.
 */
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as MetricKey from "effect/MetricKey"
import * as MetricLabel from "effect/MetricLabel"
import * as MetricKeyType from "effect/MetricKeyType"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"

const seconds = MetricBoundaries.exponential({ start: 0.001, factor: 4, count: 10 })

const keys = {
  started: MetricKey.counter("pg_task_tasks_started_total", {
    description: "tasks that started running",
    incremental: true
  }),
  finished: MetricKey.counter("pg_task_tasks_finished_total", {
    description: "tasks that ended, by state",
    incremental: true
  }),
  failed: MetricKey.counter("pg_task_tasks_failed_total", {
    description: "tasks that ended FAIL",
    incremental: true
  }),
  lateness: MetricKey.histogram("pg_task_task_lateness_seconds", seconds, "from a task's plan to its start"),
  duration: MetricKey.histogram("pg_task_task_duration_seconds", seconds, "from a task's start to its stop")
}

export const tasksReset = Metric.counter("pg_task_tasks_reset_total", {
  description: "tasks of dead workers put back to PLAN",
  incremental: true
})
const runningKey = MetricKey.gauge("pg_task_tasks_running", { description: "tasks running now" })

/** The gauge of a target's running tasks. */
export const tasksRunning = (target: string) => tagged(runningKey, { target })

/**
 * The task metrics of one target and group, with their tags in their keys:
 * `Metric.tagged` builds and hashes a new key on every update, which costs
 * more than the rest of a short task's bookkeeping in this process.
 */
export interface GroupMetrics {
  readonly started: Metric.Metric.Counter<number>
  readonly finished: Readonly<Record<"DONE" | "FAIL", Metric.Metric.Counter<number>>>
  readonly failed: Metric.Metric.Counter<number>
  readonly lateness: Metric.Metric.Histogram<number>
  readonly duration: Metric.Metric.Histogram<number>
}

const tagged = <Type extends MetricKeyType.MetricKeyType<any, any>>(
  key: MetricKey.MetricKey<Type>,
  tags: Record<string, string>
) => Metric.fromMetricKey(MetricKey.taggedWithLabels(key, Object.entries(tags).map(([k, v]) => MetricLabel.make(k, v))))

/** By target, then group: looked up twice a task, so without building a key. */
const groupMetrics = new Map<string, Map<string, GroupMetrics>>()
let groupsKept = 0

/** The metrics of a target's group, made once; all forgotten at once should thousands of groups pile up. */
export const forGroup = (target: string, group: string): GroupMetrics => {
  let groups = groupMetrics.get(target)
  let found = groups?.get(group)
  if (found !== undefined) return found
  if (groupsKept >= 10_000) {
    groupMetrics.clear()
    groupsKept = 0
  }
  groups = groupMetrics.get(target)
  if (groups === undefined) groupMetrics.set(target, groups = new Map())
  const tags = { target, group }
  found = {
    started: tagged(keys.started, tags),
    finished: {
      DONE: tagged(keys.finished, { ...tags, state: "DONE" }),
      FAIL: tagged(keys.finished, { ...tags, state: "FAIL" })
    },
    failed: tagged(keys.failed, tags),
    lateness: tagged(keys.lateness, tags),
    duration: tagged(keys.duration, tags)
  }
  groups.set(group, found)
  groupsKept += 1
  return found
}

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
