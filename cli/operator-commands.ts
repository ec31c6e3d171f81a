import { randomUUID } from 'node:crypto';
import type { Command } from 'commander';
import { OPERATOR_DEFAULTS } from '../operator/defaults.ts';
import { Topics } from '../protocol/topics.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { createLogger, parseLogLevel } from '../util/log.ts';
import { urlWithoutLogin } from '../util/url-login.ts';
import { AlertSink, AlertTracker, watchAlerts } from '../operator/alerts.ts';
import { FleetView, followFleet } from '../operator/fleet-view.ts';
import { JsonWatch } from '../operator/json-watch.ts';
import { TerminalWatch } from '../operator/render-terminal.ts';
import { parseDuration, parseIntArg } from './options.ts';
import { commandStop } from './stopping.ts';
import type { GracefulStop } from '../util/graceful-stop.ts';

/**
 * Connects and follows the fleet into a view, and adds the disconnect to `stop`
 * (no unsubscribe first: the clean session's subscriptions end with the connection).
 */
async function follow(url: string, role: string, topics: Topics, staleSeconds: number, stop: GracefulStop, before?: (view: FleetView) => void): Promise<{ view: FleetView; transport: MqttTransport }> {
  const transport = await MqttTransport.connect({ url, clientId: `fleet-${role}-${process.pid}-${randomUUID().slice(0, 8)}` }, 30_000);
  stop.add({ name: 'MQTT disconnect', optional: true, run: () => transport.close() });
  const view = new FleetView(topics, { staleMs: staleSeconds * 1000 });
  before?.(view); // listeners in place before the retained burst arrives
  await followFleet(view, transport, { stopped: () => stop.stopping });
  return { view, transport };
}

