import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Integration tests start brokers and device processes on 2 loaded cores; each also bounds its own waits.
    testTimeout: 90_000,
    hookTimeout: 30_000,
    pool: 'forks',
    // Two cores: integration suites each start brokers and device processes.
    maxWorkers: 2,
  },
});
