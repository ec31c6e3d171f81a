import { UsageError } from '../platform/errors.ts';
import { promises as fs } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { ROLES, type Role } from '../broker/acl.ts';
import { generatePassword, hashPassword, readUsersFile, readUsersFileOrEmpty, writeUsersFile, type UserRecord, type UsersFile } from '../broker/users-file.ts';
import { isTopicSegment, SEGMENT_RULE } from '../protocol/topics.ts';

function segment(kind: string) {
  return (v: string): string => {
    if (!isTopicSegment(v)) throw new InvalidArgumentError(`${kind} ${SEGMENT_RULE}`);
    return v;
  };
}

function find(file: UsersFile, name: string, authFile: string): UserRecord {
  const u = file.users.find((x) => x.name === name);
  if (!u) throw new UsageError('no-such-user', `no user "${name}" in ${authFile}`);
  return u;
}

async function readPassword(o: { password?: string; passwordFile?: string }): Promise<{ password: string; generated: boolean }> {
  if (o.password !== undefined && o.passwordFile !== undefined) throw new UsageError('bad-options', 'give --password or --password-file, not both');
  if (o.passwordFile !== undefined) {
    // One line; the trailing newline an editor or `echo` adds is not part of it.
    const p = (await fs.readFile(o.passwordFile, 'utf8')).replace(/\r?\n$/, '');
    if (!p) throw new UsageError('bad-options', `${o.passwordFile} is empty`);
    return { password: p, generated: false };
  }
  if (o.password !== undefined) {
    if (!o.password) throw new UsageError('bad-options', 'the password is empty');
    return { password: o.password, generated: false };
  }
  return { password: generatePassword(), generated: true };
}

/** Public view of a user: never the salt or hash. */
function view(u: UserRecord): { name: string; role: Role; group: string | null; model: string | null } {
  return { name: u.name, role: u.role, group: u.group ?? null, model: u.model ?? null };
}

/** `fleet user add|remove|list|regroup`: the broker's users file (`fleet broker --auth FILE` re-reads it on change). */
export function registerUserCommands(program: Command): void {
  const user = program.command('user').description('manage the users file of `fleet broker --auth FILE` (the broker picks up changes within a second)');

  user
    .command('add')
    .description('add a user; without --password or --password-file a password is generated and printed once')
    .argument('<name>', 'user name (for a device: its device id)', segment('user name'))
    .addOption(new Option('--role <role>', 'what the user may do').choices([...ROLES]).makeOptionMandatory())
    .option('--group <group>', 'device group (devices only, required for them)', segment('group'))
    .option('--model <model>', 'model name (devices only, required for them)', segment('model'))
    .option('--site <site>', "gateways only: bind the user to this site (client id fleet-gateway-SITE and that site's status only)", segment('site'))
    .requiredOption('--auth <file>', 'users file (created mode 0600 if missing)')
    .option('--password <password>', 'the password (visible to other local users in the process list; prefer --password-file)')
    .option('--password-file <file>', 'read the password from the first line of this file')
    .action(async (name: string, o: { role: Role; group?: string; model?: string; site?: string; auth: string; password?: string; passwordFile?: string }) => {
      if (o.role === 'device' && (!o.group || !o.model)) throw new UsageError('bad-options', 'a device needs --group and --model');
      if (o.role !== 'device' && (o.group || o.model)) throw new UsageError('bad-options', 'only devices have --group and --model');
      if (o.role !== 'gateway' && o.site) throw new UsageError('bad-options', 'only gateways have --site');
      const file = await readUsersFileOrEmpty(o.auth);
      if (file.users.some((u) => u.name === name)) throw new UsageError('user-exists', `user "${name}" already exists in ${o.auth} (remove it first)`);
      const { password, generated } = await readPassword(o);
      const rec: UserRecord = { name, role: o.role, ...(o.role === 'device' ? { group: o.group, model: o.model } : {}), ...(o.site ? { site: o.site } : {}), ...(await hashPassword(password)) };
      await writeUsersFile(o.auth, { users: [...file.users, rec] });
      const what = o.role === 'device' ? `device ${name} (group ${o.group}, model ${o.model})` : `${o.role} ${name}`;
      process.stdout.write(`added ${what} to ${o.auth}\n`);
      if (generated) process.stdout.write(`password (shown once): ${password}\n`);
    });

  user
    .command('remove')
    .description('remove a user; the broker refuses it from then on and disconnects its clients')
    .argument('<name>', 'user name')
    .requiredOption('--auth <file>', 'users file')
    .action(async (name: string, o: { auth: string }) => {
      const file = await readUsersFile(o.auth);
      find(file, name, o.auth);
      await writeUsersFile(o.auth, { users: file.users.filter((u) => u.name !== name) });
      process.stdout.write(`removed ${name} from ${o.auth}\n`);
    });

  user
    .command('list')
    .description('list users (names, roles, groups and models; never password hashes)')
    .requiredOption('--auth <file>', 'users file')
    .option('--json', 'one JSON array')
    .action(async (o: { auth: string; json?: boolean }) => {
      const users = (await readUsersFile(o.auth)).users.map(view);
      if (o.json) {
        process.stdout.write(JSON.stringify(users) + '\n');
        return;
      }
      const rows = [['NAME', 'ROLE', 'GROUP', 'MODEL'], ...users.map((u) => [u.name, u.role, u.group ?? '-', u.model ?? '-'])];
      const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
      for (const r of rows)
        process.stdout.write(
          r
            .map((c, i) => c.padEnd(widths[i]))
            .join('  ')
            .trimEnd() + '\n',
        );
    });

  user
    .command('regroup')
    .description('move a device to another group (and model); the broker disconnects it so it reconnects with its new rights')
    .argument('<name>', 'device name')
    .requiredOption('--group <group>', 'new group', segment('group'))
    .option('--model <model>', 'new model (default: unchanged)', segment('model'))
    .requiredOption('--auth <file>', 'users file')
    .action(async (name: string, o: { group: string; model?: string; auth: string }) => {
      const file = await readUsersFile(o.auth);
      const u = find(file, name, o.auth);
      if (u.role !== 'device') throw new UsageError('bad-options', `${name} is a ${u.role}; only devices have a group`);
      const next: UserRecord = { ...u, group: o.group, model: o.model ?? u.model };
      await writeUsersFile(o.auth, { users: file.users.map((x) => (x === u ? next : x)) });
      process.stdout.write(`device ${name}: group ${u.group} -> ${next.group}, model ${u.model} -> ${next.model}\n`);
    });
}
