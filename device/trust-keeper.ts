import path from 'node:path';
import { isProtocolError } from '../protocol/errors.ts';
import { parseTrustFile, rolloutRole, verifyTrustUpdate, type TrustFile } from '../protocol/release.ts';
import { writeFileAtomic } from '../util/fs-atomic.ts';
import type { Logger } from '../util/log.ts';
import type { DeviceStorage } from './storage.ts';

export type TrustOffer =
  /**
   * `newRolloutRole`: the new trust file shares no rollout key with the old one,
   * so sequence numbers start again (TUF's recovery from a fast-forward by a
   * compromised rollout key: the old key's assignments no longer verify).
   */
  { kind: 'rotated'; trust: TrustFile; newRolloutRole: boolean } | { kind: 'same' } | { kind: 'refused'; error: unknown };

/**
 * The device's trust file and its rotations. The file the agent was started
 * with is the floor; a rotation (a new trust file signed by the current
 * release threshold, retained on `fleet/trust`) is checked, written to the
 * device directory (`trust.json`, atomically) and used from then on, also
 * after a restart. Nothing else changes the device's keys.
 */
export class TrustKeeper {
  private trust: TrustFile;

  constructor(
    initial: TrustFile,
    private readonly storage: DeviceStorage,
    private readonly log: Logger,
  ) {
    this.trust = initial;
  }

  get current(): TrustFile {
    return this.trust;
  }

  private get file(): string {
    return path.join(this.storage.dir, 'trust.json');
  }

  /** Takes a rotated trust file stored before when it is newer than the one given at start. */
  async load(): Promise<void> {
    let text: string;
    try {
      text = new TextDecoder().decode(await this.storage.fsys.readFile(this.file));
    } catch {
      return;
    }
    try {
      const stored = parseTrustFile(text);
      if ((stored.version ?? 0) > (this.trust.version ?? 0)) this.trust = stored;
    } catch (e) {
      this.log.warn('the stored trust file is unreadable; keeping the one given at start', { error: (e as Error).message });
    }
  }

  /** A signed trust file from the broker: verified against the current one, stored, used. */
  async offer(bytes: Uint8Array): Promise<TrustOffer> {
    let next: { trust: TrustFile; text: string };
    try {
      next = verifyTrustUpdate(bytes, this.trust);
    } catch (error) {
      // The retained copy of the version already held comes back on every connect.
      if (isProtocolError(error) && error.code === 'replayed') return { kind: 'same' };
      this.log.warn('refused a trust file update', { error: (error as Error).message });
      return { kind: 'refused', error };
    }
    await writeFileAtomic(this.file, next.text, 0o644, this.storage.fsys);
    const before = rolloutRole(this.trust).keys.map((k) => k.id);
    const after = new Set(rolloutRole(next.trust).keys.map((k) => k.id));
    this.trust = next.trust;
    this.log.info('trust file rotated', { version: next.trust.version ?? 0, releaseKeys: next.trust.keys.length, rolloutKeys: next.trust.rollout?.keys.length ?? 0 });
    return { kind: 'rotated', trust: next.trust, newRolloutRole: !before.some((id) => after.has(id)) };
  }
}
