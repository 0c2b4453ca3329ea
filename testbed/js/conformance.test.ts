// The JS half of the conformance suite: both SDKs claim the same connection rules
// (classification by code, type and upgrade status; the health rule; expiry; one error per
// cause; give-up). testbed/conformance/cases.json holds the cases, one FaultPlan each, with
// the connections and the `error` events a session must see; this file runs each case against
// the project's emulator with a bare openai RealtimeSession (no AgentSession) and compares
// both exactly. Run on the patched build only (`make js-test`), not in the pristine check.
import { APIConnectionError, APIStatusError, type llm } from '@livekit/agents';
import * as openai from '@livekit/agents-plugin-openai';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Emulator, type FaultPlan, sleep } from './emulator.js';

interface Options {
  max_retry: number;
  retry_interval_ms: number;
  timeout_ms: number;
}

interface Case {
  name: string;
  rule: string;
  plan: FaultPlan;
  settle_ms: number;
  options?: Partial<Options>;
  expect: { connections: number; errors: string[] };
}

interface Suite {
  options: Options;
  cases: Case[];
}

/** ../conformance/cases.json from testbed/js/ (this file runs from a copy in the build, so the
 * path is taken from RTRETRY_ROOT). */
function loadSuite(): { path: string; suite: Suite } {
  const root = process.env.RTRETRY_ROOT;
  if (!root) throw new Error('RTRETRY_ROOT must be set (run through tools/pq_npm.py)');
  const path = join(root, 'testbed', 'conformance', 'cases.json');
  return { path, suite: JSON.parse(readFileSync(path, 'utf8')) as Suite };
}

/** `<kind>:<recoverable|fatal>`: status = a rejected handshake, connection = a lost or timed-out
 * connection, server = any other APIError (a server `error` event, a failed response). */
function describeError(ev: llm.RealtimeModelError): string {
  const kind =
    ev.error instanceof APIStatusError
      ? 'status'
      : ev.error instanceof APIConnectionError
        ? 'connection'
        : 'server';
  return `${kind}:${ev.recoverable ? 'recoverable' : 'fatal'}`;
}

const { path, suite } = loadSuite();
const cleanups: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe(`conformance: ${path.slice(path.lastIndexOf('testbed'))}`, () => {
  it('has cases', () => {
    expect(suite.cases.length, 'cases in the conformance file').toBeGreaterThan(0);
  });

  for (const c of suite.cases) {
    it(`${c.name} (${c.rule})`, { timeout: c.settle_ms + 15_000 }, async () => {
      const options = { ...suite.options, ...c.options };
      const emu = await Emulator.start(c.plan);
      cleanups.push(() => emu.close());
      const model = new openai.realtime.RealtimeModel({
        baseURL: emu.httpUrl,
        apiKey: emu.apiKey,
        connOptions: {
          maxRetry: options.max_retry,
          retryIntervalMs: options.retry_interval_ms,
          timeoutMs: options.timeout_ms,
        },
      });
      const session = model.session() as openai.realtime.RealtimeSession;
      const errors: llm.RealtimeModelError[] = [];
      session.on('error', (ev: llm.RealtimeModelError) => errors.push(ev));
      cleanups.push(() => session.close());

      // settle: until a fatal error arrived or settle_ms passed, then 300 ms more
      const deadline = performance.now() + c.settle_ms;
      while (!errors.some((e) => !e.recoverable) && performance.now() < deadline) await sleep(20);
      await sleep(300);

      const got = {
        connections: await emu.numConnections(),
        errors: errors.map(describeError),
      };
      expect(got, `${c.name}: connections and error events`).toEqual(c.expect);
    });
  }
});
