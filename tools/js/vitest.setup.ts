// As upstream's vitest.setup.ts: a silent logger (the packages' log() needs one).
import { initializeLogger } from '@livekit/agents';

initializeLogger({ pretty: false, level: 'silent' });
