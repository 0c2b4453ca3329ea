// The project's one OpenAI Realtime emulator (testbed/realtime_emulator, Python), started as a
// subprocess: `python -m testbed.realtime_emulator --plan '<json>'`. The plan is the JSON form of
// a FaultPlan (testbed/realtime_emulator/plan.py, plan_from_json), so the JS tests speak the same
// fault vocabulary as the Python ones. RTRETRY_ROOT and RTRETRY_PYTHON come from tools/pq_npm.py.
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';

export type Fault = { fault: string; [field: string]: unknown };

export interface FaultPlan {
  responses?: Record<string, Fault>;
  every_response?: Fault | null;
  connections?: Record<string, Fault>;
  every_connection?: Fault | null;
  reply?: Record<string, unknown>;
  rate_limits?: Record<string, unknown>[] | null;
}

export interface ConnectionRecord {
  number: number;
  t: number;
  fault: Fault;
  outcome: 'accepted' | 'rejected' | 'unauthorized' | 'hung';
  status: number;
  closed_at: number | null;
  closed_by: 'server' | 'client' | null;
}

export interface ClientEvent {
  conn: number;
  t: number;
  type: string;
  data: Record<string, unknown>;
}

export interface Records {
  connections: ConnectionRecord[];
  events: ClientEvent[];
  num_connections: number;
}

export class Emulator {
  private constructor(
    private readonly proc: ChildProcess,
    readonly httpUrl: string,
    readonly apiKey: string,
    private readonly controlUrl: string,
  ) {}

  static async start(plan: FaultPlan = {}): Promise<Emulator> {
    const root = process.env.RTRETRY_ROOT;
    const python = process.env.RTRETRY_PYTHON;
    if (!root || !python) {
      throw new Error('RTRETRY_ROOT and RTRETRY_PYTHON must be set (run through tools/pq_npm.py)');
    }
    const proc = spawn(
      python,
      ['-m', 'testbed.realtime_emulator', '--plan', JSON.stringify(plan), '--max-seconds', '120'],
      { cwd: root, stdio: ['pipe', 'pipe', 'inherit'] },
    );
    const lines = createInterface({ input: proc.stdout! });
    const timer = setTimeout(() => proc.kill(), 10_000);
    try {
      const [first] = (await once(lines, 'line')) as [string];
      const info = JSON.parse(first) as { http_url: string; api_key: string; control_url: string };
      return new Emulator(proc, info.http_url, info.api_key, info.control_url);
    } finally {
      clearTimeout(timer);
      lines.close();
    }
  }

  async records({ events = true } = {}): Promise<Records> {
    const res = await fetch(`${this.controlUrl}/records?events=${events ? 1 : 0}`);
    return (await res.json()) as Records;
  }

  async numConnections(): Promise<number> {
    return (await this.records({ events: false })).num_connections;
  }

  /**
   * Bounded wait for a condition on the records; returns the records that satisfied it. The
   * deadline is on the monotonic clock: a test may move `Date` (fake timers).
   */
  async waitFor(
    predicate: (r: Records) => boolean,
    { timeoutMs = 5000, events = true } = {},
  ): Promise<Records | undefined> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const r = await this.records({ events });
      if (predicate(r)) return r;
      if (performance.now() > deadline) return undefined;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }

  async close(): Promise<void> {
    if (this.proc.exitCode !== null) return;
    const exited = once(this.proc, 'exit');
    this.proc.stdin!.end(); // the emulator exits when its stdin closes
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  }
}

/** Collects what must never happen: uncaught errors, unhandled rejections, listener leaks. */
export class ProcessGuard {
  readonly uncaught: string[] = [];
  readonly unhandled: string[] = [];
  readonly warnings: string[] = [];
  private readonly onUncaught = (e: Error) => this.uncaught.push(`${e.name}: ${e.message}`);
  private readonly onUnhandled = (e: unknown) => this.unhandled.push(String(e));
  private readonly onWarning = (w: Error) => this.warnings.push(`${w.name}: ${w.message}`);

  install(): this {
    process.prependListener('uncaughtException', this.onUncaught);
    process.prependListener('unhandledRejection', this.onUnhandled);
    process.on('warning', this.onWarning);
    return this;
  }

  uninstall(): void {
    process.off('uncaughtException', this.onUncaught);
    process.off('unhandledRejection', this.onUnhandled);
    process.off('warning', this.onWarning);
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
