import { afterEach, describe, expect, it } from 'vitest';
import { stopChild } from '../../platform/child-process.ts';
import type { GatewayNode as Gateway } from '../../nodes/gateway-node.ts';
import { encodeStatus, type DeviceStatus } from '../../protocol/status.ts';
import { LinkProxy } from '../../simulations/link-proxy.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { createFixture, GROUP, MODEL, publish, spawnDevice, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { until } from '../support/wait.ts';
import { startGateway, untilGateway } from './helpers.ts';
import { statusFixture } from '../support/status.ts';

let f: Fixture | undefined;
let gw: Gateway | undefined;
let proxy: LinkProxy | undefined;
const siteClients: MqttTransport[] = [];
afterEach(async () => {
  for (const t of siteClients.splice(0)) await t.close();
  await Promise.all((f?.children ?? []).map((c) => stopChild(c)));
  await gw?.close();
  await proxy?.stop();
  await f?.close();
  f = undefined;
  gw = undefined;
  proxy = undefined;
});

function fakeStatus(n: number): DeviceStatus {
  return statusFixture({ device: 'seq-dev', group: GROUP, model: MODEL, running: '0'.repeat(64), message: String(n) });
}

describe('site gateway: an offline site', () => {
  it('serves what it holds while upstream is down, queues statuses on disk (across a gateway restart) and delivers them in order', async () => {
    f = await createFixture('gwoff');
    proxy = new LinkProxy({ targetHost: '127.0.0.1', targetPort: f.broker!.port });
    await proxy.start();
    gw = await startGateway(f, { groups: [GROUP] }, proxy.url);
    const port = gw.port;
    const watch = await StatusWatch.start(f);
    spawnDevice(f, 'off-1', [], gw.url);
    await watch.until('off-1', (s) => s.state === 'idle', 60_000);
    await publish(f);
    await watch.until('off-1', (s) => s.state === 'ok', 60_000);

    // The cellular link goes dark.
    proxy.takeDown();
    await untilGateway(gw, (s) => s.upstream.state === 'down', 15_000);
    const site = await MqttTransport.connect({ url: gw.url, clientId: 'seq-dev-1' }, 10_000);
    siteClients.push(site);
    for (let n = 1; n <= 10; n++) await site.publish(topics.status('seq-dev'), encodeStatus(fakeStatus(n)), { qos: 1, retain: true });
    await untilGateway(gw, (s) => s.relay.queued >= 10, 10_000, 'ten statuses queued');
    await site.close();
    siteClients.length = 0;

    // The gateway restarts while the link is still down: the queue is on disk.
    await gw.close();
    gw = await startGateway(f, { groups: [GROUP], listen: port }, proxy.url);
    const queuedAfterRestart = (await gw.status()).relay.queued;
    expect(queuedAfterRestart).toBeGreaterThanOrEqual(10);
    const site2 = await MqttTransport.connect({ url: gw.url, clientId: 'seq-dev-2' }, 10_000);
    siteClients.push(site2);
    for (let n = 11; n <= 20; n++) await site2.publish(topics.status('seq-dev'), encodeStatus(fakeStatus(n)), { qos: 1, retain: true });

    // A new device joins the offline site and is served from the gateway's store.
    spawnDevice(f, 'off-2', [], gw.url);
    await untilGateway(gw, (s) => s.relay.queued >= 20, 60_000, 'statuses queued');
    const deadline = Date.now() + 60_000;
    // Its ack stays on the site until the link returns: watch it on the site broker.
    const local = new StatusWatch();
    const lt = await MqttTransport.connect({ url: gw.url, clientId: 'site-watch' }, 10_000);
    siteClients.push(lt);
    lt.onMessage((topic, payload) => {
      const p = topics.parse(topic);
      if (p?.kind !== 'status') return;
      const s = JSON.parse(new TextDecoder().decode(payload)) as DeviceStatus;
      local.latest.set(s.device, s);
    });
    await lt.subscribe(topics.allStatuses(), 1);
    await until(() => local.latest.get('off-2')?.state === 'ok' || Date.now() > deadline, { timeoutMs: 61_000, what: 'off-2 ok on the site' });
    expect(local.latest.get('off-2')?.state).toBe('ok');
    expect(local.latest.get('off-2')?.running).toBe(f.update.targetDigest);
    // Nothing of this reached upstream yet.
    expect(watch.history.filter((s) => s.device === 'seq-dev')).toEqual([]);
    expect(watch.latest.get('off-2')).toBeUndefined();

    // The link returns: everything arrives, in order, none lost.
    proxy.restore();
    await watch.until('off-2', (s) => s.state === 'ok', 60_000);
    await until(() => watch.history.filter((s) => s.device === 'seq-dev').length >= 20, { timeoutMs: 30_000, what: 'twenty statuses upstream' });
    const seen = watch.history.filter((s) => s.device === 'seq-dev').map((s) => Number(s.message));
    // At least once: a repeat may follow a crash, but never out of order and none missing.
    const firsts = seen.filter((n, i) => seen.indexOf(n) === i);
    expect(firsts).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    for (let i = 1; i < seen.length; i++) expect(seen[i]).toBeGreaterThanOrEqual(seen[i - 1]);
    expect(await gw.relayDrained(10_000)).toBe(true);
    // The off-2 statuses went up in the order the device made them: idle before ok.
    const off2 = watch.history.filter((s) => s.device === 'off-2').map((s) => s.state);
    expect(off2.indexOf('idle')).toBeLessThan(off2.lastIndexOf('ok'));
  });
});
