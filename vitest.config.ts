import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Builds dist/ first when a source is newer than it (test/support/dist.ts)...
    globalSetup: ['test/support/global-setup.ts'],
    // ...so that the `fleet` children the tests start run it (bin/fleet.js): a child starts in a
    // fraction of the CPU time tsx takes to load the sources, on the two cores the suite shares.
    env: { FLEET_DIST: '1' },
    // Integration tests start brokers and device processes on 2 loaded cores; each also bounds its own waits.
    testTimeout: 90_000,
    hookTimeout: 30_000,
    pool: 'forks',
    // Three files at once on two cores: the suite waits on links, timers and child processes about half
    // the time (CI at 2 workers: 500 CPU s in 509 s of wall time), so a third worker fills the idle core
    // time (vitest 454 s → 333 s here, every test passing); each test bounds its own waits for a loaded machine.
    maxWorkers: 3,
  },
});
