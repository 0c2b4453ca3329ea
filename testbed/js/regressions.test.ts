// Regression tests for livekit/agents-js#934 (../shared/seeds/002_*.txt) on the agents-js line:
// one per reported symptom, against the project's emulator on 127.0.0.1. Each asserts the
// correct behaviour, so each fails on pristine 1.9.0 (`make js-pristine-check`) with an
// AssertionError that names the symptom, and passes on the patched build.
import { APIConnectionError, type llm, voice } from '@livekit/agents';
import * as openai from '@livekit/agents-plugin-openai';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Emulator, type FaultPlan, ProcessGuard, sleep } from './emulator.js';

interface Opened {
  emu: Emulator;
  session: openai.realtime.RealtimeSession;
  errors: llm.RealtimeModelError[];
}

let guard: ProcessGuard;
const cleanups: (() => Promise<void>)[] = [];

beforeEach(() => {
  guard = new ProcessGuard().install();
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  guard.uninstall();
  vi.useRealTimers();
});

async function open(
  plan: FaultPlan,
  {
    maxRetry = 3,
    retryIntervalMs = 50,
    timeoutMs = 1000,
    maxSessionDuration,
  }: {
    maxRetry?: number;
    retryIntervalMs?: number;
    timeoutMs?: number;
    maxSessionDuration?: number;
  } = {},
): Promise<Opened> {
  const emu = await Emulator.start(plan);
  cleanups.push(() => emu.close());
  const model = new openai.realtime.RealtimeModel({
    baseURL: emu.httpUrl,
    apiKey: emu.apiKey,
    connOptions: { maxRetry, retryIntervalMs, timeoutMs },
    ...(maxSessionDuration !== undefined ? { maxSessionDuration } : {}),
  });
  const session = model.session() as openai.realtime.RealtimeSession;
  const errors: llm.RealtimeModelError[] = [];
  session.on('error', (ev: llm.RealtimeModelError) => errors.push(ev));
  cleanups.push(() => session.close());
  return { emu, session, errors };
}

const fatal = (errors: llm.RealtimeModelError[]) => errors.filter((e) => !e.recoverable);

/** Bounded wait (monotonic clock: a test may move `Date`) for a condition. */
async function until(condition: () => boolean, windowMs: number): Promise<void> {
  const deadline = performance.now() + windowMs;
  while (!condition() && performance.now() < deadline) await sleep(20);
}

/** Wait until the session reported a non-recoverable error, or the window ends. */
async function settle(errors: llm.RealtimeModelError[], windowMs: number): Promise<void> {
  await until(() => fatal(errors).length > 0, windowMs);
  await sleep(300); // anything that would still follow a terminal error
}

/** The types of the server events the session received, in order. */
function serverEvents(session: openai.realtime.RealtimeSession): string[] {
  const types: string[] = [];
  session.on('openai_server_event_received', (ev: { type?: unknown }) => {
    types.push(String(ev?.type));
  });
  return types;
}

/**
 * Fake `Date` (timers stay real); `jump()` moves it 11 s ahead: past the 10 s after which a
 * connection that reported no failure counts as healthy.
 */
function fakeTheClock(): { jump: () => void } {
  vi.useFakeTimers({ toFake: ['Date'], shouldAdvanceTime: true });
  cleanups.push(async () => void vi.useRealTimers());
  return { jump: () => vi.setSystemTime(Date.now() + 11_000) };
}

