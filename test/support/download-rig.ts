import { Download, type DownloadOptions } from '../../device/download.ts';
import { DeviceStorage, type DownloadFiles } from '../../device/storage.ts';
import type { ReleaseStep } from '../../protocol/release.ts';
import { Topics } from '../../protocol/topics.ts';
import type { Transport } from '../../transport/types.ts';
import { silentLogger } from '../../util/log.ts';
import type { Owner } from './cleanup.ts';
import { ManualClock } from './clock.ts';

/** What a download test sets: the transport stub, the clock if it needs it first, and the options that differ from the rig's. */
export interface DownloadRigOptions extends Partial<Omit<DownloadOptions, 'step' | 'files' | 'transport' | 'clock'>> {
  /** A stub with only what the test's Download calls (publish; probe, reconnect, the costs, ...): never a connection. */
  transport: Partial<Transport>;
  clock?: ManualClock;
}

/**
 * A Download of `step` on real storage in a temporary directory (`tag` names it; `own` removes it
 * after the test), a stub transport and a manual clock: model 'm', device 'd', a window of 8, idle
 * 1 s, stall 600 s, 3 bad copies, callbacks that do nothing (onFail throws), unless `o` sets them.
 * Not started.
 */
export async function downloadRig(own: Owner, tag: string, step: ReleaseStep, o: DownloadRigOptions): Promise<{ d: Download; clock: ManualClock; files: DownloadFiles }> {
  const storage = new DeviceStorage(await own.tempDir(`${tag}-`));
  await storage.init();
  const files = await storage.openDownload(step);
  const { transport, clock = new ManualClock(), ...set } = o;
  const d = new Download({
    step,
    files,
    transport: transport as Transport,
    topics: new Topics(),
    model: 'm',
    deviceId: 'd',
    clock,
    log: silentLogger,
    maxWindow: 8,
    idleMs: 1000,
    stallMs: 600_000,
    maxBadCopies: 3,
    onProgress: () => undefined,
    onComplete: () => undefined,
    onFail: (e) => {
      throw e;
    },
    ...set,
  });
  return { d, clock, files };
}
