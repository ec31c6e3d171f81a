import type { AedesOptions } from 'aedes';
import { encodePresence, parsePresence } from '../protocol/status.ts';
import type { Topics } from '../protocol/topics.ts';

type AuthorizePublish = NonNullable<AedesOptions['authorizePublish']>;

/**
 * A presence without a time (a device's last will is a bare `offline`: it was
 * set at connect, long before the connection dropped) is stamped with the
 * time the broker publishes it, so operators see when a device went away
 * (docs/protocol.md §8.2). Then `inner` (the ACL) decides as before.
 */
export function stampPresence(topics: Topics, inner: AuthorizePublish | undefined, now: () => number = Date.now): AuthorizePublish {
  return (client, packet, cb) => {
    if (topics.parse(packet.topic)?.kind === 'presence') {
      const p = parsePresence(packet.payload as Uint8Array);
      if (p && p.since === null) packet.payload = Buffer.from(encodePresence(p.state, now()));
    }
    if (inner) inner(client, packet, cb);
    else cb(null);
  };
}
