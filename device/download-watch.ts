import { encodeFrame } from '../protocol/frames.ts';
import type { ReleaseStep } from '../protocol/release.ts';
import { RESUME_MIN_BYTES } from './chunk-resume.ts';
import { DEVICE_DEFAULTS } from './defaults.ts';
import type { DownloadOptions } from './download.ts';
import type { LinkEstimator } from './link-estimator.ts';
import { SilenceWatch } from './silence-watch.ts';

/**
 * The most bytes one chunk's MQTT packet takes on the wire: the largest chunk's frame (encoded, not
 * estimated), its topic and the fixed header (type, up to 4 length bytes, the topic's length; QoS 0,
 * no packet id). A reconnect in the middle of a frame throws away at most this much.
 */
export function chunkPacketBytes(step: ReleaseStep, topic: string): number {
  const frame = encodeFrame({ kind: 'chunk', updateId: step.updateId, index: step.chunks - 1, count: step.chunks, data: new Uint8Array(step.chunkSize) });
  return 1 + 4 + 2 + new TextEncoder().encode(topic).byteLength + frame.byteLength;
}

/** What of the Download the watch reads: its link estimate, and whether it waits for anything. */
export interface WatchedDownload {
  link: LinkEstimator;
  waiting: () => boolean;
}

/**
 * The silence watch of one Download (device/silence-watch.ts): probes and reconnects when the socket
 * stays silent while chunks are outstanding, within a byte budget. Undefined when the transport cannot
 * probe or reconnect, or the socket's byte counter is missing.
 */
export function downloadSilenceWatch(o: DownloadOptions, d: WatchedDownload): SilenceWatch | undefined {
  const { transport: t, wireBytesIn } = o;
  if (!t.probe || !t.reconnect || !wireBytesIn) return undefined;
  const maxReconnects = Math.max(1, Math.floor(o.step.chunks / DEVICE_DEFAULTS.chunksPerSilentReconnect));
  return new SilenceWatch({
    clock: o.clock,
    log: o.log,
    bytesIn: wireBytesIn,
    waiting: d.waiting,
    // The smaller of the chunks' least round trip and the quickest TCP handshake: ten devices asking at
    // once measured their first chunks 10-14 s after the request (queued behind each other's frames),
    // and 4 × that kept a device silent 24-50 s from probing at all.
    rttMs: () => {
      const rtts = [d.link.minRttMs, t.handshakeMs?.() ?? 0].filter((x) => x > 0);
      return rtts.length ? Math.min(...rtts) : 0;
    },
    chunkMs: () => {
      const bps = d.link.bytesPerSecond(o.clock.now());
      return bps > 0 ? (1000 * o.step.chunkSize) / bps : 0;
    },
    probe: (ms) => t.probe!(ms),
    reconnect: (why) => t.reconnect!(why),
    nudge: t.nudge ? () => t.nudge!() : undefined,
    nudgeMs: DEVICE_DEFAULTS.nudgeMs,
    answers: t.pongs ? () => t.pongs!() : undefined,
    minSilenceMs: o.probeSilenceMs ?? DEVICE_DEFAULTS.probeSilenceMs,
    maxReconnects,
    // A device counts the part of a frame a reconnect would keep as lost all the same: ten devices
    // sharing a link reconnected twice as often mid-frame when it was not, and took 1.3-1.5 x as long
    // (docs/links.md, seventh pass); a fetcher alone on its link resumes it (see reconnectBudget).
    costBytes: t.reconnectCost ? () => t.reconnectCost!() + (o.aloneOnLink ? 0 : (t.resumableBytes?.() ?? 0)) : undefined,
    budgetBytes: reconnectBudget(o, maxReconnects),
    unmeasuredFactor: o.unmeasuredSilenceFactor,
  });
}

/** The bytes the silence watch may spend on reconnects (see `aloneOnLink`). */
function reconnectBudget(o: DownloadOptions, maxReconnects: number): number | (() => number) {
  const { step, topics, model, deviceId, transport: t } = o;
  const share = Math.round(step.size * DEVICE_DEFAULTS.silentReconnectBudget);
  if (!o.aloneOnLink) return share;
  const packet = chunkPacketBytes(step, topics.frames(model, step.updateId, deviceId));
  // With a transport that keeps a cut frame, a reconnect throws away at most the frame's head and
  // less than RESUME_MIN_BYTES of its data (more is kept and resumed: `reconnectCost` does not count it).
  const lost = t.takePartial ? Math.min(packet, packet - step.chunkSize + RESUME_MIN_BYTES) : packet;
  return () => Math.max(share, maxReconnects * (lost + (t.retainedBytes?.() ?? 0)));
}
