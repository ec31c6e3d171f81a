import { Gateway, type GatewayOptions } from '../gateway/gateway.ts';
import { startBroker } from './broker-node.ts';

export type GatewayNodeOptions = Omit<GatewayOptions, 'startSite'>;

/**
 * `fleet gateway`: the gateway's steps (gateway/gateway.ts) with a broker node
 * (Aedes and its own update server, nodes/broker-node.ts) as its site broker.
 * Not started: `start()` runs the steps, `close()` stops them in reverse.
 */
export function gatewayNode(o: GatewayNodeOptions): Gateway {
  return new Gateway({ ...o, startSite: startBroker });
}
