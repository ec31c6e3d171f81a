import type { ResolvedGatewayConfig } from './defaults.ts';
import { errorFields } from '../platform/errors.ts';
import { promises as fs } from 'node:fs';
import type { Aedes, Client } from 'aedes';
import path from 'node:path';
import type { BrokerAuth } from '../broker/auth.ts';
import type { MqttBrokerOptions } from '../broker/broker.ts';
import { startSteps, type Started, type Step } from '../platform/steps.ts';
import { systemClock, type Clock } from '../platform/clock.ts';
import { encodePresence, parsePresence, parseStatus } from '../protocol/status.ts';
import { Topics } from '../protocol/topics.ts';
import { ContentStore } from '../server/content-store.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import type { Logger } from '../util/log.ts';
import { writeFileAtomic } from '../util/fs-atomic.ts';
import { gatewayTopics } from './parts.ts';
import { VERSION } from '../util/version.ts';
import { ReleaseMirror } from './mirror.ts';
import { charge, decide, formatWindow, monthKey, used, type BudgetLedger, type DownloadWindow, type PolicyDecision } from './policy.ts';
import type { GatewayFileStatus, GatewayStatus } from './status.ts';
import { StatusRelay } from './status-relay.ts';
import { UpstreamFetcher } from './upstream-fetcher.ts';
import { GroupWatch, type LearningSummary } from './group-watch.ts';
import { withDeadline } from '../util/deadline.ts';

/** How long a stopping gateway waits for the broker to acknowledge its "gateway stopped" status, ms. */
const STOPPED_STATUS_MS = 1000;
/**
 * How long the upstream fetch is kept through a lost link (at most half its stall time, so the
 * Download's own stall timer does not end it meanwhile): cuts of seconds and the silence watch's
 * reconnects go on with it; after a longer outage it starts again from the bitmap.
 */
const LINK_LOST_HOLD_MS = 30_000;

/** The site broker the gateway's devices connect to: a broker with its own update server (nodes/broker-node.ts). */
export interface SiteBroker {
  url: string;
  port: number;
  host: string;
  aedes: Aedes;
  auth: BrokerAuth | undefined;
  close(): Promise<void>;
}

export interface GatewayOptions {
  /** The central broker, `mqtt://[user:pass@]host:port` (mqtts:// with the CLI's TLS options). */
  upstream: string;
  /** Port of the site broker the devices connect to (0: any free port). */
  listen: number;
  host?: string;
  dataDir: string;
  site: string;
  /** Bytes per calendar month over the upstream link (in and out); downloads pause past it. */
  budgetBytes?: number;
  /** Daily window (local time) in which upstream downloads may run. */
  window?: DownloadWindow;
  /** Groups (and models) to mirror besides those learned from the site's devices. */
  groups?: string[];
  /**
   * Most group/model pairs learned from the site's devices. With `auth` the pairs come from the
   * device users' logins (default: no cap); without it from what devices say, only when this is
   * given (default 0: mirror only `groups`/`models`).
   */
  learnGroups?: number;
  models?: string[];
  prefix?: string;
  persistence?: 'level' | 'memory';
  /**
   * The site broker's users file (as `fleet broker --auth`): the site's devices log in and the
   * ACL applies to them. Without it the site broker trusts the site's network.
   */
  auth?: string;
  /** A TLS listener for the site's devices beside the plain one (as `fleet broker --tls-port`). */
  tls?: MqttBrokerOptions['tls'];
  /** Wall-clock time for the window and the budget month (tests inject one). */
  now?: () => number;
  /** Timers of the transfer (default: the system clock). */
  clock?: Clock;
  /** After a pause for the window or the budget, chunks already asked for are still taken for this long (default 3000 ms). */
  drainMs?: number;
  /** How often the policy is re-evaluated (default 1000 ms). */
  tickMs?: number;
  /** While fetching, the status goes upstream when the fetch passes another this much of a payload (default 0.5), besides state changes and every 30 s. */
  statusProgressStep?: number;
  /** Upstream transfer tuning (as the device's --window, --idle-ms). */
  maxWindow?: number;
  idleMs?: number;
  stallMs?: number;
  /** Bad copies of one chunk before the upstream source is declared corrupt. */
  maxBadCopies?: number;
  /** Device statuses relayed upstream at once. */
  statusInFlight?: number;
  /** How long a relayed status waits before it goes up, ms (passing states superseded meanwhile are dropped). */
  relayLingerMs?: number;
  /** relayDrained()'s wait when none is given, ms. */
  relayDrainTimeoutMs?: number;
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  keepaliveSeconds?: number;
  log: Logger;
}

