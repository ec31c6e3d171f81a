/**
 * Where `bench:fleet`'s CPU goes: every process of an arrangement (broker
 * nodes or Mosquitto, `fleet serve`, redis-server, the device workers, and the
 * benchmark's own process, which publishes the update), read from
 * /proc/PID/stat (all threads) and process.cpuUsage(), and the whole machine's
 * busy time from /proc/stat over the same window: what the wall time is
 * bounded by on a machine of `cpus` vCPUs, and how much of it other work took.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { counterDelta } from '../simulations/link-counters.ts';

/** CPU seconds (user + system) per process of one arrangement. */
export interface CpuSplit {
  /** Broker processes: the `fleet broker` node(s), or Mosquitto. */
  brokers: number[];
  /** `fleet serve` beside Mosquitto. */
  server: number | null;
  redis: number | null;
  /** The device worker processes, together. */
  workers: number;
  /** This process (the publisher's upload and release, reading the workers' reports). */
  bench: number;
  total: number;
}

/** The whole machine over a window, CPU seconds summed over its vCPUs (/proc/stat). */
export interface MachineCpu {
  cpus: number;
  /** Busy (not idle, not waiting for I/O), every process on the machine. */
  busy: number;
  /** Time the hypervisor gave the vCPUs to someone else. */
  steal: number;
  /** busy − this arrangement's total: other people's work on the shared machine. */
  others: number;
}

/** The processes' CPU at one moment (cumulative). */
export type CpuReading = Omit<CpuSplit, 'total'>;

const USER_HZ = 100;
const round = (x: number): number => Number(x.toFixed(2));

/** Cumulative busy, idle and steal seconds of the machine, or undefined without /proc/stat. */
export function readMachine(): { busy: number; steal: number } | undefined {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = f;
    return { busy: (user + nice + system + irq + softirq) / USER_HZ, steal: steal / USER_HZ };
  } catch {
    return undefined;
  }
}

/** This process's own CPU seconds so far. */
export function benchCpuSeconds(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

const total = (r: CpuReading): number => r.brokers.reduce((x, y) => x + y, 0) + (r.server ?? 0) + (r.redis ?? 0) + r.workers + r.bench;

/** What each process used between two readings (a process started after `from` counts from 0). */
export function cpuBetween(from: CpuReading | undefined, to: CpuReading): CpuSplit {
  const sub = (a: number | null, b: number | null | undefined): number | null => (a === null ? null : round(a - (b ?? 0)));
  const split: CpuReading = {
    brokers: to.brokers.map((x, i) => round(x - (from?.brokers[i] ?? 0))),
    server: sub(to.server, from?.server),
    redis: sub(to.redis, from?.redis),
    workers: round(to.workers - (from?.workers ?? 0)),
    bench: round(to.bench - (from?.bench ?? 0)),
  };
  return { ...split, total: round(total(split)) };
}

/** The machine's busy time between two /proc/stat readings, set against this arrangement's `ours`. */
export function machineBetween(from: ReturnType<typeof readMachine>, to: ReturnType<typeof readMachine>, ours: CpuSplit): MachineCpu | null {
  if (!from || !to) return null;
  const busy = round(to.busy - from.busy);
  return { cpus: os.cpus().length, busy, steal: round(to.steal - from.steal), others: round(busy - ours.total) };
}

/** What a process asked of the kernel so far: read and write calls (/proc/PID/io) and context switches (/proc/PID/status). */
export interface Activity {
  readCalls: number;
  writeCalls: number;
  voluntarySwitches: number;
  involuntarySwitches: number;
}

/** Activity of the processes `pids`, summed (a process that is gone counts 0). */
export function activity(pids: number[]): Activity {
  const sum: Activity = { readCalls: 0, writeCalls: 0, voluntarySwitches: 0, involuntarySwitches: 0 };
  const field = (text: string, name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text)?.[1] ?? 0);
  for (const pid of pids) {
    try {
      const io = readFileSync(`/proc/${pid}/io`, 'utf8');
      const status = readFileSync(`/proc/${pid}/status`, 'utf8');
      sum.readCalls += field(io, 'syscr');
      sum.writeCalls += field(io, 'syscw');
      sum.voluntarySwitches += field(status, 'voluntary_ctxt_switches');
      sum.involuntarySwitches += field(status, 'nonvoluntary_ctxt_switches');
    } catch {
      // gone
    }
  }
  return sum;
}

/** The benchmark's CPU ledger for one arrangement: readings at the publish and at the last ack, and over the whole run. */
export class CpuLedger {
  private readonly benchAtStart = benchCpuSeconds();
  private atPublish: { cpu: CpuReading; workers: Activity; machine: ReturnType<typeof readMachine> } | undefined;
  private delivery: { cpu: CpuSplit; workers: Activity; machine: MachineCpu | null } | undefined;

  constructor(
    /** The broker side's processes (broker nodes or Mosquitto, `fleet serve`, Redis). */
    private readonly brokerSide: () => Pick<CpuReading, 'brokers' | 'server' | 'redis'>,
    /** The device worker processes (read when measured: started after the ledger). */
    private readonly workers: ReadonlyArray<{ readonly pid?: number }>,
  ) {}

  private workerPids(): number[] {
    return this.workers.map((w) => w.pid ?? 0).filter((pid) => pid > 0);
  }

  reading(): CpuReading {
    const workers = this.workerPids().reduce((x, pid) => x + cpuSeconds(pid), 0);
    return { ...this.brokerSide(), workers, bench: benchCpuSeconds() - this.benchAtStart };
  }

  publishing(): void {
    this.atPublish = { cpu: this.reading(), workers: activity(this.workerPids()), machine: readMachine() };
  }

  delivered(): void {
    const from = this.atPublish!;
    const cpu = cpuBetween(from.cpu, this.reading());
    this.delivery = { cpu, workers: counterDelta(from.workers, activity(this.workerPids())), machine: machineBetween(from.machine, readMachine(), cpu) };
  }

  /** The result's delivery fields (after `delivered`). */
  deliveryFields(): { workersDeliveryCpuSeconds: number; deliveryCpuSeconds: CpuSplit; machineDeliveryCpuSeconds: MachineCpu | null; workersDeliveryActivity: Activity; cpuBoundSeconds: number } {
    const d = this.delivery!;
    return {
      workersDeliveryCpuSeconds: d.cpu.workers,
      deliveryCpuSeconds: d.cpu,
      machineDeliveryCpuSeconds: d.machine,
      workersDeliveryActivity: d.workers,
      cpuBoundSeconds: round(d.cpu.total / os.cpus().length),
    };
  }
}

/** CPU seconds (user + system, all threads) a process has used so far, or 0 when it is gone (/proc/PID/stat). */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return round((Number(f[11]) + Number(f[12])) / USER_HZ);
  } catch {
    return 0;
  }
}
