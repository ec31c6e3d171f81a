/**
 * The baseline of bench/hostile.ts: what the hostile packets cost without the
 * packet limit. `broker PORT`: a bare Aedes on TCP (no limit, no hooks), as
 * the fleet broker ran before it scanned headers. `client URL`: a bare mqtt.js
 * client, as a device connected before its transport had a limit. Runs until killed.
 */
import net from 'node:net';
import { Aedes } from 'aedes';
import { connect } from 'mqtt';

const [mode, arg] = process.argv.slice(2);
if (mode === 'broker') {
  const aedes = await Aedes.createBroker();
  aedes.on('clientError', () => undefined);
  net.createServer((s) => aedes.handle(s)).listen(Number(arg), '127.0.0.1', () => process.stdout.write('ready\n'));
} else if (mode === 'client') {
  const c = connect(arg!, { clientId: 'fleet-device-baseline', protocolVersion: 4, reconnectPeriod: 500 });
  c.on('error', () => undefined);
} else {
  process.stderr.write('usage: hostile-baseline.ts broker PORT | client URL\n');
  process.exit(2);
}
