import type { MqttClient } from 'mqtt';

/**
 * A publish arriving proves the connection alive. MQTT.js restarts its keepalive only on
 * acknowledgements and PINGRESP, so on a backlogged downlink (frames queued ahead of the
 * PINGRESP, under loss) it declared a connection that was delivering frames dead after 1.5 ×
 * keepalive and reconnected, throwing away the frame under way. Here each publish restarts it;
 * a ping still goes up when we have sent nothing for half the keepalive, for the broker's own
 * keepalive check. Counts the PINGRESPs received (`pongs`).
 */
export function keepAliveOnPublishes(client: MqttClient, keepaliveSeconds: number): { pongs: () => number } {
  let pongs = 0;
  const halfMs = (keepaliveSeconds * 1000) / 2;
  let sentAt = Date.now();
  client.on('packetsend', () => {
    sentAt = Date.now();
  });
  client.on('packetreceive', (packet) => {
    if (packet.cmd === 'pingresp') pongs++;
    if (packet.cmd !== 'publish' || halfMs <= 0) return;
    client.reschedulePing(true);
    if (Date.now() - sentAt >= halfMs) client.sendPing();
  });
  return { pongs: () => pongs };
}
