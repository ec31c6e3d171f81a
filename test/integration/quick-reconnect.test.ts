/**
 * A reconnect the device makes itself (its connection silent while the link was up:
 * device/silence-watch.ts) costs the narrow uplink as little as it can: presence again (the
 * broker sent the last will for the dropped connection), but no shared-id check and no
 * status, since nobody took the session and the status has not changed. A connection lost
 * any other way still checks and publishes. Real broker, agent in process.
 */
import { describe, expect, it } from 'vitest';
import { createFixture, startAgent, topics, type Fixture } from '../support/harness.ts';
import { expectNoEventWithin, until } from '../support/wait.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

describe('a reconnect of our own', () => {
  it('re-publishes presence, not the status; a connection the broker dropped publishes the status again', async () => {
    f = own(await createFixture('quick-reconnect'));
    const statuses: number[] = [];
    const presences: number[] = [];
    let drop: (() => void) | undefined;
    f.broker!.aedes.on('publish', (packet, client) => {
      if (!client?.id.includes('qr-1')) return;
      drop = () => client.close();
      if (packet.topic === topics.status('qr-1')) statuses.push(Date.now());
      if (packet.topic === topics.presence('qr-1')) presences.push(Date.now());
    });
    const { transport } = await startAgent(f, 'qr-1');
    await until(() => statuses.length > 0 && presences.length > 0, { what: 'the first status and presence', timeoutMs: 20_000 });
    // Let the guard's first check settle (it needs its own status acknowledged).
    await new Promise((r) => setTimeout(r, 500));
    const s0 = statuses.length;
    const p0 = presences.length;
    expect(await transport.probe(2000)).toBe(true);
    transport.reconnect('test: silent while the link was up');
    await until(() => transport.stats().connects === 2 && presences.length > p0, { what: 'the quick reconnect and its presence', timeoutMs: 20_000 });
    await expectNoEventWithin(1500, () => statuses.length > s0, 'a status after a reconnect of our own');
    // The broker drops the connection (not our doing): the guard reads the status and it is published again.
    drop!();
    await until(() => transport.stats().connects === 3 && statuses.length > s0, { what: 'a status after the broker dropped the connection', timeoutMs: 30_000 });
  }, 60_000);
});
