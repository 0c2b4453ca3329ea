// `make js-bench`: reconnect storm and memory, run in a build workspace (pristine or patched)
// by tools/pq_npm.py with tsx-free vitest; prints one JSON line. Not a test: no assertion.
import type { llm } from '@livekit/agents';
import * as openai from '@livekit/agents-plugin-openai';
import { bench, describe } from 'vitest';
import { Emulator, ProcessGuard, sleep } from './emulator.js';

describe('storm', () => {
  bench(
    'accept-then-close for 10 s (max_retry=3)',
    async () => {
      const guard = new ProcessGuard().install();
      const emu = await Emulator.start({ every_connection: { kind: 'AcceptThenClose' } });
      global.gc?.();
      const rss0 = process.memoryUsage().rss;
      const model = new openai.realtime.RealtimeModel({
        baseURL: emu.httpUrl,
        apiKey: emu.apiKey,
        connOptions: { maxRetry: 3, retryIntervalMs: 2000, timeoutMs: 10000 },
      });
      const session = model.session() as openai.realtime.RealtimeSession;
      const errors: llm.RealtimeModelError[] = [];
      session.on('error', (ev: llm.RealtimeModelError) => errors.push(ev));
      await sleep(10_000);
      const connections = await emu.numConnections();
      const rss1 = process.memoryUsage().rss;
      await session.close();
      await emu.close();
      guard.uninstall();
      console.log(
        'RTRETRY_BENCH ' +
          JSON.stringify({
            connections_in_10s: connections,
            error_events: errors.length,
            non_recoverable: errors.filter((e) => !e.recoverable).length,
            uncaught: guard.uncaught.length + guard.unhandled.length,
            rss_growth_mb: Math.round(((rss1 - rss0) / 1e6) * 10) / 10,
          }),
      );
    },
    { iterations: 1, warmupIterations: 0, time: 0 },
  );
});