/** The error a site broker on `host` without a users file logs at start; undefined on loopback or with auth. */
export function openSiteWarning(host: string, auth: string | undefined): string | undefined {
  if (auth || host === 'localhost' || host === '::1' || /^127\./.test(host)) return undefined;
  return `the site broker listens on ${host}, beyond loopback, without --auth: any client on the network may publish and subscribe as any device (give it --auth FILE)`;
}

/** The parts a gateway is built from, started before it (nodes/gateway-node.ts's steps). */
export interface GatewayParts {
  /** This month's (and earlier months') upstream bytes, as kept in `DIR/budget.json`. */
  ledger: BudgetLedger;
  site: SiteBroker;
  /** The site store the site broker's update server serves from (`DIR/site/store`). */
  store: ContentStore;
  /** The connection upstream, its last will saying the gateway lost it; the gateway closes it (closeUpstream). */
  upstream: MqttTransport;
}

/**
 * A site gateway: a small broker (Aedes with its own update server) for the
 * site's devices, and one MQTT client upstream. It mirrors the releases of the
 * site's groups, fetches each payload once (resumable, windowed, verified),
 * serves the devices from the site store, relays their statuses upstream
 * through an on-disk queue, and publishes its own status. Built from started
 * parts (GatewayParts); `start()` starts what it builds on them.
 */
export class Gateway {
  private readonly site: SiteBroker;
  private readonly store: ContentStore;
  private readonly upstream: MqttTransport;
  private readonly relay: StatusRelay;
  private readonly fetcher: UpstreamFetcher;
  private readonly mirror: ReleaseMirror;
  private readonly groups: GroupWatch;
  private ledger: BudgetLedger;
  private ledgerDirty = false;
  private lastWire = 0;
  private decision: PolicyDecision = { go: false, reason: 'upstream-down', until: null, message: 'starting' };
  private tick: NodeJS.Timeout | undefined;
  private linkSince: number | null = null;
  private readonly devices = new Set<string>();
  /** Site devices whose presence went upstream as online: a clean stop says they are offline (their wills die with the site broker). */
  private readonly online = new Set<string>();
  /** What each site device last reported running (its status): which full-model steps the site needs. */
  private readonly digests = new Map<string, { group: string; model: string; running: string }>();
  private lastStatusJson = '';
  private work: Promise<void> = Promise.resolve();
  private closed = false;
  /** The steps started (set once they all have); close() stops them in reverse. */
  private started: Started | undefined;
  private stopping: Promise<void> | undefined;
  /** Every step has started: a stop says so upstream. */
  private ready = false;
  readonly topics: Topics;
  private readonly now: () => number;
  /** The last `DIR/status.json` written, without its time. */
  private lastFileJson = '';
  /**
   * Between the connection's `connect` and `disconnect` events. The client says connected from the
   * CONNACK on, before it has sent again what was unacknowledged and restored the subscriptions (a
   * round trip each on a slow link), and still says so while a quick reconnect drops the old socket:
   * a status published then went on the dying socket and again after the reconnect (~790 B each),
   * and a fetch resumed then asked before its frames were subscribed again.
   */
  private linkUp = false;
  /** When the last payload fetched from upstream was held, and what the upstream socket had written by then (the status file's `lastStored`). */
  private lastStored: GatewayFileStatus['lastStored'];
  private lastReleaseAt: number | undefined;
  private lastPublishedAt = 0;

