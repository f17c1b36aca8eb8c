"""`geeps servers`: change the servers of a job that `geeps run` is running.

    geeps servers list   [--job NAME]          # the membership: epoch, who holds what
    geeps servers add    [--job NAME] [--wait S]   # one more server; it takes its share
    geeps servers remove ID [--job NAME] [--wait S]  # drain server ID, then stop it

The launcher listens on a Unix socket (owner-only, in a private temporary directory:
a path under the job's directory could exceed the 107 bytes a socket path may have)
and writes that socket's path to <cwd>/.geeps/<job>/control, so the command finds a
job from the directory it was started in. One JSON line each way:

    {"op": "list"} | {"op": "add"} | {"op": "remove", "server": 1}
    -> {"ok": true, ...} | {"ok": false, "error": "..."}

`--wait S` waits until the change has settled (the rows moved and the epoch flipped).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from typing import Callable

MAX_LINE = 64 * 1024        # a request is a few dozen bytes; a listing a few KiB


def pointer_path(cwd: str, job: str) -> str:
    return os.path.join(os.path.abspath(cwd), ".geeps", job, "control")


class ControlSocket:
    """The launcher's end: a listening socket the supervisor polls; `serve_one`
    answers one connection with `handle(request) -> reply`."""

    def __init__(self, cwd: str, job: str):
        self.dir = tempfile.mkdtemp(prefix="geeps-control-")
        os.chmod(self.dir, 0o700)
        self.path = os.path.join(self.dir, "sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.pointer = pointer_path(cwd, job)
        os.makedirs(os.path.dirname(self.pointer), exist_ok=True)
        tmp = self.pointer + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.path + "\n")
        os.replace(tmp, self.pointer)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_one(self, handle: Callable[[dict], dict]) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.settimeout(2.0)        # a client that sends nothing must not hold the loop
            try:
                raw = _read_line(conn)
                try:
                    req = json.loads(raw)
                    if not isinstance(req, dict):
                        raise ValueError("not an object")
                except ValueError as e:
                    reply = {"ok": False, "error": f"request: not a JSON object ({e})"}
                else:
                    reply = handle(req)
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except (OSError, ValueError):
                pass                    # the client went away: nothing to answer

    def close(self) -> None:
        self.sock.close()
        for p in (self.path, self.pointer):
            try:
                os.remove(p)
            except OSError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ValueError(f"line longer than {MAX_LINE} bytes")
    return buf.split(b"\n", 1)[0]


def ask(cwd: str, job: str, request: dict, timeout: float = 10.0) -> dict:
    """Send one request to the launcher of `job` running from `cwd`."""
    pointer = pointer_path(cwd, job)
    try:
        with open(pointer) as f:
            path = f.read().strip()
    except FileNotFoundError:
        raise ConnectionError(f"no job {job!r} is running from {os.path.abspath(cwd)} "
                              f"(no {os.path.relpath(pointer, cwd)}); start it with "
                              f"`geeps run`, from this directory") from None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except OSError as e:
            raise ConnectionError(f"job {job!r}: its launcher does not answer at {path} "
                                  f"({e.strerror or e}); is it still running?") from None
        s.sendall(json.dumps(request).encode() + b"\n")
        return json.loads(_read_line(s) or b"{}")


def _describe(m: dict) -> str:
    from geeps.job.membership import Membership
    mm = Membership.from_json(m)
    lines = [f"epoch {mm.epoch}, replication {mm.replication}"]
    for sid, addr in sorted(mm.servers.items()):
        role = " (leaving)" if sid in mm.leaving else ""
        share = mm.tokens_of(sid) / sum(r.end - r.start for r in mm.runs)
        pend = sum(p.end - p.start for p in mm.pending if p.sid == sid)
        lines.append(f"  server {sid} {addr}: primary of {share:.1%} of every table"
                     + (f", catching up on {pend / sum(r.end - r.start for r in mm.runs):.1%}"
                        if pend else "") + role)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="geeps servers", description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("list", "add", "remove"))
    ap.add_argument("server", nargs="?", type=int, help="the server id (remove)")
    ap.add_argument("--job", default="local", help="job name (default: local)")
    ap.add_argument("--wait", type=float, default=0.0, metavar="S",
                    help="wait up to S seconds for the change to settle")
    args = ap.parse_args(argv)
    if args.action == "remove" and args.server is None:
        ap.error("remove needs the server id (see `geeps servers list`)")
    req: dict = {"op": args.action}
    if args.action == "remove":
        req["server"] = args.server
    try:
        reply = ask(".", args.job, req)
        if reply.get("ok") and args.wait > 0 and args.action != "list":
            deadline = time.monotonic() + args.wait
            while True:
                state = ask(".", args.job, {"op": "list"})
                if state.get("settled"):
                    reply["membership"] = state.get("membership")
                    break
                if time.monotonic() > deadline:
                    print(f"geeps servers: the change has not settled after {args.wait:g} s",
                          file=sys.stderr)
                    return 1
                time.sleep(0.2)     # polling another process's state: nothing to wait on
    except (ConnectionError, OSError, ValueError) as e:
        print(f"geeps servers: {e}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"geeps servers: {reply.get('error', 'refused')}", file=sys.stderr)
        return 1
    if "server" in reply and args.action == "add":
        print(f"server {reply['server']} at {reply['address']} joining")
    if reply.get("membership"):
        print(_describe(reply["membership"]))
    return 0
