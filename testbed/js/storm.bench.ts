// `make js-bench` (tools/pq_npm.py bench): every agents-js#934 symptom for 10 s against the
// emulator, on the pristine and the patched build. Prints one `RTRETRY_BENCH <json>` line per
// scenario; the figures go to bench/results/, never into assertions.
import type { llm } from '@livekit/agents';
import * as openai from '@livekit/agents-plugin-openai';
import { bench, describe } from 'vitest';
import { Emulator, type FaultPlan, ProcessGuard, sleep } from './emulator.js';

interface Scenario {
  name: string;
  plan: FaultPlan;
  timeoutMs?: number;
  maxSessionDuration?: number;
  probes?: boolean;
}

const WINDOW_MS = 10_000;

const SCENARIOS: Scenario[] = [
  {
    name: 'handshake HTTP 401',
    plan: { every_connection: { fault: 'RejectUpgrade', status: 401 } },
  },
  {
    name: 'handshake HTTP 500',
    plan: { every_connection: { fault: 'RejectUpgrade', status: 500 } },
  },
  {
    name: 'handshake hangs (timeout 1 s)',
    plan: { every_connection: { fault: 'HangHandshake' } },
    timeoutMs: 1000,
  },
  { name: 'accept-then-close', plan: { every_connection: { fault: 'AcceptThenClose' } } },
  { name: 'error-then-close', plan: { every_connection: { fault: 'ErrorThenClose' } } },
  { name: 'planned reconnect every 1 s', plan: {}, maxSessionDuration: 1000 },
  {
    name: 'reconnect every 100 ms, then 3 events',
    plan: {},
    maxSessionDuration: 100,
    probes: true,
  },
];

async function run(s: Scenario): Promise<Record<string, unknown>> {
  const guard = new ProcessGuard().install();
  const emu = await Emulator.start(s.plan);
  const mem0 = process.memoryUsage();
  const model = new openai.realtime.RealtimeModel({
    baseURL: emu.httpUrl,
    apiKey: emu.apiKey,
    connOptions: { maxRetry: 3, retryIntervalMs: 2000, timeoutMs: s.timeoutMs ?? 10_000 },
    ...(s.maxSessionDuration !== undefined ? { maxSessionDuration: s.maxSessionDuration } : {}),
  });
  const session = model.session() as openai.realtime.RealtimeSession;
  const errors: llm.RealtimeModelError[] = [];
  session.on('error', (ev: llm.RealtimeModelError) => errors.push(ev));
  await sleep(WINDOW_MS);
  const connections = await emu.numConnections();
  const mem1 = process.memoryUsage();
  let lost: number | null = null;
  if (s.probes) {
    const ids = ['probe_1', 'probe_2', 'probe_3'];
    for (const id of ids) {
      session.sendEvent({
        type: 'conversation.item.create',
        item: { id, type: 'message', role: 'user', content: [{ type: 'input_text', text: 'x' }] },
      } as never);
    }
    await sleep(1000);
    const r = await emu.records();
    const got = new Set(r.events.map((e) => (e.data.item as { id?: string } | undefined)?.id));
    lost = ids.filter((id) => !got.has(id)).length;
  }
  await Promise.race([session.close(), sleep(3000)]);
  await emu.close();
  guard.uninstall();
  return {
    scenario: s.name,
    connections_in_10s: connections,
    recoverable_errors: errors.filter((e) => e.recoverable).length,
    non_recoverable_errors: errors.filter((e) => !e.recoverable).length,
    uncaught: guard.uncaught.length,
    unhandled_rejections: guard.unhandled.length,
    max_listener_warnings: guard.warnings.filter((w) => w.startsWith('MaxListeners')).length,
    lost_client_events: lost,
    rss_growth_mb: Math.round((mem1.rss - mem0.rss) / 1e5) / 10,
    heap_growth_mb: Math.round((mem1.heapUsed - mem0.heapUsed) / 1e5) / 10,
  };
}

let done = false; // vitest may call a bench function more than once: the scenarios run once

describe('agents-js#934 symptoms, 10 s each', () => {
  bench(
    'all scenarios',
    async () => {
      if (done) return;
      done = true;
      for (const s of SCENARIOS) {
        console.log('RTRETRY_BENCH ' + JSON.stringify(await run(s)));
      }
    },
    { iterations: 1, warmupIterations: 0, time: 0 },
  );
});