  constructor(
    private readonly o: ResolvedGatewayConfig,
    parts: GatewayParts,
  ) {
    this.topics = gatewayTopics(o);
    this.now = o.now ?? Date.now;
    this.ledger = parts.ledger;
    this.site = parts.site;
    this.store = parts.store;
    this.upstream = parts.upstream;
    this.relay = new StatusRelay({ dir: this.dir('relay'), upstream: this.upstream, log: this.o.log.child('relay'), inFlight: o.statusInFlight, lingerMs: o.relayLingerMs });
    this.fetcher = this.makeFetcher();
    this.mirror = this.makeMirror();
    this.groups = this.makeGroups();
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

  /** Serialise the async reactions to events (releases, stored payloads, policy). */
  private serial(fn: () => Promise<void>): void {
    this.work = this.work.then(fn).catch((e: unknown) => this.o.log.error('gateway step failed', errorFields(e)));
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
        // Taken now, before the site's devices hear of the release and their statuses go up.
        this.lastStored = { at: Date.now(), upstreamSent: structuredClone(this.upstream.sent), wireBytesOut: this.upstream.stats().bytesOut };
        this.serial(async () => {
          await this.mirror.onStored();
          this.publishStatus(true);
        });
      },
      onProgress: () => this.account(),
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
      siteDigests: (group, model) => [...this.digests.values()].filter((d) => d.group === group && d.model === model).map((d) => d.running),
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

  /** React to upstream (releases in, link state) and to the site (statuses and presence up; learn groups from devices). */
  private react(): void {
    // Connected already (no `connect` event to come for this connection): take it as up.
    this.linkUp = this.upstream.connected;
    this.upstream.onMessage((topic, payload) => {
      const p = this.topics.parse(topic);
      if (p?.kind === 'release' && this.groups.wants(p.group, p.model)) {
        this.lastReleaseAt = Date.now();
        this.serial(() => this.mirror.onUpstream(p.group, p.model, payload));
      }
      // The fleet's signed trust file (key rotation): forwarded byte for byte; devices verify it.
      if (p?.kind === 'trust' && payload.byteLength > 0) this.serial(() => this.publishLocal(topic, payload));
    });
    this.upstream.onConnect(() => {
      this.linkUp = true;
      this.linkSince = this.now();
      this.o.log.info('upstream connected', { url: redact(this.o.upstream) });
      void this.groups.subscribeAll();
      void this.upstream.subscribe(this.topics.trust(), 1).catch((e: unknown) => this.o.log.warn('subscribing to the trust topic upstream failed; tried again on the next connect', errorFields(e)));
      this.evaluate();
      this.publishStatus(true);
    });
    this.upstream.onDisconnect((reason) => {
      this.linkUp = false;
      if (this.closed) return;
      this.linkSince = this.now();
      this.o.log.info('upstream down', { reason });
      this.evaluate();
    });
    this.site.aedes.on('publish', (packet, client) => {
      if (!client) return;
      const p = this.topics.parse(packet.topic);
      if (p?.kind !== 'status' && p?.kind !== 'presence') return;
      const payload = new Uint8Array(packet.payload as Buffer);
      if (p.kind === 'presence') {
        if (parsePresence(payload)?.state === 'online') this.online.add(p.deviceId);
        else this.online.delete(p.deviceId);
      }
      if (p.kind === 'status') this.onSiteStatus(client, p.deviceId, payload);
      void this.relay.relay({ topic: packet.topic, payload, retain: packet.retain === true }).catch((e: unknown) => this.o.log.error('status not queued', { error: String(e) }));
    });
    this.site.aedes.on('subscribe', (subs, client) => {
      for (const s of subs) {
        const p = this.topics.parse(s.topic);
        if (p?.kind === 'release') this.learnFrom(client, p.group, p.model);
      }
    });
  }

  /** A site device's status: learn its group, and what it runs (which full-model steps the site needs). */
  private onSiteStatus(client: Client, deviceId: string, payload: Uint8Array): void {
    this.devices.add(deviceId);
    const s = parseStatus(payload);
    if (!s) return;
    this.learnFrom(client, s.group, s.model);
    const before = this.digests.get(deviceId);
    this.digests.set(deviceId, { group: s.group, model: s.model, running: s.running });
    if (before?.running !== s.running || before.group !== s.group) this.serial(() => this.mirror.onDevice(s.group, s.model));
  }

  private startTick(): void {
    this.lastWire = 0;
    this.tick = setInterval(() => {
      this.account();
      this.evaluate();
      this.publishStatus(false);
    }, this.o.tickMs);
    this.evaluate();
  }

  /** Let the pending reactions finish, react no more, and keep the budget ledger. */
  private async quiesce(): Promise<void> {
    await this.settled();
    this.closed = true;
    if (this.ledgerDirty) await writeFileAtomic(this.dir('budget.json'), JSON.stringify(this.ledger));
  }

  /**
   * A site client names a group and model (in a status or a release subscription). With the site's
   * --auth only a device user's own pair is learned, whatever it names; without, the pair it names,
   * within the --learn-groups cap.
   */
  private learnFrom(client: Client | null, group: string, model: string): void {
    if (!client) return;
    if (this.site.auth) {
      const p = this.site.auth.principalOf(client);
      if (p?.role === 'device' && p.group && p.model) void this.groups.learn(p.group, p.model);
      return;
    }
    void this.groups.learn(group, model);
  }

  /** What the gateway learns from its devices (its status shows it). */
  private learning(): LearningSummary {
    const cap = this.o.learnGroups ?? (this.o.auth ? Infinity : 0);
    return { mode: this.o.auth ? 'logins' : cap > 0 ? 'devices' : 'off', learned: this.groups.learnedCount, cap: Number.isFinite(cap) ? cap : null, refused: this.groups.refused };
  }

  /** Charge what the upstream socket carried since the last look to this month's budget. */
  private account(): void {
    const w = this.upstream.stats();
    const total = w.bytesIn + w.bytesOut;
    if (total > this.lastWire) {
      this.ledger = charge(this.ledger, this.now(), total - this.lastWire);
      this.lastWire = total;
      this.ledgerDirty = true;
    }
    if (this.o.budgetBytes !== undefined && this.decision.go && used(this.ledger, this.now()) >= this.o.budgetBytes) this.evaluate();
  }

  /** Decide whether upstream downloads may run, and pause or resume them. */
  private evaluate(): void {
    if (this.closed) return;
    const d = decide({
      now: this.now(),
      window: this.o.window,
      budgetBytes: this.o.budgetBytes,
      usedBytes: used(this.ledger, this.now()),
      upstreamConnected: this.linkUp && this.upstream.connected,
    });
    const changed = d.go !== this.decision.go || (!d.go && !this.decision.go && d.reason !== this.decision.reason);
    this.decision = d;
    if (!changed) return;
    if (d.go) {
      this.o.log.info('upstream downloads may run');
      this.fetcher.resume();
    } else {
      this.o.log.info('upstream downloads wait', { reason: d.reason, message: d.message });
      // Chunks already asked for are paid for: take them (a few seconds). A link that went keeps the
      // fetch (and what it measured of the link) for a while, to go on with it when the link is back.
      void (d.reason === 'upstream-down' ? this.fetcher.linkLost(Math.min(LINK_LOST_HOLD_MS, this.o.stallMs / 2)) : this.fetcher.pause(this.o.drainMs));
    }
    this.publishStatus(true);
  }

  private publishLocal(topic: string, bytes: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      this.site.aedes.publish({ cmd: 'publish', topic, payload: Buffer.from(bytes), qos: 1, retain: true, dup: false }, (e) => (e ? reject(e) : resolve()));
    });
  }

  async status(): Promise<GatewayStatus> {
    const w = this.upstream.stats();
    const d = this.decision;
    const busy = this.fetcher.busy;
    const cache: GatewayStatus['cache'] = [];
    for (const id of await fs.readdir(this.dir('site', 'store', 'updates')).catch(() => [] as string[])) {
      const m = await this.store.meta(id);
      if (m) cache.push({ updateId: m.updateId, model: m.model, size: m.size });
    }
    return {
      site: this.o.site,
      gateway: VERSION,
      upstream: { state: this.upstream.connected ? 'connected' : 'down', connects: w.connects, since: this.linkSince ? new Date(this.linkSince).toISOString() : null },
      downloads: !busy ? 'idle' : d.go ? 'running' : 'waiting',
      waiting: busy && !d.go ? d.reason : null,
      message: busy && !d.go ? d.message : null,
      resumesAt: busy && !d.go && d.until !== null ? new Date(d.until).toISOString() : null,
      fetched: { payloadBytes: this.fetcher.payloadBytes, wireBytesIn: w.bytesIn, wireBytesOut: w.bytesOut },
      budget: { month: monthKey(this.now()), usedBytes: used(this.ledger, this.now()), limitBytes: this.o.budgetBytes ?? null },
      window: this.o.window ? formatWindow(this.o.window) : null,
      cache,
      fetching: this.fetcher.state(),
      releases: this.mirror.state(),
      relay: { queued: this.relay.queued, relayed: this.relay.relayed, merged: this.relay.merged },
      devices: this.devices.size,
      learning: this.learning(),
      time: new Date(this.now()).toISOString(),
    };
  }

  /** Publish the gateway's status upstream (retained) when it changed, at most once a second unless `urgent`; also `DIR/status.json`. */
  private publishStatus(urgent: boolean): void {
    if (this.closed) return;
    // Whether the link was up when the change came: one made as it went down is not sent when the
    // task runs after the reconnect (with the link's state as it was computed then).
    const linkWasUp = this.linkUp;
    this.serial(async () => {
      if (this.ledgerDirty) {
        this.ledgerDirty = false;
        await writeFileAtomic(this.dir('budget.json'), JSON.stringify(this.ledger));
      }
      const s = await this.status();
      // The local file follows every change, the counters' included (what the uplink carried so far).
      const { time: _ft, ...file } = { ...s, upstreamSent: this.upstream.sent, lastReleaseAt: this.lastReleaseAt, lastStored: this.lastStored } satisfies GatewayFileStatus;
      const fileJson = JSON.stringify(file);
      if (fileJson !== this.lastFileJson) {
        this.lastFileJson = fileJson;
        await writeFileAtomic(this.dir('status.json'), JSON.stringify({ ...file, time: s.time }, null, 1));
      }
      // What counts as a change upstream: not the clock nor the byte counters (publishing the status
      // moves them, which would publish again: a loop over a metered link), nor the relay's counters
      // (every device status relayed moved them: once a second while the site's devices download).
      // They go up with every change and at least every 30 s.
      // Nor each chunk of a fetch: its progress counts by statusProgressStep (a gateway status is
      // ~750 B with one release, and once a second while fetching cost more than the fetch's requests).
      const { time: _t, fetched: _f, budget, fetching, relay: _r, ...rest } = s;
      const progress = fetching.map((f) => ({ ...f, bytes: Math.floor(f.bytes / Math.max(1, f.totalBytes) / this.o.statusProgressStep) }));
      const json = JSON.stringify({ ...rest, progress, month: budget.month, exhausted: budget.limitBytes !== null && budget.usedBytes >= budget.limitBytes });
      const wallNow = Date.now();
      const periodic = wallNow - this.lastPublishedAt > 30_000;
      if (json === this.lastStatusJson && !periodic) return;
      // Upstream gets at most one a second unless it matters now.
      if (!linkWasUp || !this.linkUp || !this.upstream.connected || (!urgent && !periodic && wallNow - this.lastPublishedAt < 1000)) return;
      this.lastStatusJson = json;
      this.lastPublishedAt = wallNow;
      // Not awaited: a slow link must not hold up the gateway's other work.
      void this.upstream.publish(this.topics.gatewayStatus(this.o.site), JSON.stringify(s), { qos: 1, retain: true }).catch(() => {
        this.lastStatusJson = '';
      });
    });
  }

  /** For tests and shutdown: every queued status delivered upstream. */
  relayDrained(timeoutMs?: number): Promise<boolean> {
    return this.relay.drained(timeoutMs ?? this.o.relayDrainTimeoutMs);
  }

  /** Resolves after the pending reactions (releases, stored payloads) have run. */
  async settled(): Promise<void> {
    let w;
    do {
      w = this.work;
      await w;
    } while (w !== this.work);
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
          ...[...this.online].map((id) => this.upstream.publish(this.topics.presence(id), offline, { qos: 1, retain: true })),
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

function redact(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//');
}
