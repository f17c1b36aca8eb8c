"""geeps.lab: simulated hosts in network namespaces, their links shaped, cut and made
lossy, and nothing left behind, also after the lab's owner is killed. Real namespaces,
veth pairs, tbf qdiscs and nftables rules (root only); traffic stays between the
namespaces these tests create."""
from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from geeps.lab import netns
from geeps.lab import topology as T
from geeps.server import checkpoint
from tests.helpers import REPO, kill_group, wait_for
from tests.integration.test_faults import manifest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)"),
    pytest.mark.skipif(not (shutil.which("ip") and shutil.which("tc")),
                       reason="the lab needs ip and tc (iproute2)"),
]
needs_nft = pytest.mark.skipif(shutil.which("nft") is None, reason="loss needs nft (nftables)")

PORT = 7300
# A one-connection server: prints "ready" once listening, then answers each byte count it
# is sent with "ok"; bounded by its own timeout.
SERVE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4); s.settimeout(30)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.settimeout(30); n = 0
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        n += len(b)
    c.close()
    print("got", n, flush=True)
"""
# Sends argv[3] bytes to argv[1]:argv[2]; exit 0 on success, 3 on any network error.
SEND = """
import socket, sys, time
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
    t0 = time.perf_counter(); c.sendall(b"x" * int(sys.argv[3])); c.shutdown(socket.SHUT_WR)
    c.settimeout(float(sys.argv[4])); c.recv(1); c.close()
    print(time.perf_counter() - t0)
except OSError as e:
    print(type(e).__name__, e); sys.exit(3)
