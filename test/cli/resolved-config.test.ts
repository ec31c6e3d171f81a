/**
 * One resolved config per process (issue #16): each process resolves its
 * options over its defaults table once, at construction (as the device does
 * with resolveAgentConfig), and hands the resolved values to its parts. So no
 * core file reads a process's table but the table's own file (and cli/, whose
 * help shows the table's values), except the exceptions named here.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BROKER_DEFAULTS, resolveBrokerConfig } from '../../broker/defaults.ts';
import { GATEWAY_DEFAULTS, resolveGatewayConfig } from '../../gateway/defaults.ts';
import { ROLLOUT_DEFAULTS, resolveRolloutConfig } from '../../rollout/defaults.ts';
import { UPDATE_SERVER_DEFAULTS, resolveUpdateServerConfig } from '../../server/defaults.ts';
import { MAX_WANT } from '../../protocol/frames.ts';
import { OPERATOR_DEFAULTS, resolveOperatorConfig } from '../../operator/defaults.ts';
import { silentLogger } from '../../util/log.ts';

/** Each table and the file that holds it (and its resolve function). */
const TABLES: ReadonlyArray<{ name: string; file: string }> = [
  { name: 'GATEWAY_DEFAULTS', file: 'gateway/defaults.ts' },
  { name: 'ROLLOUT_DEFAULTS', file: 'rollout/defaults.ts' },
  { name: 'BROKER_DEFAULTS', file: 'broker/defaults.ts' },
  { name: 'UPDATE_SERVER_DEFAULTS', file: 'server/defaults.ts' },
  { name: 'OPERATOR_DEFAULTS', file: 'operator/defaults.ts' },
];

/** Folders whose code runs inside a process (cli/ shows the tables in the help). */
const CORE = ['platform', 'protocol', 'transport', 'publisher', 'server', 'broker', 'device', 'rollout', 'operator', 'gateway', 'util', 'nodes'];

async function tsFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...(await tsFiles(p)));
    else if (e.name.endsWith('.ts')) out.push(p);
  }
  return out;
}

describe('one resolved config per process', () => {
  it('no core file reads a process defaults table but the table file itself', async () => {
    const root = path.resolve(import.meta.dirname, '../..');
    const found: string[] = [];
    for (const dir of CORE) {
      for (const file of await tsFiles(path.join(root, dir))) {
        const rel = path.relative(root, file).split(path.sep).join('/');
        const text = await fs.readFile(file, 'utf8');
        for (const t of TABLES) if (rel !== t.file && text.includes(t.name)) found.push(`${rel} reads ${t.name}: take the value from the process's resolved config`);
      }
    }
    expect(found).toEqual([]);
  });

  it("the gateway's config: the table's value for what is not given, what is given kept", () => {
    const given = { upstream: 'mqtt://127.0.0.1:1', listen: 0, dataDir: '/nonexistent', site: 's', log: silentLogger };
    const r = resolveGatewayConfig({ ...given, tickMs: 77 });
    expect(r.tickMs).toBe(77);
    for (const [k, v] of Object.entries(GATEWAY_DEFAULTS)) if (k !== 'tickMs') expect(r[k as keyof typeof r], k).toBe(v);
    expect(r.upstream).toBe(given.upstream);
  });

  it("the rollout controller's config: the table's value for what is not given, what is given kept", () => {
    const plan = { id: 'r', model: 'm', waves: [] } as unknown as Parameters<typeof resolveRolloutConfig>[0]['plan'];
    const r = resolveRolloutConfig({ plan, payloads: {} as Parameters<typeof resolveRolloutConfig>[0]['payloads'], keys: [], settleMs: 5 });
    expect(r.settleMs).toBe(5);
    for (const [k, v] of Object.entries(ROLLOUT_DEFAULTS)) if (k !== 'settleMs') expect(r[k as keyof typeof r], k).toBe(v);
    expect(r.plan).toBe(plan);
  });

  it("the broker's config: the table's value for what is not given, what is given (and a node's own options) kept", () => {
    const r = resolveBrokerConfig({ dataDir: '/nonexistent', log: silentLogger, authPollMs: 9, updateServer: false });
    expect(r.authPollMs).toBe(9);
    expect(r.port).toBe(BROKER_DEFAULTS.port);
    expect(r.clusterLeaseTtlMs).toBe(BROKER_DEFAULTS.clusterLeaseTtlMs);
    expect(r.updateServer).toBe(false);
  });

  it("the update server's config: the table's values, the request cap never over MAX_WANT", () => {
    expect(resolveUpdateServerConfig({})).toMatchObject({ maxChunksPerRequest: UPDATE_SERVER_DEFAULTS.maxChunksPerRequest, settleMs: UPDATE_SERVER_DEFAULTS.settleMs });
    expect(resolveUpdateServerConfig({ maxChunksPerRequest: MAX_WANT * 2, uploadTtlMs: 4000 })).toMatchObject({ maxChunksPerRequest: MAX_WANT, uploadTtlMs: 4000, uploadSweepMs: 1000 });
  });

  it("an operator view's settings: the table's value for what is not given (undefined included), what is given kept", () => {
    const r = resolveOperatorConfig({ staleMs: 5, refreshMs: undefined });
    expect(r.staleMs).toBe(5);
    for (const [k, v] of Object.entries(OPERATOR_DEFAULTS)) if (k !== 'staleMs') expect(r[k as keyof typeof r], k).toBe(v);
  });
});
