import type { ResolvedGatewayConfig } from './defaults.ts';
import { errorFields } from '../platform/errors.ts';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { startSteps, type Started, type Step } from '../platform/steps.ts';
import { systemClock } from '../platform/clock.ts';
import { encodePresence } from '../protocol/status.ts';
import { Topics } from '../protocol/topics.ts';
import { ContentStore } from '../server/content-store.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { gatewayTopics } from './parts.ts';
import { VERSION } from '../util/version.ts';
import { ReleaseMirror } from './mirror.ts';
import type { GatewayStatus } from './status.ts';
import { StatusRelay } from './status-relay.ts';
import { UpstreamFetcher } from './upstream-fetcher.ts';
import { GroupWatch, type LearningSummary } from './group-watch.ts';
import { withDeadline } from '../util/deadline.ts';
import type { GatewayParts, SiteBroker } from './options.ts';
import { SerialWork } from './serial-work.ts';
import { UpstreamLink } from './upstream-link.ts';
import { StatusPublisher } from './status-publisher.ts';
import { SiteDevices } from './site-devices.ts';

/** How long a stopping gateway waits for the broker to acknowledge its "gateway stopped" status, ms. */
const STOPPED_STATUS_MS = 1000;

/**
 * A site gateway: a small broker (Aedes with its own update server) for the
 * site's devices, and one MQTT client upstream. It mirrors the releases of the
 * site's groups, fetches each payload once (resumable, windowed, verified),
 * serves the devices from the site store, relays their statuses upstream
 * through an on-disk queue, and publishes its own status. Built from started
 * parts (GatewayParts); `start()` starts what it builds on them:
 * - UpstreamFetcher (upstream-fetcher.ts) fetches the payloads into the site store;
 * - ReleaseMirror (mirror.ts) mirrors the releases once their payloads are held;
 * - GroupWatch (group-watch.ts) keeps which groups and models are mirrored;
 * - StatusRelay (status-relay.ts) takes the site's statuses upstream;
 * - SiteDevices (site-devices.ts) watches the site's devices on the site broker;
 * - UpstreamLink (upstream-link.ts) decides whether downloads may run (link, window, budget);
 * - StatusPublisher (status-publisher.ts) keeps `DIR/status.json` and the status upstream;
 * - SerialWork (serial-work.ts) runs the reactions to events one at a time.
 */
export class Gateway {
  private readonly site: SiteBroker;
  private readonly store: ContentStore;
  private readonly upstream: MqttTransport;
  private readonly work: SerialWork;
  private readonly relay: StatusRelay;
  private readonly fetcher: UpstreamFetcher;
  private readonly mirror: ReleaseMirror;
  private readonly groups: GroupWatch;
  private readonly devices: SiteDevices;
  private readonly link: UpstreamLink;
  private readonly reporter: StatusPublisher;
  private tick: NodeJS.Timeout | undefined;
  /** The steps started (set once they all have); close() stops them in reverse. */
  private started: Started | undefined;
  private stopping: Promise<void> | undefined;
  /** Every step has started: a stop says so upstream. */
  private ready = false;
  readonly topics: Topics;
  private readonly now: () => number;

  constructor(
    private readonly o: ResolvedGatewayConfig,
    parts: GatewayParts,
  ) {
    this.topics = gatewayTopics(o);
    this.now = o.now ?? Date.now;
    this.site = parts.site;
    this.store = parts.store;
    this.upstream = parts.upstream;
    this.work = new SerialWork(o.log);
    this.relay = new StatusRelay({ dir: this.dir('relay'), upstream: this.upstream, log: this.o.log.child('relay'), inFlight: o.statusInFlight, lingerMs: o.relayLingerMs });
    this.fetcher = this.makeFetcher();
    this.mirror = this.makeMirror();
    this.groups = this.makeGroups();
    this.devices = new SiteDevices({
      topics: this.topics,
      auth: this.site.auth,
      groups: this.groups,
      relay: this.relay,
      log: o.log,
      onRunningChanged: (group, model) => this.work.run(() => this.mirror.onDevice(group, model)),
    });
    this.link = this.makeLink(parts);
    this.reporter = new StatusPublisher({
      upstream: this.upstream,
      link: this.link,
      work: this.work,
      status: () => this.status(),
      file: this.dir('status.json'),
      topic: this.topics.gatewayStatus(o.site),
      progressStep: o.statusProgressStep,
    });
  }

  get url(): string {
    return this.site.url;
  }
  get port(): number {
    return this.site.port;
  }
  get fetcherId(): string {
    return `gw-${this.o.site}`;
  }

