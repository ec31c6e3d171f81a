/**
 * A device whose first connection completes while its agent is still starting (subscribing)
 * announces itself once: one retained `online` presence and one look at its retained status
 * for that connection. It announced twice (the agent's connect handler ran for the connection,
 * then its start-up's own look at the connection ran again): in a 20-device `bench:fleet`
 * cluster run 4 of 20 devices published `online` twice, each one more retained publish
 * that every broker stores and a cluster sends through Redis to every node.
 * Real Aedes broker and MQTT client over TCP on loopback; the transport is wrapped only so that
 * its connection opens when the agent first subscribes, as a connect slower than the agent's
 * start-up reads does.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { DeviceAgent } from '../../device/agent.ts';
import { digestHealthCheck } from '../../device/health.ts';
import { DeviceStorage } from '../../device/storage.ts';
import { systemClock } from '../../platform/clock.ts';
import { parseTrustFile } from '../../protocol/release.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import type { Transport } from '../../transport/types.ts';
import { silentLogger } from '../../util/log.ts';
import { digestModelFile } from '../../util/model-file.ts';
import { connect, createFixture, GROUP, MODEL, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { observeFor } from '../support/wait.ts';
import { ownAfterEach } from '../support/cleanup.ts';

/** A transport that starts connecting at its first subscribe (the agent is starting then); until then not connected. */
function connectingAtFirstSubscribe(f: Fixture, clientId: string): Transport {
  let inner: MqttTransport | undefined;
  const connectHandlers: Array<() => void> = [];
  const open = (): MqttTransport => {
    if (!inner) {
      inner = MqttTransport.start({ url: f.url, clientId });
      f.transports.push(inner);
      for (const h of connectHandlers) inner.onConnect(h);
    }
    return inner;
  };
  const messageHandlers: Array<Parameters<Transport['onMessage']>[0]> = [];
  return {
    publish: (t, p, o) => open().publish(t, p, o),
    subscribe: (filters, qos, o) => {
      const t = open();
      for (const h of messageHandlers.splice(0)) t.onMessage(h);
      return t.subscribe(filters, qos, o);
    },
    unsubscribe: (filters) => open().unsubscribe(filters),
    onMessage: (h) => {
      if (inner) return inner.onMessage(h);
      messageHandlers.push(h);
      return () => undefined;
    },
    onConnect: (h) => (inner ? inner.onConnect(h) : void connectHandlers.push(h)),
    onDisconnect: (h) => open().onDisconnect(h),
    get connected() {
      return inner?.connected ?? false;
    },
    close: (g) => open().close(g),
  };
}

let f: Fixture | undefined;
const own = ownAfterEach();

describe('a device whose connection opens while its agent starts', () => {
  it('publishes `online` once for that connection', async () => {
    f = own(await createFixture('start-presence'));
    const presence: string[] = [];
    const op = await connect(f, 'presence-watch');
    op.onMessage((topic, payload) => topic === topics.presence('early-1') && presence.push(Buffer.from(payload).toString()));
    await op.subscribe(topics.presence('early-1'), 1);
    const watch = await StatusWatch.start(f);
    const storage = new DeviceStorage(path.join(f.dir, 'early-1'));
    await DeviceAgent.provision(storage, f.baseFile, digestModelFile);
    const agent = await DeviceAgent.open(
      { deviceId: 'early-1', model: MODEL, group: GROUP, trust: parseTrustFile(await fs.readFile(f.trustFile, 'utf8')) },
      { transport: connectingAtFirstSubscribe(f, 'fleet-device-early-1'), storage, clock: systemClock, health: digestHealthCheck, topics, log: silentLogger },
    );
    f.agents.push(agent);
    await agent.start();
    await watch.until('early-1', (s) => s.state === 'idle' || s.state === 'ok', 30_000);
    await observeFor(1000, 'a second announcement of the same connection');
    expect(presence.filter((p) => p.startsWith('online'))).toHaveLength(1);
  });
});
