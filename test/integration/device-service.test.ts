import { spawn, spawnSync } from 'node:child_process';
import { existsSync, promises as fs, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FLEET_BIN } from '../../platform/child-process.ts';
import { createFixture, GROUP, MODEL, StatusWatch, type Fixture } from '../support/harness.ts';
import { ownAfterEach } from '../support/cleanup.ts';

let f: Fixture | undefined;
const own = ownAfterEach();

function fleet(args: string[], env: NodeJS.ProcessEnv = process.env): { code: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [FLEET_BIN, ...args], { encoding: 'utf8', env });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** ExecStart's words, unquoted as systemd does for what the generator writes (quotes, \\, %% and $$). */
function execStart(unit: string): string[] {
  const line = unit
    .split('\n')
    .find((l) => l.startsWith('ExecStart='))!
    .slice('ExecStart='.length);
  const words: string[] = [];
  const re = /"((?:[^"\\]|\\.)*)"|(\S+)/g;
  for (let m; (m = re.exec(line));) words.push((m[1] !== undefined ? m[1].replace(/\\(.)/g, '$1') : m[2]).replace(/%%/g, '%').replace(/\$\$/g, '$'));
  return words;
}

const systemdAnalyze = existsSync('/usr/bin/systemd-analyze');
if (!systemdAnalyze) console.log('device-service: systemd-analyze is not installed; the unit is checked by running its ExecStart only');

describe('fleet device install-service', () => {
  it("writes a sandboxed unit that systemd accepts and a 0600 environment file with the password; the unit's own command line runs the agent", async () => {
    f = own(await createFixture('service'));
    const dir = path.join(f.dir, 'd1');
    const units = path.join(f.dir, 'units');
    const env = path.join(f.dir, 'etc', 'device-d1.env');
    const url = new URL(f.url);
    url.username = 'd1';
    url.password = 's3cret pw';
    const r = fleet([
      'device',
      'install-service',
      '--id',
      'd1',
      '--model',
      MODEL,
      '--group',
      GROUP,
      '--dir',
      dir,
      '--trust',
      f.trustFile,
      '--broker',
      url.toString(),
      '--initial',
      f.baseFile,
      '--health-cmd',
      'test -s "$FLEET_MODEL_PATH"',
      '--unit-dir',
      units,
      '--environment-file',
      env,
    ]);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toBe(`wrote ${path.join(units, 'fleet-device-d1.service')} and ${env} (mode 0600); now: systemctl daemon-reload && systemctl enable --now fleet-device-d1.service\n`);
    const unit = await fs.readFile(path.join(units, 'fleet-device-d1.service'), 'utf8');
    expect(unit).not.toContain('s3cret');
    for (const line of ['Restart=on-failure', 'RestartPreventExitStatus=78', 'NoNewPrivileges=yes', 'ProtectSystem=strict', `ReadWritePaths=${dir}`, 'StandardOutput=journal', `EnvironmentFile=-${env}`]) {
      expect(unit.split('\n')).toContain(line);
    }
    expect(statSync(env).mode & 0o777).toBe(0o600);
    expect(await fs.readFile(env, 'utf8')).toContain('FLEET_PASSWORD="s3cret pw"');
    if (systemdAnalyze) {
      const v = spawnSync('/usr/bin/systemd-analyze', ['verify', path.join(units, 'fleet-device-d1.service')], { encoding: 'utf8' });
      expect(v.status, v.stderr).toBe(0);
      // Lines about this unit would be its problems (others' are the machine's).
      expect(v.stderr.split('\n').filter((l) => l.includes('fleet-device-d1'))).toEqual([]);
    }
    // The unit's command line, run as systemd would (without the sandbox), brings the agent up on the broker.
    const [node, ...args] = execStart(unit);
    expect(node).toBe(process.execPath);
    const watch = await StatusWatch.start(f);
    const agent = spawn(node, args, { stdio: 'ignore', env: { ...process.env } });
    f.children.push(agent);
    const s = await watch.until('d1', (x) => x.state === 'idle', 30_000);
    expect(s.running).toBe(f.update.baseDigest);
  }, 60_000);

  it('refuses, before writing anything, a trust file that does not exist: the service could never start', async () => {
    f = own(await createFixture('service-refused'));
    const units = path.join(f.dir, 'units');
    const r = fleet([
      'device',
      'install-service',
      '--id',
      'd2',
      '--model',
      MODEL,
      '--group',
      GROUP,
      '--dir',
      path.join(f.dir, 'd2'),
      '--trust',
      path.join(f.dir, 'nope.json'),
      '--broker',
      f.url,
      '--unit-dir',
      units,
      '--environment-file',
      path.join(f.dir, 'd2.env'),
    ]);
    expect(r.code).toBe(1);
    expect(r.err).toBe(`fleet: --trust: ${path.join(f.dir, 'nope.json')} does not exist; the service could never start\n`);
    expect(existsSync(units)).toBe(false);
  }, 60_000);
});
