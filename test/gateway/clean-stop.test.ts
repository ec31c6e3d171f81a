import { describe, expect, it } from 'vitest';
import type { GatewayNode as Gateway } from '../../nodes/gateway-node.ts';
import { parseGatewayStatus } from '../../gateway/status.ts';
import { parsePresence } from '../../protocol/status.ts';
import { connect, createFixture, spawnDevice, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { SITE, startGateway } from './helpers.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
let gw: Gateway | undefined;
const own = ownAfterEach();

/** What a fresh operator sees upstream now: the retained gateway status and device presences. */
async function retainedUpstream(fx: Fixture, devices: string[]): Promise<{ gateway: string | null; presence: Map<string, string> }> {
  const t = await connect(fx, `gw-stop-read-${Math.random().toString(36).slice(2, 8)}`);
  let gateway: string | null = null;
  const presence = new Map<string, string>();
  t.onMessage((topic, payload) => {
    const p = topics.parse(topic);
    if (p?.kind === 'gatewayStatus') gateway = new TextDecoder().decode(payload);
    if (p?.kind === 'presence') presence.set(p.deviceId, new TextDecoder().decode(payload));
  });
  await t.subscribe([topics.gatewayStatus(SITE), ...devices.map((d) => topics.presence(d))], 1);
  await new Promise((r) => setTimeout(r, 700));
  await t.close();
  return { gateway, presence };
}

describe('a gateway stopped cleanly leaves no stale retained status upstream', () => {
  it('its own status says stopped, and its site devices (cut off with it) are offline upstream, with the time', async () => {
    f = own(await createFixture('gw-clean-stop'));
    gw = own(await startGateway(f));
    const watch = await StatusWatch.start(f);
    const ids = ['gs-1', 'gs-2'];
    for (const id of ids) spawnDevice(f, id, [], gw.url);
    for (const id of ids) await watch.until(id, (s) => s.state === 'idle', 60_000);
    const before = await retainedUpstream(f, ids);
    for (const id of ids) expect(parsePresence(new TextEncoder().encode(before.presence.get(id) ?? ''))?.state, id).toBe('online');
    expect(parseGatewayStatus(new TextEncoder().encode(before.gateway ?? ''))?.upstream.state).toBe('connected');

    const stoppedAt = Math.floor(Date.now() / 1000);
    await gw.close();
    gw = undefined;
    const after = await retainedUpstream(f, ids);
    const s = parseGatewayStatus(new TextEncoder().encode(after.gateway ?? ''));
    expect(s?.upstream.state).toBe('down');
    expect(s?.message).toBe('gateway stopped');
    expect(s?.downloads).toBe('idle');
    for (const id of ids) {
      const p = parsePresence(new TextEncoder().encode(after.presence.get(id) ?? ''));
      expect(p?.state, `${id}: ${after.presence.get(id)}`).toBe('offline');
      expect(p?.since ?? 0, id).toBeGreaterThanOrEqual(stoppedAt);
    }
  }, 120_000);
});
