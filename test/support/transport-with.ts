import type { Transport } from '../../transport/types.ts';

/**
 * A real transport with some of its calls replaced (a slow publish, a refused subscribe): every
 * call `over` does not name goes to `inner`. For a part under test that takes a Transport; only
 * the interface's required members are passed on (the optional ones, probe and the costs, are absent).
 */
export function transportWith(inner: Transport, over: Partial<Transport>): Transport {
  return {
    publish: (topic, payload, opts) => inner.publish(topic, payload, opts),
    subscribe: (filters, qos, opts) => inner.subscribe(filters, qos, opts),
    unsubscribe: (filters) => inner.unsubscribe(filters),
    onMessage: (h) => inner.onMessage(h),
    onConnect: (h) => inner.onConnect(h),
    onDisconnect: (h) => inner.onDisconnect(h),
    get connected() {
      return inner.connected;
    },
    close: (grace) => inner.close(grace),
    ...over,
  };
}
