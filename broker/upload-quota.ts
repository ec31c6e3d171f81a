/**
 * Uploads in progress per user: each distinct update id a user uploads to counts
 * until the update server's receipt says it is stored (or refused), or no chunk
 * has come for it for UPLOAD_TTL_MS (when the update server removes the
 * abandoned upload too). A user with MAX_OPEN_UPLOADS open may not
 * start another, so one login cannot fill the update server's disk with
 * uploads that never finish.
 */
import { UPLOAD_TTL_MS } from '../server/content-store.ts';

export const MAX_OPEN_UPLOADS = 16;

export class UploadQuota {
  private readonly open = new Map<string, Map<string, number>>();

  constructor(
    private readonly max = MAX_OPEN_UPLOADS,
    private readonly ttlMs = UPLOAD_TTL_MS,
  ) {}

  /** Records a chunk of `updateId` by `user`; false when it would open one upload too many. */
  allow(user: string, updateId: string, now = Date.now()): boolean {
    let mine = this.open.get(user);
    if (!mine) this.open.set(user, (mine = new Map()));
    for (const [id, last] of mine) if (now - last > this.ttlMs) mine.delete(id);
    if (!mine.has(updateId) && mine.size >= this.max) return false;
    mine.set(updateId, now);
    return true;
  }

  /** The update server stored (or refused) `updateId`: it is no one's upload in progress any more. */
  finish(updateId: string): void {
    for (const mine of this.open.values()) mine.delete(updateId);
  }
}
