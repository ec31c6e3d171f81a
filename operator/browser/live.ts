/**
 * The dashboard's MQTT-over-WebSocket feed, for the browser. Bundled with mqtt.js's
 * browser build and the view model (operator/fleet-view.ts) into one script by
 * operator/browser/bundle.ts; the page's own script (operator/dashboard-page.ts)
 * calls `globalThis.fleetLive.connect(...)` and draws the rows it is handed.
 *
 * Read only: it subscribes to the retained statuses, presence, rollout statuses
 * and releases (what the broker's `viewer` role allows) and never publishes.
 * It reconnects by itself (mqtt.js, 2 s), except after a refused login.
 * No DOM here: this file also type-checks under the project's Node settings.
 */
import { resolveOperatorConfig } from '../defaults.ts';
import mqtt from 'mqtt';
import { FleetView, type DeviceRow, type RolloutRow } from '../fleet-view.ts';
import { Topics } from '../../protocol/topics.ts';

export type LiveState = 'connecting' | 'live' | 'reconnecting' | 'refused' | 'closed';

export interface LiveOptions {
  /** ws:// or wss:// URL of the broker's WebSocket listener. */
  url: string;
  username: string;
  password: string;
  prefix?: string;
  /** Silent after this (ms; default 60 000), as `--stale`. */
  staleMs?: number;
  /** Reconnect delay (ms; default 2000). */
  reconnectMs?: number;
}

export interface LiveHandlers {
  /** Connection state; `detail` says why for `refused` / `reconnecting`. */
  state(s: LiveState, detail?: string): void;
  device(id: string, row: DeviceRow | null): void;
  rollout(id: string, row: RolloutRow | null): void;
}

export interface LiveFeed {
  view: FleetView;
  close(): void;
}

/** CONNACK return codes of MQTT 3.1.1 that mean the login itself was refused: retrying cannot help. */
const LOGIN_REFUSED = new Set([4, 5, 134, 135]);

export function connect(o: LiveOptions, h: LiveHandlers): LiveFeed {
  const view = new FleetView(new Topics(o.prefix), { staleMs: o.staleMs });
  view.onChange((changes) => {
    for (const c of changes) {
      if (c.kind === 'device') h.device(c.device, c.row);
      else h.rollout(c.rollout, c.row);
    }
  });
  h.state('connecting');
  const client = mqtt.connect(o.url, {
    protocolVersion: 4,
    username: o.username,
    password: o.password,
    clientId: `fleet-dashboard-${Math.random().toString(36).slice(2, 10)}`,
    clean: true,
    reconnectPeriod: resolveOperatorConfig({ liveReconnectMs: o.reconnectMs }).liveReconnectMs,
    connectTimeout: 15_000,
    resubscribe: false,
  });
  let refused = false;
  client.on('connect', () => {
    // Every (re)connect subscribes afresh; the broker re-sends what is retained and the view drops identical re-deliveries.
    client.subscribe(view.filters(), { qos: 1 }, (err, granted) => {
      if (err) return h.state('reconnecting', err.message);
      const bad = (granted ?? []).filter((g) => g.qos === 128).map((g) => g.topic);
      if (bad.length) h.state('refused', `subscription refused: ${bad.join(', ')}`);
      else h.state('live');
    });
    // Releases only give the full-model size; a broker that refuses them costs only that.
    client.subscribe(view.releaseFilter(), { qos: 1 }, () => undefined);
  });
  client.on('message', (topic, payload, packet) => {
    view.handle(topic, payload, packet.retain === true);
  });
  client.on('error', (e: Error & { code?: number }) => {
    if (typeof e.code === 'number' && LOGIN_REFUSED.has(e.code)) {
      refused = true;
      h.state('refused', 'the broker refused this login');
      client.end(true);
    }
  });
  client.on('reconnect', () => h.state('reconnecting'));
  client.on('offline', () => {
    if (!refused) h.state('reconnecting', 'connection lost');
  });
  const refresh = setInterval(() => view.refresh(), 1000);
  return {
    view,
    close() {
      clearInterval(refresh);
      client.end(true);
      h.state('closed');
    },
  };
}

(globalThis as { fleetLive?: unknown }).fleetLive = { connect };
