"""The lab's HTTP client: periodic jobs through a urllib3 connection pool (HTTP/1.1 keep-alive).

`cargo xtask lab` runs it with /usr/bin/python3 inside the client's network namespace. It opens
the pool's connection with one request, then for every pause of the ladder leaves the pooled
connection idle that long and sends the next job's request on it. urllib3's own retries are
off, so a connection that the path forgot fails with urllib3's own error; the job is then
retried once, on a new connection, as a job scheduler would.

With `--keepalive-idle` every socket gets SO_KEEPALIVE and TCP_KEEPIDLE; with `--evict-idle` a
background thread closes pooled connections idle longer than that, like Apache HttpClient's
evictIdleConnections.

With `--audit-lead S`, `audit-lead` seconds before each job whose pause is longer than that, it
prints `step` and waits for a line on stdin (the lab audits the pool's sockets meanwhile), then
sends the job when its pause is over; a step whose pause is shorter is announced with
`"audit": false` and not waited for.

Prints one JSON object per line on stdout: `config`, then `request` (one per HTTP request),
`step` and `evicted`, then `done`.
"""

import argparse
import errno
import json
import queue
import select
import socket
import sys
import threading
import time

import urllib3
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.exceptions import ConnectTimeoutError, ReadTimeoutError

POOL_SIZE = 4
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
KEEPALIVE_INTERVAL_S = 1
KEEPALIVE_COUNT = 3
EVICT_CHECK_S = 0.1
# How long a step waits for the lab's go before sending anyway.
AUDIT_WAIT_S = 30.0


# Requests and the evictor take turns on the pool, and on stdout.
pool_lock = threading.Lock()
output_lock = threading.Lock()
# The connection that served the last request.
last_used = None


def emit(kind, **fields):
    line = json.dumps({"type": kind, **fields}) + "\n"
    with output_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


class TrackedConnection(HTTPConnection):
    """urllib3's connection, remembering its local address, whether the last request had to
    open it, and since when it has been idle."""

    local = None
    opened = False
    idle_since = None
    idle_s = None

    def connect(self):
        super().connect()
        self.local = "%s:%d" % self.sock.getsockname()[:2]

    def request(self, *args, **kwargs):
        global last_used
        last_used = self
        self.opened = self.sock is None
        self.idle_s = None
        if not self.opened and self.idle_since is not None:
            self.idle_s = round(time.monotonic() - self.idle_since, 3)
        return super().request(*args, **kwargs)

    def getresponse(self, *args, **kwargs):
        response = super().getresponse(*args, **kwargs)
        self.idle_since = time.monotonic()
        return response


def evict_idle(pool, max_idle_s):
    """Closes pooled connections idle longer than `max_idle_s`; the pool opens new ones."""
    with pool_lock:
        held = []
        while True:
            try:
                held.append(pool.pool.get(block=False))
            except queue.Empty:
                break
        now = time.monotonic()
        for conn in held:
            if conn is None or conn.sock is None or conn.idle_since is None:
                continue
            idle = now - conn.idle_since
            if idle > max_idle_s:
                conn.close()
                emit("evicted", local=conn.local, idle_s=round(idle, 3))
        for conn in reversed(held):
            pool.pool.put(conn, block=False)


def first_errno(exc):
    """The errno of the first OSError in the exception's chain and arguments."""
    seen = set()
    stack = [exc]
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno:
            return error.errno
        stack.append(error.__cause__)
        stack.append(error.__context__)
        stack.extend(a for a in getattr(error, "args", ()) if isinstance(a, BaseException))
    return None


def category(exc, code):
    if code in (errno.ECONNRESET, errno.EPIPE):
        return "reset"
    if code == errno.ETIMEDOUT or isinstance(exc, (ReadTimeoutError, ConnectTimeoutError)):
        return "timeout"
    return "error"


def request(pool, job, attempt, pause_s):
    global last_used
    last_used = None
    started = time.monotonic()
    fields = {"job": job, "attempt": attempt, "pause_s": pause_s}
    try:
        with pool_lock:
            response = pool.urlopen(
                "GET",
                "/job/%d" % job,
                retries=False,
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
            )
        fields.update(ok=True, status=response.status, body=response.data.decode().strip())
    except Exception as exc:  # the library's own error is the point: report any of them
        code = first_errno(exc)
        fields.update(
            ok=False,
            error="%s: %s" % (type(exc).__name__, exc),
            errno=code,
            errno_name=errno.errorcode.get(code),
            category=category(exc, code),
        )
    fields.update(
        local=getattr(last_used, "local", None),
        new_connection=getattr(last_used, "opened", False),
        idle_s=getattr(last_used, "idle_s", None),
        elapsed_ms=round((time.monotonic() - started) * 1000, 1),
    )
    emit("request", **fields)
    return fields["ok"]


def pause_before(job, pause, audit_lead):
    """Sleeps `pause`; with an audit lead, lets the lab audit the pool before its end."""
    end = time.monotonic() + pause
    if audit_lead is None:
        time.sleep(pause)
        return
    audited = pause > audit_lead
    if audited:
        time.sleep(pause - audit_lead)
    emit("step", job=job, pause_s=pause, audit=audited)
    if audited:
        ready, _, _ = select.select([sys.stdin], [], [], AUDIT_WAIT_S)
        if ready:
            sys.stdin.readline()
    time.sleep(max(0.0, end - time.monotonic()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--ladder", required=True, help="pauses in seconds, comma-separated")
    parser.add_argument("--user-timeout-ms", type=int, required=True)
    parser.add_argument("--keepalive-idle", type=int, help="SO_KEEPALIVE with this TCP_KEEPIDLE")
    parser.add_argument("--evict-idle", type=float, help="evict connections idle this long")
    parser.add_argument("--audit-lead", type=float, help="announce each step this early")
    args = parser.parse_args()
    pauses = [float(p) for p in args.ladder.split(",")]

    options = HTTPConnection.default_socket_options + [
        (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, args.user_timeout_ms)
    ]
    if args.keepalive_idle is not None:
        options += [
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, args.keepalive_idle),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT),
        ]
    pool = HTTPConnectionPool(
        args.host, args.port, maxsize=POOL_SIZE, retries=False, socket_options=options
    )
    pool.ConnectionCls = TrackedConnection
    emit(
        "config",
        python=sys.version.split()[0],
        urllib3=urllib3.__version__,
        pool_size=POOL_SIZE,
        user_timeout_ms=args.user_timeout_ms,
    )

    stop = threading.Event()
    evictor = None
    if args.evict_idle is not None:

        def evict():
            while not stop.wait(EVICT_CHECK_S):
                evict_idle(pool, args.evict_idle)

        evictor = threading.Thread(target=evict, name="evictor")
        evictor.start()

    try:
        request(pool, 0, 1, None)
        for job, pause in enumerate(pauses, start=1):
            pause_before(job, pause, args.audit_lead)
            if not request(pool, job, 1, pause):
                request(pool, job, 2, 0.0)
    finally:
        stop.set()
        if evictor is not None:
            evictor.join()
    pool.close()
    emit("done")


if __name__ == "__main__":
    main()
