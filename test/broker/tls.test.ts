import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startBroker, type RunningBroker } from '../../nodes/broker-node.ts';
import { MqttTransport } from '../../transport/mqtt.ts';
import { silentLogger } from '../../util/log.ts';
import { hasOpenssl, makeCerts } from '../support/certs.ts';
import { encodeUpdateFile } from '../../protocol/update-file.ts';

const ok = hasOpenssl();
if (!ok) console.warn('skipping the TLS suite: openssl is not installed (.ci/run installs it)');

let broker: RunningBroker | undefined;
let dir: string | undefined;
afterEach(async () => {
  await broker?.close();
  if (dir) await fs.rm(dir, { recursive: true, force: true });
  broker = undefined;
  dir = undefined;
});

async function setup(mutual: boolean) {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-tls-'));
  const c = await makeCerts(path.join(dir, 'certs'));
  broker = await startBroker({
    port: 0,
    dataDir: path.join(dir, 'b'),
    persistence: 'memory',
    log: silentLogger,
    tls: { port: 0, cert: await fs.readFile(c.serverCert), key: await fs.readFile(c.serverKey), ca: mutual ? await fs.readFile(c.ca) : undefined },
  });
  return c;
}

describe.skipIf(!ok)('TLS listener', () => {
  it('clients connect with mqtts:// and the CA; a client that does not trust the CA does not connect; messages flow over TLS', async () => {
    const c = await setup(false);
    expect(broker!.tlsUrl).toMatch(/^mqtts:\/\/127\.0\.0\.1:\d+$/);
    const ca = await fs.readFile(c.ca);
    const a = await MqttTransport.connect({ url: broker!.tlsUrl!, clientId: 'tls-a', tls: { ca } }, 10_000);
    const b = await MqttTransport.connect({ url: broker!.tlsUrl!, clientId: 'tls-b', tls: { ca } }, 10_000);
    const got = new Promise<string>((resolve) => b.onMessage((_t, p) => resolve(Buffer.from(p).toString())));
    await b.subscribe('fleet/devices/+/status', 1);
    await a.publish('fleet/devices/x/status', 'over tls', { qos: 1 });
    expect(await got).toBe('over tls');
    expect(a.stats().bytesOut).toBeGreaterThan(0);
    await a.close();
    await b.close();
    // Without the CA: refused at once, and the message names TLS and what to give (not a time-out for all causes).
    const t0 = Date.now();
    await expect(MqttTransport.connect({ url: broker!.tlsUrl!, clientId: 'tls-c', tls: {} }, 20_000)).rejects.toThrow(/^cannot connect to mqtts:\/\/127\.0\.0\.1:\d+: TLS with 127\.0\.0\.1 failed: .*--ca FILE$/);
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('with a client CA, only clients presenting a certificate it signed get in', async () => {
    const c = await setup(true);
    const ca = await fs.readFile(c.ca);
    await expect(MqttTransport.connect({ url: broker!.tlsUrl!, clientId: 'no-cert', tls: { ca } }, 20_000)).rejects.toThrow(/^cannot connect to mqtts:\/\/127\.0\.0\.1:\d+: /);
    const t = await MqttTransport.connect({ url: broker!.tlsUrl!, clientId: 'with-cert', tls: { ca, cert: await fs.readFile(c.clientCert), key: await fs.readFile(c.clientKey) } }, 10_000);
    expect(t.connected).toBe(true);
    await t.close();
  });
});

describe.skipIf(!ok)('the whole path over TLS, from the command line', () => {
  it('fleet broker --tls-port, a device process with --ca, and fleet publish over mqtts:// end ok', async () => {
    const { spawn } = await import('node:child_process');
    const { FLEET_BIN, stopChild } = await import('../../platform/child-process.ts');
    const { keygen } = await import('../../publisher/keys.ts');
    const { synthesizeModel, synthesizeUpdate } = await import('../../publisher/synth.ts');
    const { parseStatus } = await import('../../protocol/status.ts');
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'fleet-tls-cli-'));
    const c = await makeCerts(path.join(dir, 'certs'));
    const keys = await keygen(path.join(dir, 'keys'));
    const base = synthesizeModel(5, [
      [32, 48],
      [10, 32],
    ]);
    const update = synthesizeUpdate(base, 2, 6);
    await fs.writeFile(path.join(dir, 'base.safetensors'), base);
    await fs.writeFile(path.join(dir, 'u.cbor'), encodeUpdateFile(update.payload));
    const children: Array<import('node:child_process').ChildProcess> = [];
    try {
      const brokerProc = spawn(process.execPath, [FLEET_BIN, 'broker', '--port', '0', '--tls-port', '0', '--tls-cert', c.serverCert, '--tls-key', c.serverKey, '--data-dir', path.join(dir, 'b')], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push(brokerProc);
      const tlsUrl = await new Promise<string>((resolve, reject) => {
        let out = '';
        brokerProc.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /TLS on (mqtts:\/\/[^\s,]+)/.exec(out);
          if (m) resolve(m[1]);
        });
        brokerProc.once('exit', () => reject(new Error(`broker exited: ${out}`)));
      });
      const watcher = await MqttTransport.connect({ url: tlsUrl, clientId: 'tls-watch', tls: { ca: await fs.readFile(c.ca) } }, 10_000);
      const done = new Promise<string>((resolve) =>
        watcher.onMessage((_t, p) => {
          const s = parseStatus(p);
          if (s?.state === 'ok' && s.running === update.targetDigest) resolve(s.running);
        }),
      );
      await watcher.subscribe('fleet/devices/+/status', 1);
      children.push(
        spawn(
          process.execPath,
          [
            FLEET_BIN,
            '--ca',
            c.ca,
            'device',
            '--id',
            'tls-dev',
            '--model',
            'm',
            '--group',
            'g',
            '--dir',
            path.join(dir, 'dev'),
            '--trust',
            keys.trustFile,
            '--broker',
            tlsUrl,
            '--initial',
            path.join(dir, 'base.safetensors'),
          ],
          { stdio: 'ignore' },
        ),
      );
      const pub = spawn(
        process.execPath,
        [
          FLEET_BIN,
          '--ca',
          c.ca,
          'publish',
          '--update',
          path.join(dir, 'u.cbor'),
          '--key',
          keys.keyFile,
          '--rollout-key',
          keys.rolloutKeyFile,
          '--model',
          'm',
          '--group',
          'g',
          '--broker',
          tlsUrl,
          '--chunk-size',
          '1024',
          '--yes',
        ],
        { stdio: 'ignore' },
      );
      expect(await new Promise((r) => pub.once('exit', r))).toBe(0);
      expect(await done).toBe(update.targetDigest);
      await watcher.close();
    } finally {
      for (const ch of children) await stopChild(ch);
    }
  }, 60_000);
});
