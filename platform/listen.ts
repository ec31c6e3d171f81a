import type net from 'node:net';

/** The address a client on this machine connects to for a listener on `host`: loopback for the wildcard addresses. */
export function connectableHost(host: string): string {
  return host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
}

/** Listen on `port` (0: any free port) at `host`; resolves with the port bound, rejects with the listen error (EADDRINUSE, ...). */
export function listen(server: net.Server, port: number, host: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}
