import { errorFields } from '../platform/errors.ts';
import type { Logger } from '../util/log.ts';

/**
 * The gateway's async reactions to events (releases, stored payloads, policy, status), run one at
 * a time in the order they came; one that fails is logged and the next runs.
 */
export class SerialWork {
  private work: Promise<void> = Promise.resolve();

  constructor(private readonly log: Logger) {}

  /** Queue `fn` after the reactions already queued. */
  run(fn: () => Promise<void>): void {
    this.work = this.work.then(fn).catch((e: unknown) => this.log.error('gateway step failed', errorFields(e)));
  }

  /** Resolves after the queued reactions have run, those they queued meanwhile included. */
  async settled(): Promise<void> {
    let w;
    do {
      w = this.work;
      await w;
    } while (w !== this.work);
  }
}
