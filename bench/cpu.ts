/**
 * CPU time spent, for figures that hold still better than rates on a shared machine: this
 * process's (the scheduler and the driver), and the PostgreSQL server's, summed over every
 * process named `postgres` on this machine from /proc (null where there is none to read, as for
 * a server elsewhere; the machine's other PostgreSQL servers count too, so keep them idle).
 */
import * as fs from "node:fs"

/** Clock ticks a second of /proc/<pid>/stat; 100 on Linux. */
const ticks = 100

/** Milliseconds of CPU all `postgres` processes have used, or null. */
const serverCpuMs = (): number | null => {
  let entries: Array<string>
  try {
    entries = fs.readdirSync("/proc")
  } catch {
    return null
  }
  let total = 0
  let found = false
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, "utf8")
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"))
      if (!name.startsWith("postgres")) continue
      // utime and stime, the 14th and 15th fields: the 12th and 13th after the name.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      total += Number(fields[11]) + Number(fields[12])
      found = true
    } catch {
      // A process that ended meanwhile.
    }
  }
  return found ? (total * 1000) / ticks : null
}

export interface CpuPerTask {
  /** Microseconds of this process's CPU a task. */
  readonly processUs: number
  /** Microseconds of the server's CPU a task; null where it cannot be read. */
  readonly serverUs: number | null
}

/** Starts counting; the returned function tells the CPU a task over `tasks` tasks since then. */
export const countCpu = () => {
  const process0 = process.cpuUsage()
  const server0 = serverCpuMs()
  return (tasks: number): CpuPerTask => {
    const used = process.cpuUsage(process0)
    const server1 = serverCpuMs()
    return {
      processUs: Math.round((used.user + used.system) / tasks),
      serverUs: server0 === null || server1 === null ? null : Math.round(((server1 - server0) * 1000) / tasks)
    }
  }
}