  private dir(...p: string[]): string {
    return path.join(this.o.dataDir, ...p);
  }

  /** What the gateway starts on its parts, in order (and, reversed, stops); a step that fails undoes the ones before it. */
  private static readonly STEPS: readonly Step<Gateway>[] = [
    { name: 'status relay', start: () => undefined, stop: (g) => g.relay.close() },
    { name: 'upstream fetcher', start: () => undefined, stop: (g) => g.fetcher.close() },
    { name: 'reactions', start: (g) => g.react(), stop: (g) => g.quiesce() },
    { name: 'mirror', start: (g) => g.mirror.start() },
    { name: 'relay', start: (g) => g.relay.start() },
    { name: 'groups', start: (g) => g.groups.start() },
    { name: 'policy tick', start: (g) => g.startTick(), stop: (g) => clearInterval(g.tick) },
  ];

  async start(): Promise<void> {
    this.started = await startSteps(Gateway.STEPS, this, this.o.log);
    this.ready = true;
  }

  private makeFetcher(): UpstreamFetcher {
    return new UpstreamFetcher({
      upstream: this.upstream,
      topics: this.topics,
      fetcherId: this.fetcherId,
      dir: this.dir('upstream'),
      store: this.store,
      clock: this.o.clock ?? systemClock,
      log: this.o.log.child('fetch'),
      maxWindow: this.o.maxWindow,
      idleMs: this.o.idleMs,
      stallMs: this.o.stallMs,
      maxBadCopies: this.o.maxBadCopies,
      onStored: () => {
        this.reporter.payloadStored();
        this.work.run(async () => {
          await this.mirror.onStored();
          this.reporter.publish(true);
        });
      },
      onProgress: () => this.link.account(),
    });
  }

  private makeMirror(): ReleaseMirror {
    const log = this.o.log;
    return new ReleaseMirror({
      dir: this.dir('releases'),
      store: this.store,
      log: log.child('mirror'),
      fetch: (model, need) => this.fetcher.want(model, need),
      keepOnly: (needed) => this.fetcher.keepOnly(needed),
      publishLocal: (group, model, bytes) => this.publishLocal(this.topics.release(group, model), bytes),
      siteDigests: (group, model) => this.devices.running(group, model),
    });
  }

  private makeGroups(): GroupWatch {
    return new GroupWatch({
      file: this.dir('groups.json'),
      topics: this.topics,
      upstream: this.upstream,
      groups: this.o.groups ?? [],
      models: this.o.models ?? [],
      log: this.o.log.child('groups'),
      cap: this.o.learnGroups ?? (this.o.auth ? Infinity : 0),
    });
  }

  private makeLink(parts: GatewayParts): UpstreamLink {
    return new UpstreamLink({
      upstream: this.upstream,
      fetcher: this.fetcher,
      ledger: parts.ledger,
      ledgerFile: this.dir('budget.json'),
      url: this.o.upstream,
      now: this.now,
      window: this.o.window,
      budgetBytes: this.o.budgetBytes,
      drainMs: this.o.drainMs,
      stallMs: this.o.stallMs,
      log: this.o.log,
      onDecision: () => this.reporter.publish(true),
    });
  }

  /** React to upstream (releases in, link state) and to the site (statuses and presence up; learn groups from devices). */
  private react(): void {
    this.link.adoptConnection();
    this.upstream.onMessage((topic, payload) => {
      const p = this.topics.parse(topic);
      if (p?.kind === 'release' && this.groups.wants(p.group, p.model)) {
        this.reporter.releaseArrived();
        this.work.run(() => this.mirror.onUpstream(p.group, p.model, payload));
      }
      // The fleet's signed trust file (key rotation): forwarded byte for byte; devices verify it.
      if (p?.kind === 'trust' && payload.byteLength > 0) this.work.run(() => this.publishLocal(topic, payload));
    });
    this.upstream.onConnect(() => {
      this.link.connected();
      void this.groups.subscribeAll();
      void this.upstream.subscribe(this.topics.trust(), 1).catch((e: unknown) => this.o.log.warn('subscribing to the trust topic upstream failed; tried again on the next connect', errorFields(e)));
      this.link.evaluate();
      this.reporter.publish(true);
    });
    this.upstream.onDisconnect((reason) => this.link.disconnected(reason));
    this.devices.watch(this.site.aedes);
  }

  private startTick(): void {
    this.link.resetWire();
    this.tick = setInterval(() => {
      this.link.account();
      this.link.evaluate();
      this.reporter.publish(false);
    }, this.o.tickMs);
    this.link.evaluate();
  }

