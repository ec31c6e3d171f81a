/**
 * An in-memory connection to an Aedes broker, for broker unit tests where a socket adds nothing
 * (as Aedes' own tests do with duplexify pairs): the client end goes to MQTT.js, the server end to
 * `aedes.handle()`. Ending one end ends the other; destroying one (a client cut off) ends the
 * other too, as a socket's peer sees the connection close. Integration tests stay on real TCP.
 */
import { Duplex } from 'node:stream';
import type { Aedes } from 'aedes';
import { MqttClient, type IClientOptions } from 'mqtt';

class End extends Duplex {
  other!: End;

  constructor() {
    // Like a TCP socket without half-open: the end of what it reads ends what it writes.
    super({ allowHalfOpen: false });
  }

  override _read(): void {
    // Data arrives by the other end's writes.
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (e?: Error | null) => void): void {
    // Bytes written to a connection its peer has closed go nowhere.
    if (!this.other.destroyed && !this.other.readableEnded) this.other.push(chunk);
    done();
  }

  override _final(done: (e?: Error | null) => void): void {
    this.other.finishReading();
    done();
  }

  override _destroy(error: Error | null, done: (e?: Error | null) => void): void {
    this.other.finishReading();
    done(error);
  }

  /** The peer closed: what this end reads ends (once, and never after it is destroyed). */
  finishReading(): void {
    if (!this.destroyed && !this.readableEnded) this.push(null);
  }
}

/** Two connected ends: what one writes, the other reads. */
export function memoryPair(): [client: Duplex, server: Duplex] {
  const a = new End();
  const b = new End();
  a.other = b;
  b.other = a;
  return [a, b];
}

/** An MQTT.js client connected to `aedes` over an in-memory pair (a new pair at each connect; give `reconnectPeriod: 0`). */
export function memoryClient(aedes: Aedes, options: IClientOptions): MqttClient {
  return new MqttClient(() => {
    const [client, server] = memoryPair();
    aedes.handle(server as never);
    return client;
  }, options);
}
