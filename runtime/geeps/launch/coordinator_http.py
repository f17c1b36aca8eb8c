"""`geeps coordinator`: the coordinator (geeps.launch.coordinator) as a process of its own,
with a small HTTP API, for Kubernetes, where no launcher runs beside the servers.

    GEEPS_ROLE=coordinator GEEPS_SERVERS=s0:7777,s1:7777 GEEPS_REPLICATION=2 geeps coordinator

    GET    /membership   -> {"membership": {...} | null, "settled": bool, "failovers": n,
                             "changes": n, "error": str | null, "queued": [...],
                             "recovering": bool}
    POST   /servers      {"address": "host:port"} -> {"server": id}     (a joiner)
    DELETE /servers/<id> -> {"server": id}                              (drain it)

Errors are JSON too, {"error": "..."} naming the field or path at fault, with 400
(malformed), 404 (no such server or path), 409 (a change the membership refuses),
413 (a body too large) or 503 (still recovering). POST and DELETE are idempotent: the
operator holds no state between its reconciles and may ask again after a crash, so a
server already a member or queued keeps its id, and a server already draining is
answered as if drained now.

Why HTTP and not the servers' ZeroMQ protocol: the operator reaches the job's pods
over HTTP already (worker 0's progress), needs no pyzmq for it, and this API is about
the job's shape, not its data.

A silent server (no answer for --silent-after seconds, once it has answered at all) is
failed over here: its replicas serve its rows from the next epoch on. On Kubernetes the
operator then deletes its pod (fencing: a server the membership dropped must never
serve again) and starts a joiner in its place.

Recovery: a coordinator that restarts must not hand out epoch 1 again. Before deciding
anything it asks every server in GEEPS_SERVERS for the membership it holds (the
`membership` op without a field) and goes on from the newest (asking, once, the
servers that newest names too); only when no server holds one does it start from
geeps.job.membership.initial. It waits for every server to answer, or for
--recover-after seconds once at least one has: a server that is down must not keep the
job from changing for good, and one that is only slow holds no newer epoch than the
others (every member gets each epoch before the next one is made).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence

import zmq

from geeps.job import env as _config
from geeps.job import membership as ms
from geeps.job.spec import COORDINATOR_PORT
from geeps.launch.coordinator import HEARTBEAT, SILENT_AFTER, Coordinator
from geeps.wire import protocol as P
from geeps.wire import transport

MAX_BODY = 64 * 1024        # a request body is one address: a few dozen bytes
MAX_ID_DIGITS = 12          # a server id in a path; Python refuses int() of > 4300 digits
IDLE_TIMEOUT = 10.0         # s a connection may send nothing: one thread each, so bounded
RECOVER_AFTER = 30.0        # s to wait for the servers that have not answered yet
ASK_EVERY = 0.5             # s between requests to a server that has not answered
_SERVERS = next(v for v in _config.VARS if v.name == "GEEPS_SERVERS")


# ---- recovery ------------------------------------------------------------------------
def recover(addresses: Sequence[str], cfg: _config.Config | None, *,
            wait_all: float = RECOVER_AFTER, stop: threading.Event | None = None,
            log: Callable[[str], None] = lambda s: None,
            context: zmq.Context | None = None) -> ms.Membership | None:
    """The newest membership the servers at `addresses` hold, or None when none holds
    one (a fresh job). Blocks until every server answered, or `wait_all` seconds after
    the first answer; None also when `stop` is set first."""
    ctx = context or zmq.Context.instance()
    asked: list[str] = list(dict.fromkeys(addresses))
    newest: ms.Membership | None = None
    answered: set[str] = set()
    socks: dict[str, zmq.Socket] = {}
    poller = zmq.Poller()
    first_answer: float | None = None
    last_ask: dict[str, float] = {}
    rid = 0
    try:
        while not (stop is not None and stop.is_set()):
            waiting = [a for a in asked if a not in answered]
            now = time.monotonic()
            if not waiting or (first_answer is not None and now - first_answer > wait_all):
                if waiting:
                    log(f"coordinator: no answer from {', '.join(waiting)} after "
                        f"{wait_all:g} s; going on from what the others hold")
                return newest
            for a in waiting:
                if a not in socks:
                    socks[a] = transport.connect_dealer(ctx, f"tcp://{a}", cfg)
                    poller.register(socks[a], zmq.POLLIN)
                if now - last_ask.get(a, -ASK_EVERY) >= ASK_EVERY:
                    rid += 1
                    socks[a].send_multipart(P.request("membership", rid), copy=True)
                    last_ask[a] = now
            for sock, _ in poller.poll(ASK_EVERY * 1000):
                addr = next(a for a, s in socks.items() if s is sock)
                try:
                    header = P.decode_header(sock.recv_multipart(zmq.NOBLOCK)[0])
                except (zmq.Again, P.ProtocolError, IndexError):
                    continue
                answered.add(addr)
                first_answer = first_answer or time.monotonic()
                held = header.get("membership")
                if held is None:
                    continue            # a fresh server, or one that has no membership op
                try:
                    m = ms.Membership.from_json(held)
                except ValueError as e:
                    log(f"coordinator: {addr} answered a membership it cannot hold: {e}")
                    continue
                if newest is None or m.epoch > newest.epoch:
                    newest = m
                    # the servers the newest names (joined after this pod was made) too
                    asked += [a for a in m.servers.values() if a not in asked]
        return None
    finally:
        for s in socks.values():
            s.close(0)


# ---- the HTTP front --------------------------------------------------------------------
class Front:
    """What the HTTP handler asks: the coordinator once recovered, None before."""

    def __init__(self):
        self.coordinator: Coordinator | None = None
        self.recovery_error: str | None = None

    def state(self) -> tuple[int, dict]:
        co = self.coordinator
        if co is None:
            return 200, {"membership": None, "settled": False, "failovers": 0, "changes": 0,
                         "error": self.recovery_error, "queued": [], "recovering": True}
        return 200, {"membership": co.membership.to_json(), "settled": co.settled(0),
                     "failovers": co.failovers, "changes": co.changes, "error": co.error,
                     "queued": [[kind, arg] for kind, arg in co.queued()],
                     "recovering": False}

    def add(self, body: object) -> tuple[int, dict]:
        co = self.coordinator
        if co is None:
            return 503, {"error": "recovering the membership from the servers; ask again"}
        if not isinstance(body, dict):
            return 400, {"error": "body: expected a JSON object {\"address\": \"host:port\"}"}
        address = body.get("address")
        try:
            if not isinstance(address, str):
                raise ValueError(address)
            if len(_SERVERS.parse(address)) != 1:     # what GEEPS_SERVERS accepts, one
                raise ValueError(address)
        except ValueError:
            return 400, {"error": f"field 'address': expected one host:port, got "
                                  f"{address!r:.80}"}
        m = co.membership
        for sid, a in m.servers.items():
            if a == address and sid not in m.leaving:
                return 200, {"server": sid, "address": address, "member": True}
        pending_joins = [arg for kind, arg in co.queued() if kind == "join"]
        if address in pending_joins:
            return 202, {"server": m.next_id + pending_joins.index(address),
                         "address": address, "queued": True}
        return 202, {"server": co.join(address), "address": address, "queued": True}

    def remove(self, raw_id: str) -> tuple[int, dict]:
        co = self.coordinator
        if co is None:
            return 503, {"error": "recovering the membership from the servers; ask again"}
        if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= MAX_ID_DIGITS):
            return 400, {"error": f"path /servers/<id>: expected a server id, got "
                                  f"{raw_id!r:.40}"}
        sid = int(raw_id)
        m = co.membership
        if sid not in m.servers:
            return 404, {"error": f"server {sid} is not a member (epoch {m.epoch})"}
        if sid in m.leaving or ("leave", sid) in co.queued():
            return 202, {"server": sid, "draining": True}
        queued_leaves = {arg for kind, arg in co.queued() if kind == "leave"}
        rest = [s for s in m.servers if s != sid and s not in m.leaving | queued_leaves]
        if len(rest) < max(1, m.replication):
            return 409, {"error": f"server {sid}: removing it would leave {len(rest)} "
                                  f"server(s), fewer than "
                                  + (f"replication {m.replication}" if m.replication > 1
                                     else "the one a job needs")}
        co.leave(sid)
        return 202, {"server": sid, "draining": True}


def handler(front: Front) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "geeps-coordinator"
        timeout = IDLE_TIMEOUT      # a client that stalls loses its connection (and thread)

        def log_message(self, fmt, *args):     # the operator polls: keep stderr quiet
            pass

        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> tuple[object, tuple[int, dict] | None]:
            raw_len = self.headers.get("Content-Length", "0")
            if not raw_len.isdigit():
                return None, (400, {"error": "header Content-Length: expected a number"})
            n = int(raw_len)
            if n > MAX_BODY:
                self.close_connection = True    # its body stays unread
                return None, (413, {"error": f"body: {n} bytes, more than {MAX_BODY}"})
            try:
                return json.loads(self.rfile.read(n) or b"null"), None
            except ValueError as e:
                return None, (400, {"error": f"body: not JSON ({e})"})

        def do_GET(self):
            if self.path.split("?")[0] == "/membership":
                return self._answer(*front.state())
            self._answer(404, {"error": f"path {self.path[:80]!r}: GET serves /membership"})

        def do_POST(self):
            if self.path != "/servers":
                return self._answer(404, {"error": f"path {self.path[:80]!r}: POST takes "
                                                   f"/servers"})
            body, err = self._body()
            self._answer(*(err or front.add(body)))

        def do_DELETE(self):
            parts = self.path.split("/")
            if len(parts) != 3 or parts[1] != "servers":
                return self._answer(404, {"error": f"path {self.path[:80]!r}: DELETE takes "
                                                   f"/servers/<id>"})
            self._answer(*front.remove(parts[2]))

    return Handler


def serve_http(front: Front, host: str, port: int) -> ThreadingHTTPServer:
    """Serve the API on host:port from a thread of its own; the caller shuts it down."""
    httpd = ThreadingHTTPServer((host, port), handler(front))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="geeps-coordinator-http",
                     daemon=True).start()
    return httpd


# ---- the process -----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="geeps coordinator",
        description="Decide the membership of GEEPS_SERVERS (heartbeats, failover, joins "
                    "and drains) and serve it over HTTP until SIGTERM. Configured by the "
                    "GEEPS_* environment (GEEPS_ROLE=coordinator); the operator runs it "
                    "for a job with spec.servers.replication >= 2 or "
                    "spec.servers.elastic.")
    ap.add_argument("--port", type=int, default=COORDINATOR_PORT,
                    help=f"HTTP port (default {COORDINATOR_PORT})")
    ap.add_argument("--heartbeat", type=float, default=HEARTBEAT, metavar="S",
                    help=f"seconds between pings of a server (default {HEARTBEAT:g})")
    ap.add_argument("--silent-after", type=float, default=SILENT_AFTER, metavar="S",
                    help=f"seconds of silence after which a server is failed over "
                         f"(default {SILENT_AFTER:g})")
    ap.add_argument("--recover-after", type=float, default=RECOVER_AFTER, metavar="S",
                    help=f"seconds to wait, once one server answered, for the others "
                         f"before going on without them (default {RECOVER_AFTER:g})")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    for name in ("heartbeat", "silent_after", "recover_after"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0")
    if not 0 < args.port < 65536:
        ap.error("--port must be in 1..65535")
    try:
        cfg = _config.load()
    except _config.ConfigError as e:
        print(f"geeps coordinator: {e}", file=sys.stderr)
        return 2
    if cfg.role != "coordinator":
        print(f"geeps coordinator: GEEPS_ROLE={cfg.role!r}: expected coordinator",
              file=sys.stderr)
        return 2

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    from geeps.metrics import Metrics, MetricsPortError
    metrics = Metrics.from_config(cfg)
    try:
        metrics.serve(cfg.metrics_port, cfg.metrics_addr)
    except MetricsPortError as e:
        print(f"geeps coordinator: {e.strerror}", file=sys.stderr)
        return 1
    host = "0.0.0.0" if cfg.bind_host in ("*", "") else cfg.bind_host
    front = Front()
    try:
        httpd = serve_http(front, host, args.port)
    except OSError as e:
        print(f"geeps coordinator: cannot serve HTTP on {host}:{args.port} (--port): "
              f"{e.strerror or e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    say(f"geeps coordinator: asking {len(cfg.servers)} server(s) for the membership they "
        f"hold; HTTP on {host}:{args.port}")
    newest = recover(cfg.servers, cfg, wait_all=args.recover_after, stop=stop, log=say)
    if stop.is_set():
        httpd.shutdown()
        return 0
    if newest is None:
        newest = ms.initial(list(cfg.servers), cfg.replication)
        say(f"geeps coordinator: no server holds a membership; epoch 1 over "
            f"{len(cfg.servers)} server(s), replication {cfg.replication}")
    else:
        say(f"geeps coordinator: recovered epoch {newest.epoch} "
            f"({len(newest.servers)} server(s))")
    co: Coordinator | None = None

    def silent(sid: int) -> None:
        # No launcher here to kill it: the membership drops it, and the operator
        # deletes its pod (fencing) when it sees that.
        say(f"geeps coordinator: failing server {sid} over (silent)")
        co.fail(sid)

    co = Coordinator(newest, cfg, log=say, on_silent=silent, heartbeat=args.heartbeat,
                     silent_after=args.silent_after, metrics=metrics)
    co.start()
    front.coordinator = co
    try:
        while not stop.wait(0.5):      # a bounded wait: the signal handler runs between
            pass
    finally:
        httpd.shutdown()
        co.close()
    return 0
