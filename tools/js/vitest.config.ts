// Vitest for the build workspace: the node environment and timeouts the agents-js tests are
// written for, plus our regression tests (testbed/js/) copied to rtretry-tests/.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  define: {
    __PACKAGE_VERSION__: JSON.stringify(process.env.npm_package_version ?? '0.0.0-test'),
    __PACKAGE_NAME__: JSON.stringify('@livekit/agents-plugin-openai'),
  },
  test: {
    include: ['**/*.test.ts'],
    exclude: ['**/node_modules/**', '**/dist/**'],
    name: 'nodejs',
    environment: 'node',
    testTimeout: 5_000,
    setupFiles: ['./vitest.setup.ts'],
  },
});
