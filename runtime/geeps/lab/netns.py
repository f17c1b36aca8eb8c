"""Building, faulting and removing a lab on this machine (the I/O half of geeps.lab).

    with netns.running(["server-0", "worker-0", "worker-1"], Link(rate="200mbit")) as lab:
        argv = netns.exec_argv(lab.host("worker-0"), ["python", "train.py"])
        netns.cut(lab, "worker-1"); ...; netns.restore(lab, "worker-1")

A lab's description is written to STATE_DIR before its first command runs, with the pid
of the process that owns it: a lab whose owner died (SIGKILL, a crash mid-setup) is
removed by the next `up`, or by `geeps lab clean`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
from typing import Iterator

from geeps.lab import topology as T

STATE_DIR = "/run/geeps-lab"        # root-owned, cleared at boot with the namespaces
COMMAND_TIMEOUT = 30.0              # s; an `ip` or `tc` call never takes this long


class LabError(RuntimeError):
    """The lab cannot be built or changed here; the message says what to do."""


def check_tools(need_nft: bool = False) -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root: it creates network namespaces, links and "
                       "qdiscs (run as root, or without --lab)")
    tools = ["ip", "tc"] + (["nft"] if need_nft else [])
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise LabError(f"the lab needs {', '.join(missing)} on PATH (Debian: iproute2"
                       + (", nftables" if "nft" in missing else "") + ")")


def _run(cmd: T.Command, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if check and p.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {p.stderr.strip() or p.stdout.strip()}")
    return p


def _state_path(lab_id: str) -> str:
    return os.path.join(STATE_DIR, f"{lab_id}.json")


def _save(lab: T.Lab, owner: int) -> None:
    os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
    tmp = _state_path(lab.id) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"owner": owner, "lab": dataclasses.asdict(lab)}, f)
    os.replace(tmp, _state_path(lab.id))


def _load(path: str) -> tuple[int, T.Lab] | None:
    try:
        with open(path) as f:
            d = json.load(f)
        lab = d["lab"]
        return int(d["owner"]), T.Lab(
            id=lab["id"], hosts=tuple(T.Host(**h) for h in lab["hosts"]), bridge=lab["bridge"],
            gateway=lab["gateway"], prefix_len=lab["prefix_len"], link=T.Link(**lab["link"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def labs() -> list[tuple[int, T.Lab]]:
    """Every lab with a description in STATE_DIR: (owner pid, lab)."""
    try:
        names = sorted(os.listdir(STATE_DIR))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if n.endswith(".json"):
            got = _load(os.path.join(STATE_DIR, n))
            if got is not None:
                out.append(got)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def up(names: list[str], link: T.Link = T.Link(), owner: int | None = None) -> T.Lab:
    """A new lab with one host per name; removed again if any step fails."""
    check_tools(need_nft=link.loss > 0)
    clean()
    taken = {lab.id for _, lab in labs()}
    lab_id = next(i for i in (secrets.token_hex(T.ID_LEN // 2) for _ in range(64))
                  if i not in taken)
    lab = T.build(lab_id, names, link)
    _save(lab, os.getpid() if owner is None else owner)
    try:
        for cmd in T.setup(lab):
            _run(cmd)
    except BaseException:
        down(lab)
        raise
    return lab


def add_host(lab: T.Lab, name: str) -> tuple[T.Lab, T.Host]:
    """A new host `name` in the running `lab`, linked and shaped as the others; the lab
    with it. Its description is saved first, so that `down` and the next run's clean-up
    remove it even when a step fails."""
    check_tools(need_nft=lab.link.loss > 0)
    owner, _ = _load(_state_path(lab.id)) or (os.getpid(), lab)
    bigger = T.with_host(lab, name)
    _save(bigger, owner)
    host = bigger.host(name)
    for cmd in T.host_setup(bigger, host):
        _run(cmd)
    return bigger, host


def down(lab: T.Lab) -> None:
    """Remove everything of `lab` that exists (a half-built lab included), with the
    hosts added to it since (its saved description has them)."""
    saved = _load(_state_path(lab.id))
    if saved is not None and len(saved[1].hosts) > len(lab.hosts):
        lab = saved[1]
    for cmd in T.teardown(lab):
        _run(cmd, check=False)
    with contextlib.suppress(FileNotFoundError):
        os.remove(_state_path(lab.id))


def leftovers() -> tuple[list[str], list[str]]:
    """Namespaces and links with the lab's prefix that no live lab owns."""
    live = {lab.id for owner, lab in labs() if _alive(owner)}
    ns = _run(["ip", "netns", "list"], check=False).stdout.split("\n")
    ns = [line.split()[0] for line in ns if line.strip()]
    links = _run(["ip", "-o", "link", "show"], check=False).stdout.split("\n")
    links = [line.split(":")[1].strip().split("@")[0] for line in links if ":" in line]

    def orphan(name: str, pattern: str) -> bool:
        m = re.fullmatch(pattern, name)
        return m is not None and m.group(1) not in live
    return ([n for n in ns if orphan(n, T.PREFIX + r"-([0-9a-f]{%d})-.+" % T.ID_LEN)],
            [n for n in links if orphan(n, T.PREFIX + r"([0-9a-f]{%d})(?:o\d+|i\d+|br)" % T.ID_LEN)])


