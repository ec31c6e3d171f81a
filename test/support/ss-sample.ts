/** A real `ss -tin` sample (test/platform/tcp-senders, test/simulations/sender-pacing, test/broker/pinned-senders). */
// `ss -tin state established dst 10.77.0.2` in the server namespace of a ten-device run at 20 % loss
// (2026-12-07; info lines cut short): a connection pinned at 11.7 kbit/s with 76,744 bytes queued, one
// with nothing queued, and one whose estimate is the link's. The last two are made up: a cubic
// connection (no BBR estimate) and ss's older unit form (`bw:1.5Mbps`).
export const SS = `Recv-Q Send-Q Local Address:Port  Peer Address:Port Process
0      76744      10.77.0.1:32541    10.77.0.2:33458
\t bbr wscale:10,10 rto:1676 rtt:213.814/308.262 ato:40 mss:1448 cwnd:2 ssthresh:8 bytes_acked:95622 bbr:(bw:11736bps,mrtt:0.065,pacing_gain:1,cwnd_gain:1) send 108356bps pacing_rate 11616bps notsent:70952
0      0          10.77.0.1:32541    10.77.0.2:53898
\t bbr wscale:10,10 rto:792 rtt:439.399/43.13 ato:40 mss:1448 cwnd:7 bbr:(bw:251826024bps,mrtt:0.046,pacing_gain:1,cwnd_gain:2) send 184543bps
0      30313      10.77.0.1:32541    10.77.0.2:53894
\t bbr wscale:10,10 rto:1540 rtt:556.346/174.039 mss:1448 cwnd:5 bbr:(bw:146376bps,mrtt:0.023,pacing_gain:1,cwnd_gain:2) send 104108bps
0      4000       10.77.0.1:32542    10.77.0.2:40100
\t cubic wscale:10,10 rto:204 rtt:3.1/1.5 mss:1448 cwnd:10 send 37367bps
0      9000       [::ffff:10.77.0.1]:32541    [::ffff:10.77.0.2]:40200
\t bbr wscale:7,7 rto:204 bbr:(bw:1.5Mbps,mrtt:0.1,pacing_gain:2.88672,cwnd_gain:2.88672)
`;