/** `fleet watch`, `fleet dashboard`, `fleet alerts`: what operators use to see the fleet and its rollouts. */
export function registerOperatorCommands(program: Command): void {
  const logLevel = (): ReturnType<typeof parseLogLevel> => parseLogLevel(program.opts().logLevel ?? process.env.FLEET_LOG);
  const topics = (): Topics => new Topics(program.opts().prefix);
  const stale = ['--stale <duration>', 'a device in the middle of an update with no status for this long is shown silent (5x for verifying, applying, testing)', parseDuration, 60] as const;

  program
    .command('watch')
    .description('live terminal view of devices and rollouts (redrawn in place on a terminal; change lines otherwise)')
    .requiredOption('--broker <url>', 'broker URL')
    .option('--group <group>', 'only this group')
    .option('--json', 'one JSON object per line for every device or rollout change ({kind, device|rollout, time, retained, row}); for pipes')
    .option(...stale)
    .action(async (o: { broker: string; group?: string; stale: number; json?: boolean }) => {
      const log = createLogger('watch', logLevel());
      const stop = commandStop(program, log);
      if (o.json) {
        // A reader that goes away (`| head`) ends the watch without a stack trace.
        process.stdout.on('error', (e: NodeJS.ErrnoException) => {
          if (e.code === 'EPIPE') process.emit('SIGTERM');
          else throw e;
        });
        await follow(o.broker, 'watch', topics(), o.stale, stop, (view) => {
          const out = new JsonWatch(view, process.stdout, { group: o.group });
          stop.add({ name: 'JSON output', run: () => out.stop() });
          out.start();
        });
        return;
      }
      const f = await follow(o.broker, 'watch', topics(), o.stale, stop);
      const out = new TerminalWatch(f.view, process.stdout, { title: `fleet watch ${urlWithoutLogin(o.broker)}`, group: o.group });
      const stdin = process.stdin;
      stop.add({
        name: 'terminal (screen, raw mode)',
        run: () => {
          out.stop();
          if (stdin.isTTY) stdin.setRawMode(false);
          stdin.pause();
        },
      });
      out.start();
      if (stdin.isTTY) {
        stdin.setRawMode(true);
        stdin.resume();
        stdin.on('data', (b: Buffer) => {
          const k = b.toString();
          if (k === 'q' || k === 'Q' || k === '\u0003') process.emit('SIGINT');
        });
      }
    });

  program
    .command('dashboard')
    .description('web dashboard: live page (Server-Sent Events from --broker, or MQTT over WebSocket in the browser with --ws), /api/devices, /api/rollouts, /metrics (Prometheus)')
    .option('--broker <url>', 'broker URL: the server follows the fleet and feeds the page over Server-Sent Events (and /api, /metrics)')
    .option('--ws <url>', "the broker's WebSocket listener (ws://HOST:PORT, as the browser reaches it): the page connects itself and asks for a viewer login")
    .option('--port <port>', 'HTTP port', parseIntArg(0, 65535), OPERATOR_DEFAULTS.dashboardPort)
    .option('--host <host>', 'address to listen on (the dashboard has no login: keep it on loopback or behind a proxy)', '127.0.0.1')
    .option(...stale)
    .action(async (o: { broker?: string; ws?: string; port: number; host: string; stale: number }) => {
      const log = createLogger('dashboard', logLevel());
      if (!o.broker && !o.ws) program.error('fleet dashboard needs --broker URL (Server-Sent Events) or --ws URL (MQTT over WebSocket in the browser)');
      const stop = commandStop(program, log);
      const f = o.broker ? await follow(o.broker, 'dashboard', topics(), o.stale, stop) : undefined;
      const { startDashboard } = await import('../operator/dashboard-server.ts');
      const d = await startDashboard({
        view: f?.view,
        port: o.port,
        host: o.host,
        log,
        live: o.ws ? { wsUrl: o.ws, prefix: program.opts().prefix, staleMs: o.stale * 1000 } : undefined,
      });
      stop.add({ name: 'HTTP server (page, live streams)', run: () => d.close() });
      const fed = o.ws ? `fed in the browser over ${o.ws}` : `following ${urlWithoutLogin(o.broker!)}`;
      process.stdout.write(`fleet dashboard on ${d.url}${f ? ` (metrics ${d.url}metrics)` : ''}, ${fed}\n`);
    });

  program
    .command('alerts')
    .description('one event per transition: device-rolled-back, device-rejected, device-failed, device-offline, rollout-halted, rollout-completed')
    .requiredOption('--broker <url>', 'broker URL')
    .option('--on-event <cmd>', 'run for each event with its JSON in FLEET_EVENT (and FLEET_EVENT_TYPE) and on stdin')
    .option('--webhook <url>', 'POST each event as JSON to this http(s) URL')
    .option('--alert-existing', 'also alert on what the retained statuses show at start')
    .option(...stale)
    .action(async (o: { broker: string; onEvent?: string; webhook?: string; alertExisting?: boolean; stale: number }) => {
      const log = createLogger('alerts', logLevel());
      if (o.webhook) new URL(o.webhook); // fail early on a bad URL
      const stop = commandStop(program, log);
      const sink = new AlertSink({ command: o.onEvent, webhook: o.webhook, log });
      const tracker = new AlertTracker({ alertExisting: o.alertExisting === true });
      let off = (): void => undefined;
      let refresh: NodeJS.Timeout | undefined;
      // Runs after the disconnect: events already raised are still delivered (commands, webhooks).
      stop.add({ name: 'alert deliveries in progress', run: () => sink.idle() });
      await follow(o.broker, 'alerts', topics(), o.stale, stop, (view) => {
        off = watchAlerts(view, tracker, (e) => {
          process.stdout.write(`${JSON.stringify(e)}\n`);
          void sink.send(e);
        });
        refresh = setInterval(() => view.refresh(), 1000);
      });
      stop.add({
        name: 'alert watch',
        run: () => {
          clearInterval(refresh);
          off();
        },
      });
      log.info('watching', { broker: o.broker });
    });
}
