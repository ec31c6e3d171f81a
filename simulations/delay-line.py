#!/usr/bin/env python3
"""A packet-level delay line between two network namespaces (the kernel has no netem).

  python3 delay-line.py SRV_NETNS SRV_IF SITE_NETNS SITE_IF DELAY_MS JITTER_MS SEED

Creates one TUN device in each namespace (by entering it with setns(2); Node cannot
issue the TUNSETIFF ioctl, hence Python), prints "ready" and then carries every IP
packet the kernel writes into one TUN out of the other after DELAY_MS plus a jitter
drawn uniformly from [-JITTER_MS, +JITTER_MS] (never below 0). Each direction stays
in order (a packet never leaves before the one ahead of it), as cellular radio links
deliver in order. The devices vanish when this process exits. Rate caps (tbf on the
TUN's egress) and loss (nftables on its ingress) are set by the caller with ip/tc/nft.
Reads stdin: EOF (the parent died) ends the line.
"""
import collections
import ctypes
import fcntl
import os
import random
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
MAX_QUEUED = 4096  # packets per direction; beyond it packets are dropped (a full buffer)


def open_tun(netns: str, ifname: str) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    nsfd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(nsfd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(nsfd)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def main() -> None:
    srv_ns, srv_if, site_ns, site_if, delay_ms, jitter_ms, seed = sys.argv[1:8]
    delay = float(delay_ms) / 1000
    jitter = float(jitter_ms) / 1000
    rng = random.Random(int(seed))
    srv = open_tun(srv_ns, srv_if)
    site = open_tun(site_ns, site_if)
    # fd read from -> (fd written to, queue of (due, packet), last due)
    lanes = {srv: [site, collections.deque(), 0.0], site: [srv, collections.deque(), 0.0]}
    print("ready", flush=True)
    stdin = sys.stdin.fileno()
    while True:
        now = time.monotonic()
        due = [lane[1][0][0] for lane in lanes.values() if lane[1]]
        timeout = max(0.0, min(due) - now) if due else 1.0
        readable, _, _ = select.select([srv, site, stdin], [], [], timeout)
        if stdin in readable and not os.read(stdin, 4096):
            return
        now = time.monotonic()
        for fd in (srv, site):
            if fd not in readable:
                continue
            lane = lanes[fd]
            while True:
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    break  # the device is down (a cut)
                if len(lane[1]) >= MAX_QUEUED:
                    continue
                at = max(now + max(0.0, delay + rng.uniform(-jitter, jitter)), lane[2])
                lane[2] = at
                lane[1].append((at, pkt))
        now = time.monotonic()
        for lane in lanes.values():
            q = lane[1]
            while q and q[0][0] <= now:
                _, pkt = q.popleft()
                try:
                    os.write(lane[0], pkt)
                except OSError:
                    pass  # down (a cut) or full: the packet is lost, as on a radio link


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
