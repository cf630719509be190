#!/usr/bin/env python3
"""Re-makes the golden loopback recording with the real daemon (root).

    cargo build -p keepalive-user
    sudo python3 keepalive-schema/golden/make-loopback.py target/debug/keepalive-observer

writes loopback.recording.jsonl beside this file and, by replaying it, loopback.findings.jsonl.
When only the findings' output changed (not the kernel side), re-make the findings of every
committed recording here (this one and the kernel streams of `cargo xtask vm-test --golden`)
with the real program, no root needed:

    python3 keepalive-schema/golden/make-loopback.py --replay-only target/debug/keepalive-observer

Traffic goes to loopback only: a linger-0 close after a survived idle gap with keepalive on, a
connect to a closed port, and a close with unread data.
"""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDING = os.path.join(HERE, "loopback.recording.jsonl")


def scenario():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    addr = listener.getsockname()

    # Keepalive on, a 1.2 s idle gap that the peer answers, then a linger-0 close.
    client = socket.create_connection(addr)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
    server, _ = listener.accept()
    client.sendall(b"ping")
    server.recv(4)
    time.sleep(1.2)
    client.sendall(b"ping")
    server.recv(4)
    server.sendall(b"pong")
    client.recv(4)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    try:
        server.recv(1)
    except ConnectionResetError:
        pass
    server.close()

    # Nothing listens on port 1.
    refused = socket.socket()
    try:
        refused.connect(("127.0.0.1", 1))
    except ConnectionRefusedError:
        pass
    refused.close()

    # The server closes with the client's data unread.
    client = socket.create_connection(addr)
    server, _ = listener.accept()
    client.sendall(b"unread data")
    time.sleep(0.1)
    server.close()
    try:
        client.recv(1)
    except ConnectionResetError:
        pass
    client.close()


def write_findings(observer, recording=RECORDING):
    replay = subprocess.run([observer, "replay", "--format", "json", recording],
                            check=True, capture_output=True, text=True)
    findings = [l for l in replay.stdout.splitlines() if '"type":"finding"' in l]
    target = recording.replace(".recording.jsonl", ".findings.jsonl")
    with open(target, "w") as out:
        out.write("\n".join(findings) + "\n")
    print(f"{os.path.basename(target)}: {len(findings)} findings")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--replay-only":
        for name in sorted(os.listdir(HERE)):
            if name.endswith(".recording.jsonl"):
                write_findings(sys.argv[2], os.path.join(HERE, name))
        return
    if len(sys.argv) != 2:
        sys.exit("usage: make-loopback.py [--replay-only] PATH/TO/keepalive-observer")
    daemon = subprocess.Popen(
        [sys.argv[1], "--findings-only", "--format", "json", "--journald", "off",
         "--record", RECORDING],
        stdout=subprocess.PIPE, text=True)
    for line in daemon.stdout:
        if json.loads(line).get("type") == "ready":
            break
    else:
        sys.exit("the daemon exited before it was ready")
    scenario()
    time.sleep(3)  # the close grace (2 s) ends and held findings are released
    daemon.send_signal(signal.SIGINT)
    daemon.communicate(timeout=10)
    write_findings(sys.argv[1])


if __name__ == "__main__":
    main()
