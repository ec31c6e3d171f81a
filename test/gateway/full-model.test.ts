/**
 * A release with a full-model step behind a gateway: the site fetches only
 * the low-rank update while every site device is on its chain, and fetches
 * the full model once a device on no chain reports in — which then reaches
 * the target too.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { GatewayNode as Gateway } from '../../nodes/gateway-node.ts';
import { publishUpdate } from '../../publisher/publish.ts';
import { synthesizeModel } from '../../publisher/synth.ts';
import { silentLogger } from '../../util/log.ts';
import { CHUNK, connect, createFixture, fixtureKeys, GROUP, MODEL, SMALL_LAYERS, startAgent, StatusWatch, topics, type Fixture } from '../support/harness.ts';
import { startGateway, untilGateway } from './helpers.ts';

let f: Fixture | undefined;
let gw: Gateway | undefined;
afterEach(async () => {
  for (const a of f?.agents.splice(0) ?? []) await a.stop();
  await gw?.close();
  await f?.close();
  f = undefined;
  gw = undefined;
});

describe('site gateway and full-model steps', () => {
  it('fetches the full model only when a site device needs it', async () => {
    f = await createFixture('gw-full');
    gw = await startGateway(f, { groups: [GROUP] });
    const site = { ...f, url: gw.url };
    const watch = await StatusWatch.start(f);
    await startAgent(site, 'on-chain', silentLogger, { retryMs: 500 });
    await watch.until('on-chain', (s) => s.state === 'idle', 30_000);

    const pub = await connect(f, 'gw-full-pub');
    const r = await publishUpdate({
      transport: pub,
      topics,
      model: MODEL,
      group: GROUP,
      payloads: [f.update.payload],
      fullModel: f.update.target,
      chunkSize: CHUNK,
      ttlSeconds: 3600,
      log: silentLogger,
      ...(await fixtureKeys(f)),
    });
    const [chain, full] = r.release.steps;
    expect(full.from).toBeNull();
    expect(full.size).toBeGreaterThan(chain.size * 3);
    await watch.until('on-chain', (s) => s.state === 'ok' && s.running === f!.update.targetDigest, 30_000);
    let s = await untilGateway(gw, (g) => g.releases.some((x) => x.state === 'published'));
    expect(s.fetched.payloadBytes).toBe(chain.size);
    expect(s.cache.map((c) => c.updateId)).not.toContain(full.updateId);

    // A device provisioned with a model on no chain: the site fetches the full model, and it gets there.
    const other = path.join(f.dir, 'other.safetensors');
    await fs.writeFile(other, synthesizeModel(99, SMALL_LAYERS));
    await startAgent({ ...site, baseFile: other }, 'off-chain', silentLogger, { retryMs: 500 });
    const done = await watch.until('off-chain', (st) => st.state === 'ok' && st.running === f!.update.targetDigest, 60_000);
    expect(done.running).toBe(f.update.targetDigest);
    s = await untilGateway(gw, (g) => g.cache.some((c) => c.updateId === full.updateId));
    expect(s.fetched.payloadBytes).toBe(chain.size + full.size);
  });
});
