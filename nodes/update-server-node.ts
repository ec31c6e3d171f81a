import { startStepsOnto, type Step, type StopStack } from '../platform/steps.ts';
import { Topics } from '../protocol/topics.ts';
import { ContentStore } from '../server/content-store.ts';
import { UpdateServer } from '../server/update-server.ts';
import { MqttTransport } from '../transport/mqtt.ts';
import { DirLock } from '../util/dir-lock.ts';
import type { Logger } from '../util/log.ts';

export interface UpdateServerNodeOptions {
  /** Any MQTT 3.1.1 broker, e.g. mqtt://127.0.0.1:1883. */
  broker: string;
  /** The update store. */
  dataDir: string;
  prefix?: string;
  log: Logger;
}

interface Parts {
  readonly o: UpdateServerNodeOptions;
  transport?: MqttTransport;
  server?: UpdateServer;
}

/** `fleet serve`, in the order it starts; the command's stop runs the stops in reverse. */
export const UPDATE_SERVER_NODE: readonly Step<Parts>[] = [
  // One server per store (released when the process exits, taken over from a dead one).
  { name: 'store lock', start: async (p) => void (await DirLock.acquire(p.o.dataDir, 'fleet serve')) },
  {
    name: 'MQTT disconnect',
    optional: true,
    start: (p) => void (p.transport = MqttTransport.start({ url: p.o.broker, clientId: `fleet-update-server-${process.pid}` })),
    stop: (p) => p.transport?.close(),
  },
  {
    name: 'update server (requests in progress, store)',
    async start(p) {
      p.server = new UpdateServer({ transport: p.transport!, store: new ContentStore(p.o.dataDir), topics: new Topics(p.o.prefix), log: p.o.log });
      await p.server.start();
    },
    stop: (p) => p.server?.stop(),
  },
];

/** The update server alone, beside any MQTT 3.1.1 broker; its stops go onto `stack` (the command's graceful stop). */
export async function startUpdateServerNode(o: UpdateServerNodeOptions, stack: StopStack): Promise<void> {
  await startStepsOnto(UPDATE_SERVER_NODE, { o }, stack);
}
