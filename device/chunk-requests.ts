import type { ChunkFrame } from '../protocol/frames.ts';
import type { DownloadFiles } from './storage.ts';

/** A probe: the chunk asked again alone, and what was outstanding before it (`ChunkRequests.probe`). */
export interface Probe {
  index: number;
  before: Set<number>;
  /**
   * The chunk was asked for already and may still come: the probe asks only for its last byte (a
   * one-byte tail, protocol.md §4.2), whose answer tells what was lost without bringing the chunk
   * twice when the first answer was only late. False when the probe is a chunk not asked for before.
   */
  marker: boolean;
}

/**
 * What one Download has asked for and what it asks for next: the chunks outstanding, held over a
 * reconnect, or on their way to disk; whether the chunk list was asked for; and the probe of a lost
 * chunk after a silence or a reconnect. It decides which indices a request carries; the Download
 * sends it, and tells it what arrived.
 */
export class ChunkRequests {
  readonly outstanding = new Set<number>();
  /** Verified chunks on their way to disk: neither missing nor outstanding. */
  readonly writing = new Set<number>();
  /**
   * After a reconnect: the chunks outstanding on the old connection, not asked again yet. Their
   * request may still have been served (it reached the broker as the link came back, and the broker
   * delivers to the client id, now on the new connection): asking again at once sent each twice.
   * They wait for the first chunk of the request made after the reconnect (`probe`); what of them
   * has not come by then was lost, and only that is asked again.
   */
  readonly held = new Set<number>();
  /** The chunk being handled (`arrived`), not yet written: not missing while it answers the probe. */
  private arriving: number | undefined;
  private readonly inFlight = { has: (i: number): boolean => this.outstanding.has(i) || this.writing.has(i) || this.held.has(i) || i === this.arriving };
  listRequested = false;
  /**
   * After a silence: the chunk asked again alone (the one asked for last), and
   * what was outstanding before it. Frames come back in the order they were
   * asked for, over one TCP connection; so when that chunk arrives, whatever
   * asked for before it and still missing was lost, and only that is asked
   * again. Of a chunk asked for before, only the last byte is asked (`marker`):
   * a link that was merely stalled (TCP backing off after a cut) then costs a
   * one-byte frame (one duplicate chunk with a server that ignores `tail`), not
   * a window of them.
   */
  probe: Probe | undefined;
  /** Chunks whose last byte alone was asked for as a probe's marker (`Probe.marker`): a one-byte tail of one is that answer. */
  private readonly markers = new Set<number>();

  constructor(
    private readonly files: Pick<DownloadFiles, 'list' | 'bitmap'>,
    /** Bytes of chunk i (the last one may be short). */
    private readonly chunkLength: (i: number) => number,
  ) {}

  /** Received: on disk or on its way there. */
  received(i: number): boolean {
    return this.files.bitmap.has(i) || this.writing.has(i);
  }

  /** Anything asked for has not come yet (the silence watch probes only then). */
  waiting(): boolean {
    return this.outstanding.size > 0 || (this.listRequested && !this.files.list);
  }

  /**
   * The next request within `window`, `urgent` first, or undefined when there is nothing to ask for
   * yet; what it asks for counts as outstanding from now.
   */
  next(window: number, urgent: number[]): { want: number[]; list: boolean } | undefined {
    const { files } = this;
    const list = !files.list && !this.listRequested;
    if (!files.list && !list) return undefined;
    // With the list, the first window is asked for at once: its chunks wait for the list (the Download's `early`).
    const room = window - this.outstanding.size - urgent.length;
    // Ask when the window has drained by half, so requests carry several indices.
    const more = room >= Math.max(1, window / 2) || this.outstanding.size === 0 ? files.bitmap.missing(Math.max(0, room), this.inFlight) : [];
    const want = [...urgent, ...more.filter((i) => !urgent.includes(i))];
    if (!list && want.length === 0) return undefined;
    for (const i of want) this.outstanding.add(i);
    if (list) this.listRequested = true;
    return { want, list };
  }

  /** Nothing is outstanding, held or probed any more, and the list is to be asked again if missing. */
  forget(): void {
    this.probe = undefined;
    this.outstanding.clear();
    this.held.clear();
    this.listRequested = false;
  }