def clean() -> list[str]:
    """Remove every lab whose owner died, and any namespace or link of ours left without
    a description (a crash between two commands). Returns what was removed."""
    removed = []
    for owner, lab in labs():
        if not _alive(owner):
            down(lab)
            removed.append(f"lab {lab.id} (owner {owner} is gone)")
    ns, links = leftovers()
    for n in ns:
        _run(["ip", "netns", "delete", n], check=False)
        removed.append(f"namespace {n}")
    for n in links:
        _run(["ip", "link", "delete", n], check=False)
        removed.append(f"link {n}")
    return removed


@contextlib.contextmanager
def running(names: list[str], link: T.Link = T.Link()) -> Iterator[T.Lab]:
    lab = up(names, link)
    try:
        yield lab
    finally:
        down(lab)


def exec_argv(host: T.Host, argv: list[str]) -> list[str]:
    """`argv` run inside `host` (`ip netns exec` execs it: the pid stays the process's)."""
    return ["ip", "netns", "exec", host.ns, *argv]


# ---- faults -------------------------------------------------------------------------------

def find(lab_id: str | None = None) -> T.Lab:
    """The lab `lab_id`, or the only live one."""
    live = [lab for owner, lab in labs() if _alive(owner)]
    if lab_id is not None:
        for lab in live:
            if lab.id == lab_id:
                return lab
        raise LabError(f"no running lab {lab_id!r} (running: "
                       f"{', '.join(lab.id for lab in live) or 'none'})")
    if len(live) != 1:
        raise LabError("no lab is running" if not live else
                       f"{len(live)} labs are running ({', '.join(lab.id for lab in live)}): "
                       "name one with --lab-id")
    return live[0]


def cut(lab: T.Lab, host: str) -> None:
    check_tools()
    for cmd in T.cut(lab.host(host)):
        _run(cmd)


def restore(lab: T.Lab, host: str) -> None:
    check_tools()
    for cmd in T.restore(lab.host(host)):
        _run(cmd)


def replace(lab: T.Lab, host: str) -> list[int]:
    """Lose `host` for good and put a fresh host in its place, with its name and
    address and nothing running (T.replace_host). Its processes die with it (SIGKILL),
    after the new namespace exists: a supervisor that restarts them inside the host's
    namespace (`ip netns exec`) starts them on the replacement. Returns their pids."""
    check_tools(need_nft=lab.link.loss > 0)
    h = lab.host(host)
    pids = [int(p) for p in _run(["ip", "netns", "pids", h.ns], check=False).stdout.split()]
    for cmd in T.replace_host(lab, h):
        _run(cmd)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def set_loss(lab: T.Lab, host: str, percent: float) -> None:
    check_tools(need_nft=True)
    h = lab.host(host)
    first, *rest = T.loss_rules(h, T.loss_percent(percent))
    _run(first, check=False)            # the table may not exist yet
    for cmd in rest:
        _run(cmd)


def set_rate(lab: T.Lab, host: str, rate: str | None) -> None:
    check_tools()
    if rate is not None:
        T.rate_bits(rate)
    for cmd in T.set_rate(lab.host(host), T.Link(rate=rate)):
        _run(cmd, check=rate is not None)


def _qdisc_drops(cmd: T.Command) -> int:
    p = _run(cmd, check=False)
    try:
        return sum(int(q.get("drops", 0)) for q in json.loads(p.stdout or "[]"))
    except ValueError:
        return 0


def traffic(lab: T.Lab) -> dict[str, dict[str, int]]:
    """Bytes each host sent and received so far, from its link's counters (the outer end:
    what it transmits went into the host), and the packets its shaper dropped each way
    (a full tbf queue: TCP then backs off below the link's rate)."""
    out = {}
    for h in lab.hosts:
        base = f"/sys/class/net/{h.outer}/statistics"
        try:
            with open(f"{base}/rx_bytes") as f:
                sent = int(f.read())
            with open(f"{base}/tx_bytes") as f:
                received = int(f.read())
        except OSError:
            continue
        drops = 0
        if lab.link.rate:
            drops = _qdisc_drops(["tc", "-s", "-j", "qdisc", "show", "dev", h.outer]) + \
                _qdisc_drops(["ip", "netns", "exec", h.ns, "tc", "-s", "-j", "qdisc", "show",
                              "dev", h.inner])
        out[h.name] = {"sent": sent, "received": received, "drops": drops}
    return out