describe('agents-js#934: OpenAI realtime connection faults', { timeout: 15_000 }, () => {
  it.each([
    ['rejected with HTTP 401', { every_connection: { fault: 'RejectUpgrade', status: 401 } }],
    ['that hangs until the connect timeout', { every_connection: { fault: 'HangHandshake' } }],
  ])('a handshake %s raises no uncaught error', async (_what, plan) => {
    const { errors } = await open(plan as FaultPlan, { maxRetry: 1, timeoutMs: 300 });
    await settle(errors, 2500);
    expect(guard.uncaught, 'uncaught error on a failed handshake').toEqual([]);
    expect(guard.unhandled, 'unhandled rejection on a failed handshake').toEqual([]);
  });

  it('a failed first handshake is retried and ends in one non-recoverable error', async () => {
    const { emu, errors } = await open(
      { every_connection: { fault: 'RejectUpgrade', status: 500 } },
      { maxRetry: 2 },
    );
    await settle(errors, 3000);
    const attempts = await emu.numConnections();
    expect(attempts, 'the first handshake failure ended the session silently').toBe(3);
    expect(fatal(errors).length, 'non-recoverable error events after max_retry').toBe(1);
  });

  it.each([
    [401, 1],
    [403, 1],
    [429, 3],
    [500, 3],
  ])('handshake HTTP %i is classified (%i attempt(s) with max_retry=2)', async (status, want) => {
    const { emu, errors } = await open(
      { every_connection: { fault: 'RejectUpgrade', status } },
      { maxRetry: 2 },
    );
    await settle(errors, 3000);
    expect(await emu.numConnections(), `connection attempts after HTTP ${status}`).toBe(want);
    expect(fatal(errors).length, `non-recoverable errors after HTTP ${status}`).toBe(1);
    expect(errors.length, `error events after HTTP ${status}: one per failed attempt`).toBe(want);
  });

  it('accept-then-close gets max_retry+1 attempts, then one non-recoverable error', async () => {
    const { emu, errors } = await open({ every_connection: { fault: 'AcceptThenClose' } });
    await settle(errors, 3000);
    const attempts = await emu.numConnections();
    expect(attempts, 'reconnect storm: attempts under accept-then-close (max_retry=3)').toBe(4);
    expect(fatal(errors).length, 'non-recoverable error events').toBe(1);
    expect(errors.length, 'error events: one per failed attempt').toBe(4);
  });

  it('a server error followed by a close is one error, and the counter is not reset', async () => {
    const { emu, errors } = await open(
      { every_connection: { fault: 'ErrorThenClose', code: 'server_error' } },
      { maxRetry: 2 },
    );
    await settle(errors, 3000);
    const attempts = await emu.numConnections();
    expect(attempts, 'attempts under error-then-close (max_retry=2)').toBe(3);
    // one recoverable error per cause (the server error, not again for its close), then the
    // one non-recoverable error that ends the session
    const recoverable = errors.filter((e) => e.recoverable).length;
    expect(recoverable, 'recoverable error events for 3 error-then-close causes').toBe(3);
    expect(fatal(errors).length, 'non-recoverable error events').toBe(1);
  });

  it('the planned reconnect at maxSessionDuration is not an error', async () => {
    const { emu, errors } = await open({}, { maxSessionDuration: 300 });
    const reconnected = await emu.waitFor((r) => r.num_connections >= 3, { events: false });
    expect(reconnected, 'the session reconnects at maxSessionDuration').toBeDefined();
    expect(
      errors.map((e) => e.error?.message),
      'planned reconnects reported as errors',
    ).toEqual([]);
  });

  it('client events after reconnects are not lost, and no listener piles up', async () => {
    const { emu, session } = await open({}, { maxSessionDuration: 100 });
    const reconnected = await emu.waitFor((r) => r.num_connections >= 13, {
      timeoutMs: 8000,
      events: false,
    });
    expect(reconnected, 'the session reconnects at maxSessionDuration').toBeDefined();
    const ids = ['probe_1', 'probe_2', 'probe_3'];
    for (const id of ids) {
      session.sendEvent({
        type: 'conversation.item.create',
        item: { id, type: 'message', role: 'user', content: [{ type: 'input_text', text: 'x' }] },
      } as never);
    }
    const got = await emu.waitFor(
      (r) => ids.every((id) => r.events.some((e) => (e.data.item as { id?: string })?.id === id)),
      { timeoutMs: 3000 },
    );
    const seen = got ? ids : [];
    expect(seen, 'client events lost after reconnects').toEqual(ids);
    expect(
      guard.warnings.filter((w) => w.startsWith('MaxListenersExceededWarning')),
      'listener growth per reconnect',
    ).toEqual([]);
  });

  it('a server frame that is not JSON is skipped, and the session goes on', async () => {
    const { emu, session } = await open({
      responses: { '1': { fault: 'Malformed', kind: 'bad_json' } },
    });
    const received = serverEvents(session);
    void session.generateReply().catch(() => undefined);
    await until(() => received.includes('response.done') || guard.uncaught.length > 0, 3000);
    expect(guard.uncaught, 'uncaught error on a server frame that is not JSON').toEqual([]);
    expect(
      received.includes('response.done'),
      'the response in flight did not go on after a server frame that is not JSON',
    ).toBe(true);
    expect(await emu.numConnections(), 'a server frame that is not JSON cost the connection').toBe(
      1,
    );
  });

  it('a server that fails early and closes after 10 s up still runs out of attempts', async () => {
    // the server sends an error at once and closes the connection only after it has been up for
    // more than 10 s by `Date` (the clock jumps once the error is in): staying up proves nothing
    // when the connection failed before the 10 s elapsed. Pristine 1.9.0 has no health rule
    // (every reconnect resets its counter), so it fails here the same way: it reconnects for
    // ever.
    const clock = fakeTheClock();
    const { emu, session, errors } = await open(
      { every_connection: { fault: 'ErrorThenClose', code: 'server_error', close_after: 0.3 } },
      { maxRetry: 2 },
    );
    session.on('error', () => clock.jump()); // after the engine took the failure's time
    await settle(errors, 4000);
    expect(
      await emu.numConnections(),
      'reconnected for ever: attempts under a server that fails early and closes after 10 s up (max_retry=2)',
    ).toBe(3);
    expect(fatal(errors).length, 'non-recoverable error events').toBe(1);
  });

  it('the planned reconnect after a healthy connection resets the attempt counter', async () => {
    // attempt 1 fails; attempt 2 completes a response (healthy) and reconnects as planned at
    // maxSessionDuration; attempts 3.. fail: the failure before the healthy period is forgotten,
    // so max_retry=1 still allows attempts 3 and 4. Pristine 1.9.0 has no attempt bound at all
    // (a close is no failure, every reconnect resets the counter): it never gives up, so the
    // count of attempts is far above 4 there.
    const { emu, session, errors } = await open(
      {
        connections: { '1': { fault: 'AcceptThenClose' }, '2': { fault: 'Healthy' } },
        every_connection: { fault: 'AcceptThenClose' },
      },
      { maxRetry: 1, maxSessionDuration: 1500 },
    );
    const received = serverEvents(session);
    await emu.waitFor((r) => r.num_connections >= 2, { events: false });
    void session.generateReply().catch(() => undefined);
    await until(() => received.includes('response.done'), 3000);
    await settle(errors, 5000);
    expect(
      await emu.numConnections(),
      'a failure from before the planned reconnect of a healthy connection still counted',
    ).toBe(4);
    expect(fatal(errors).length, 'non-recoverable error events').toBe(1);
  });

  it('a refused client event does not hide the disconnect that follows', async () => {
    // the server refuses a response.create (an active response already runs), then, later, it
    // closes the socket: the refusal is not what the close is about, so the close is reported.
    // Pristine 1.9.0 reports no close at all (a clean close is no error there).
    const { emu, session, errors } = await open({
      connections: { '1': { fault: 'AcceptThenClose', after: 1.0 } },
      responses: {
        '1': {
          fault: 'RejectCreate',
          code: 'conversation_already_has_active_response',
          type: 'invalid_request_error',
          message: 'Conversation already has an active response.',
        },
      },
    });
    void session.generateReply().catch(() => undefined);
    await emu.waitFor((r) => r.num_connections >= 2, { events: false });
    await sleep(300);
    expect(
      errors.map((e) => e.error instanceof APIConnectionError),
      'the disconnect after a refused client event was not reported',
    ).toEqual([false, true]);
  });

  it('an AgentSession whose realtime model cannot connect closes, with one error', async () => {
    const emu = await Emulator.start({ every_connection: { fault: 'RejectUpgrade', status: 500 } });
    cleanups.push(() => emu.close());
    const model = new openai.realtime.RealtimeModel({
      baseURL: emu.httpUrl,
      apiKey: emu.apiKey,
      connOptions: { maxRetry: 2, retryIntervalMs: 50, timeoutMs: 1000 },
    });
    const session = new voice.AgentSession({ llm: model });
    const closed: unknown[] = [];
    const errors: voice.ErrorEvent[] = [];
    session.on(voice.AgentSessionEventTypes.Close, (ev) => closed.push(ev));
    session.on(voice.AgentSessionEventTypes.Error, (ev) => errors.push(ev));
    cleanups.push(() => session.close());
    await session.start({ agent: new voice.Agent({ instructions: 'You are a test agent.' }) });

    await until(() => closed.length > 0, 5000);
    expect(closed.length, 'the AgentSession never closed after the connection failed').toBe(1);
    const fatalErrors = errors.filter((e) => !e.error.recoverable);
    expect(fatalErrors.length, 'non-recoverable session error events').toBe(1);
  });
});