"""


def wait_line(proc: subprocess.Popen, want: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if r:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(want):
                return line
    raise AssertionError(f"no line {want!r} within {timeout} s")


@pytest.fixture
def lab_of():
    made = []

    def make(names, link=T.Link()):
        lab = netns.up(names, link)
        made.append(lab)
        return lab
    yield make
    for lab in made:
        netns.down(lab)
    assert netns.leftovers() == ([], []), "the lab left namespaces or links behind"


@pytest.fixture
def server(lab_of):
    procs = []

    def start(lab, host):
        h = lab.host(host)
        p = subprocess.Popen(netns.exec_argv(h, [sys.executable, "-c", SERVE, h.ip, str(PORT)]),
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        wait_line(p, "ready")
        return p
    yield start
    for p in procs:
        p.kill()
        p.wait()


def send(lab, src: str, dst: str, nbytes: int, timeout: float = 5.0):
    h = lab.host(src)
    return subprocess.run(netns.exec_argv(h, [sys.executable, "-c", SEND, lab.host(dst).ip,
                                              str(PORT), str(nbytes), str(timeout)]),
                          capture_output=True, text=True, timeout=timeout * 3 + 10)


def test_hosts_reach_each_other_and_nothing_is_left(lab_of, server):
    lab = lab_of(["server-0", "worker-0"])
    assert len({h.ip for h in lab.hosts}) == 2
    srv = server(lab, "server-0")
    p = send(lab, "worker-0", "server-0", 100_000)
    assert p.returncode == 0, p.stdout + p.stderr
    assert wait_line(srv, "got").split() == ["got", "100000"]
    moved = netns.traffic(lab)
    assert moved["worker-0"]["sent"] >= 100_000 and moved["server-0"]["received"] >= 100_000
    # a host has no route beyond the lab's own addresses
    out = subprocess.run(netns.exec_argv(lab.host("worker-0"), ["ip", "route"]),
                         capture_output=True, text=True).stdout
    assert "default" not in out


def test_the_link_rate_is_enforced(lab_of, server):
    lab = lab_of(["a", "b"], T.Link(rate="8mbit"))
    shown = subprocess.run(["tc", "qdisc", "show", "dev", lab.host("a").outer],
                           capture_output=True, text=True).stdout
    assert "tbf" in shown and "8Mbit" in shown
    server(lab, "a")
    p = send(lab, "b", "a", 500_000, timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr
    # 500 kB at 8 Mbit/s take at least 0.5 s; unshaped loopback-speed links take ~1 ms.
    # (A lower bound: no machine is too fast for it.)
    assert float(p.stdout) >= 0.4


def test_a_cut_link_carries_nothing_until_restored(lab_of, server):
    lab = lab_of(["a", "b"])
    server(lab, "a")
    netns.cut(lab, "b")
    p = send(lab, "b", "a", 1000, timeout=1.0)
    assert p.returncode == 3, p.stdout
    netns.restore(lab, "b")
    p = send(lab, "b", "a", 1000)
    assert p.returncode == 0, p.stdout + p.stderr


@needs_nft
def test_full_loss_is_a_partition_and_zero_loss_lifts_it(lab_of, server):
    lab = lab_of(["a", "b"])
    server(lab, "a")
    netns.set_loss(lab, "a", 100)
    p = send(lab, "b", "a", 1000, timeout=1.0)
    assert p.returncode == 3, p.stdout
    rules = subprocess.run(netns.exec_argv(lab.host("a"), ["nft", "list", "ruleset"]),
                           capture_output=True, text=True).stdout
    dropped = [int(w.split()[1]) for w in rules.split("counter")[1:]]
    assert sum(dropped) > 0, rules       # the rule counted the SYNs it dropped
    netns.set_loss(lab, "a", 0)
    p = send(lab, "b", "a", 1000)
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_lab_whose_owner_was_killed_is_removed_by_the_next_run(lab_of):
    code = ("from geeps.lab import netns; lab = netns.up(['x', 'y']); "
            "print(lab.id, flush=True); import sys; sys.stdin.read()")
    owner = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        lab_id = wait_line(owner, "", timeout=30).strip()
        assert any(n.startswith(f"gl-{lab_id}-") for n in
                   subprocess.run(["ip", "netns", "list"], capture_output=True,
                                  text=True).stdout.split())
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    lab_of(["z"])          # the next lab cleans up the dead one's first
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"gl-{lab_id}-" not in names
    assert not os.path.exists(os.path.join(netns.STATE_DIR, f"{lab_id}.json"))


def test_cli_status_and_a_timed_cut(lab_of, server):
    lab = lab_of(["server-0", "worker-0"])
    geeps = [sys.executable, "-m", "geeps", "lab"]
    out = subprocess.run(geeps + ["status"], capture_output=True, text=True, timeout=30).stdout
    assert f"lab {lab.id}: 2 hosts" in out and lab.host("worker-0").ip in out
    t0 = time.monotonic()
    p = subprocess.run(geeps + ["cut", "worker-0", "--for", "0.5", "--lab-id", lab.id],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert time.monotonic() - t0 >= 0.5
    assert p.stdout.splitlines()[-1] == "restored worker-0's link"
    server(lab, "server-0")
    assert send(lab, "worker-0", "server-0", 10).returncode == 0
    p = subprocess.run(geeps + ["cut", "nobody", "--lab-id", lab.id], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 2 and "no host 'nobody'" in p.stderr
    # A host lost for good: the fresh one in its place reaches the others from its address.
    p = subprocess.run(geeps + ["replace", "worker-0", "--lab-id", lab.id],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.startswith("replaced worker-0"), p.stderr
    assert send(lab, "worker-0", "server-0", 10).returncode == 0


def test_refuses_clearly_without_root():
    # A real unprivileged process: a child that gives up root before asking for the lab.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                netns.check_tools()
                msg = "accepted"
            except netns.LabError as e:
                msg = str(e)
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        msg = f.read()
    os.waitpid(pid, 0)
    assert msg == ("the lab needs root: it creates network namespaces, links and qdiscs "
                   "(run as root, or without --lab)")


LAB_WORKER = os.path.join(os.path.dirname(__file__), "scripts", "lab_worker.py")


def test_a_job_survives_a_worker_link_cut_for_5_s_with_every_update_once(tmp_path):
    """`geeps run --lab`: worker-1's link is cut for 5 s while it pushes; the job ends
    with every value exactly K * (1 + 2): nothing lost, nothing applied twice."""
    mark, go = tmp_path / "at-clock-5", tmp_path / "go"
    run = subprocess.Popen(
        [sys.executable, "-m", "geeps", "run", "--lab", "rate=100mbit", "--quiet",
         "--servers", "2", "--workers", "2", "--metrics-port", "0", "--", "python",
         LAB_WORKER, "--clocks", "12", "--mark", str(mark), "--go", str(go)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not mark.exists():
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the job never reached clock 5"
            time.sleep(0.05)
        lab = netns.find()
        netns.cut(lab, "worker-1")
        go.touch()                       # worker-1 pushes into the cut link now
        time.sleep(5)                    # the fault's length, not a synchronization
        netns.restore(lab, "worker-1")
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, err
    assert out.count("sum ok 36") == 2, out          # 12 clocks x (1 + 2)
    assert "geeps run: lab " in err and "worker-1 10." in err
    assert netns.leftovers() == ([], []) and netns.labs() == []


def run_losing_server_1(where, lab: bool, **spec_extra):
    """The example job under `geeps run` (on the lab or off it). On the lab, once the
    shards checkpointed clock 30, server-1's host is lost for good: its link deleted,
    its process killed, and a fresh empty host at its address, as a rescheduled pod
    behind its Service would have. Returns (exit code, output, final parameters)."""
    where.mkdir()
    ckpt = where / "ckpt"
    argv = [sys.executable, "-m", "geeps", "run", "--quiet", "--metrics-port", "0",
            "--checkpoint-dir", str(ckpt), manifest(where, **spec_extra)]
    if lab:
        argv[4:4] = ["--lab", "rate=100mbit"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        if lab:
            wait_for(lambda: proc.poll() is not None or (
                checkpoint.clocks(str(ckpt), 0) and checkpoint.clocks(str(ckpt), 0)[0] >= 30),
                120, what="a checkpoint of clock 30")
            assert proc.poll() is None, proc.communicate()[0]
            assert netns.replace(netns.find(), "server-1"), "server-1 ran nothing"
        text, _ = proc.communicate(timeout=300)
    finally:
        kill_group(proc)
    return proc.returncode, text, where / "params.npy"


def test_a_server_host_lost_for_good_is_replaced_and_the_job_rolls_back_to_the_same_bits(
        tmp_path):
    """Without replicas the launcher restarts the shard at its old address from its
    checkpoint, every worker rolls back to it, and the job ends on the bits of the same
    job run without a fault, off the lab (BSP sums in rank order, so neither the replay
    nor the network changes them); each step is in the job's log."""
    code, text, clean = run_losing_server_1(tmp_path / "clean", lab=False)
    assert code == 0, text
    code, text, params = run_losing_server_1(tmp_path / "lost", lab=True)
    assert code == 0, text
    assert "server-1" in text and "killed by signal SIGKILL; restarting it" in text
    assert "restored checkpoint clock" in text and "rolled back to clock" in text
    # The workers found the replacement at the old address (no worker had to fail on
    # a silent shard and be restarted).
    assert "worker-0 (pid" not in text and "worker-1 (pid" not in text, text
    np.testing.assert_array_equal(np.load(params), np.load(clean))
    assert netns.leftovers() == ([], []) and netns.labs() == []


def test_a_server_host_lost_for_good_with_replicas_is_failed_over_without_rollback(tmp_path):
    """With spec.servers.replication 2 the launcher's coordinator fails server-1 over to
    its replica, no worker rolls back, and a joiner on a new host of the lab brings the
    job back to two servers; the bits are those of the same job without a fault."""
    servers = {"replicas": 2, "replication": 2}
    code, text, clean = run_losing_server_1(tmp_path / "clean", lab=False, servers=servers)
    assert code == 0, text
    code, text, params = run_losing_server_1(tmp_path / "lost", lab=True, servers=servers)
    assert code == 0, text
    assert "server-1 (server 1) exited; failing over to its replicas, no worker rolls " \
        "back" in text, text
    joined = re.search(r"server-2 \(server 2, (10\.[0-9.]+):[0-9]+\) joins, replacing "
                       r"server-1", text)
    assert joined, text
    assert "rolled back" not in text and "restored checkpoint" not in text, text
    assert "worker-0 (pid" not in text and "worker-1 (pid" not in text, text
    np.testing.assert_array_equal(np.load(params), np.load(clean))
    assert netns.leftovers() == ([], []) and netns.labs() == []