  /** Let the pending reactions finish, react no more, and keep the budget ledger. */
  private async quiesce(): Promise<void> {
    await this.settled();
    this.link.close();
    this.reporter.close();
    await this.link.saveLedger();
  }

  /** What the gateway learns from its devices (its status shows it). */
  private learning(): LearningSummary {
    const cap = this.o.learnGroups ?? (this.o.auth ? Infinity : 0);
    return { mode: this.o.auth ? 'logins' : cap > 0 ? 'devices' : 'off', learned: this.groups.learnedCount, cap: Number.isFinite(cap) ? cap : null, refused: this.groups.refused };
  }

  private publishLocal(topic: string, bytes: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      this.site.aedes.publish({ cmd: 'publish', topic, payload: Buffer.from(bytes), qos: 1, retain: true, dup: false }, (e) => (e ? reject(e) : resolve()));
    });
  }

  async status(): Promise<GatewayStatus> {
    const w = this.upstream.stats();
    const d = this.link.decision;
    const busy = this.fetcher.busy;
    const cache: GatewayStatus['cache'] = [];
    for (const id of await fs.readdir(this.dir('site', 'store', 'updates')).catch(() => [] as string[])) {
      const m = await this.store.meta(id);
      if (m) cache.push({ updateId: m.updateId, model: m.model, size: m.size });
    }
    const since = this.link.since;
    return {
      site: this.o.site,
      gateway: VERSION,
      upstream: { state: this.upstream.connected ? 'connected' : 'down', connects: w.connects, since: since ? new Date(since).toISOString() : null },
      downloads: !busy ? 'idle' : d.go ? 'running' : 'waiting',
      waiting: busy && !d.go ? d.reason : null,
      message: busy && !d.go ? d.message : null,
      resumesAt: busy && !d.go && d.until !== null ? new Date(d.until).toISOString() : null,
      fetched: { payloadBytes: this.fetcher.payloadBytes, wireBytesIn: w.bytesIn, wireBytesOut: w.bytesOut },
      budget: this.link.budget(),
      window: this.link.windowText(),
      cache,
      fetching: this.fetcher.state(),
      releases: this.mirror.state(),
      relay: { queued: this.relay.queued, relayed: this.relay.relayed, merged: this.relay.merged },
      devices: this.devices.count,
      learning: this.learning(),
      time: new Date(this.now()).toISOString(),
    };
  }

  /** For tests and shutdown: every queued status delivered upstream. */
  relayDrained(timeoutMs?: number): Promise<boolean> {
    return this.relay.drained(timeoutMs ?? this.o.relayDrainTimeoutMs);
  }

  /** Resolves after the pending reactions (releases, stored payloads) have run. */
  settled(): Promise<void> {
    return this.work.settled();
  }

  /** Stops the started steps in reverse, once (later calls share the first); the parts stay up (their owner stops them). */
  close(): Promise<void> {
    const started = this.started;
    if (!started) return Promise.resolve();
    this.stopping ??= started.stop();
    return this.stopping;
  }

  /**
   * Closes the upstream connection it was given, after close(): a clean stop says so upstream
   * (instead of the last will's "lost"); a stop that was not acknowledged drops the connection.
   */
  async closeUpstream(): Promise<void> {
    let acked = false;
    if (this.ready && this.upstream.connected) {
      const s = await this.status();
      // The site's devices are cut off with the site broker, whose wills never reach upstream: say so for them.
      const offline = encodePresence('offline', this.now());
      const said = await withDeadline(
        Promise.all([
          ...this.devices.onlineIds().map((id) => this.upstream.publish(this.topics.presence(id), offline, { qos: 1, retain: true })),
          // Best effort, bounded: a broker that went away as we stop must not hold the stop (its last will says "lost").
          this.upstream.publish(this.topics.gatewayStatus(this.o.site), JSON.stringify({ ...s, upstream: { ...s.upstream, state: 'down' }, message: 'gateway stopped' }), { qos: 1, retain: true }),
        ]).then(
          () => true,
          () => false,
        ),
        STOPPED_STATUS_MS,
      );
      acked = said !== 'timeout' && said.value;
      if (!acked) this.o.log.warn('the "gateway stopped" status was not acknowledged upstream; the last will covers it', { waitedMs: STOPPED_STATUS_MS });
    }
    // Unacknowledged: drop the connection without DISCONNECT, so the broker sends the last will.
    await this.upstream.close(acked || !this.ready ? undefined : 0);
  }
}