  /**
   * After a reconnect (`Download.resend`): what to ask for now (`cut`, the chunk whose frame the close
   * cut, first), or undefined when nothing was outstanding (`forget`, then ask afresh). The old
   * outstanding chunks (a probe's among them) are held, to be asked again only if they have not come
   * when the first of these does; with nothing new to ask for, the last of them is that first one,
   * and only its marker is asked. Before the chunk list has come, the list is asked again with that
   * marker: asking the first window again sent it twice when the first request was answered on the
   * new connection (four chunks to one device in a ten-device run at 20 % loss).
   */
  afterReconnect(window: number, cut: number | undefined): number[] | undefined {
    const old = [...this.outstanding, ...this.held].filter((i) => i !== cut);
    if (old.length === 0) return undefined;
    this.outstanding.clear();
    this.held.clear();
    for (const i of old) this.held.add(i);
    const fresh = this.files.list ? this.files.bitmap.missing(window, this.inFlight).filter((i) => i !== cut) : [];
    if (!this.files.list) this.listRequested = false;
    if (cut !== undefined) fresh.unshift(cut);
    // The end of the payload (or no list yet), nothing new to ask for: the last old chunk is the one
    // asked first, alone, and the rest held as above (asking them all again at once sent each twice
    // when the old request had reached the server as the link came back: seven chunks to one device
    // in a ten-device run at 20 % loss). Only its last byte is asked for (a marker): the chunk itself
    // may still come on the old request.
    const marker = fresh.length === 0;
    if (marker) fresh.push(old.at(-1)!);
    this.held.delete(fresh[0]);
    this.probe = { index: fresh[0], before: new Set(old.filter((i) => i !== fresh[0])), marker };
    return fresh;
  }

  /**
   * After a silence: the chunk asked for last, to be asked again alone before the rest (the probe), or
   * undefined when everything outstanding is to be asked again instead. Before the chunk list has
   * come, the list is asked again with it (its answer comes ahead of the probe's chunk, and chunks
   * before the list wait for it): asking the whole first window again sent it twice when the first
   * request's answer was only late (a PINGRESP overtakes frames not yet on the device's socket; two
   * of six ten-device runs at 20 % loss, 22-26 s for the first answer). Only with no probe out: a
   * silence with one out asks for its chunk again (Download's idle). A single chunk outstanding is
   * probed too: its marker tells whether it is late or lost.
   */
  probeLast(): number | undefined {
    const last = [...this.outstanding].at(-1);
    if (last === undefined) return undefined;
    if (!this.files.list) this.listRequested = false;
    const before = new Set(this.outstanding);
    before.delete(last);
    this.probe = { index: last, before, marker: true };
    this.outstanding.delete(last);
    return last;
  }

  /**
   * A silence with a probe out: its chunk, to be asked for again, and from now on only its marker
   * (it was asked for once and may still come: asking it whole again sent it twice, chunk 4 of a
   * device in a ten-device run at 20 % loss). Undefined with no probe out.
   */
  probeAgain(): number | undefined {
    if (this.probe) this.probe.marker = true;
    return this.probe?.index;
  }

  /**
   * The request's `tail` entries: those of the held prefix (`prefixTails`, ChunkResume.tails), and
   * the probe's marker when the request asks for the probe's chunk: `[index, length − 1]`, the chunk's
   * last byte, in place of the prefix's tail (the tail was asked for once already and may still
   * come: asked again whole it came twice, a device in a ten-device run at 20 % loss).
   */
  tails(want: readonly number[], prefixTails: Array<[number, number]>): Array<[number, number]> {
    const p = this.probe;
    if (!p?.marker || !want.includes(p.index)) return prefixTails;
    const length = this.chunkLength(p.index);
    if (length < 2) return prefixTails;
    this.markers.add(p.index);
    return [...prefixTails.filter(([i]) => i !== p.index), [p.index, length - 1]];
  }

  /** A tail frame that joins nothing held is the answer to a marker asked for: the chunk's last byte. */
  isMarker(f: ChunkFrame): boolean {
    return this.markers.has(f.index) && f.offset === this.chunkLength(f.index) - 1;
  }

  /**
   * The one-byte answer to a probe's marker came (`Probe.marker`): every chunk asked for before it and
   * still missing was lost, the probe's own chunk with them, and is returned to be asked for again; an
   * empty list when all of them came. Undefined when it answers no probe out (a marker asked twice, or
   * the chunk came whole first and settled the probe): nothing to do.
   */
  markerAnswered(index: number): number[] | undefined {
    const p = this.probe;
    if (!p?.marker || p.index !== index) return undefined;
    const lost = [...p.before, index].filter((i) => (this.outstanding.has(i) || this.held.has(i)) && !this.received(i));
    this.probe = undefined;
    this.held.clear();
    for (const i of lost) this.outstanding.delete(i);
    return lost;
  }

  /** A chunk came that no longer needs asking for: whether it was asked for (outstanding or held). */
  settle(index: number): boolean {
    return [this.outstanding.delete(index), this.held.delete(index)].some(Boolean);
  }

  /**
   * A chunk arrived (before it is checked). When it answers the probe, what was asked for before it
   * and is still missing was lost: `askAgain` is called with it while this chunk counts as in flight
   * (checked by the caller, and asked again there if bad, it is not asked for with the lost ones).
   */
  arrived(index: number, askAgain: (lost: number[]) => void): void {
    this.settle(index);
    if (this.probe?.index !== index) return;
    const lost = [...this.probe.before].filter((i) => this.outstanding.has(i) || this.held.has(i));
    this.probe = undefined;
    this.held.clear();
    if (lost.length === 0) return;
    for (const i of lost) this.outstanding.delete(i);
    this.arriving = index;
    askAgain(lost);
    this.arriving = undefined;
  }
}
