"""A server started to join a running job that never answers the coordinator (it hangs
before it serves) is killed after the launcher's join deadline and failed over, so
the change it held pending does not stay pending for good. The launcher's Elastic and
its real Coordinator thread; the joiner is a real process that never answers."""
from __future__ import annotations

import signal
import subprocess
import time

import pytest

from geeps.job import spec as _spec
from geeps.launch.elastic import Elastic
from geeps.launch.plan import Options, Ports, plan
from tests.helpers import free_ports, kill_group, wait_for

pytestmark = pytest.mark.integration


def test_a_joiner_that_never_answers_is_killed_and_failed_over(tmp_path):
    job = _spec.validate({
        "apiVersion": "geeps.dev/v1alpha1", "kind": "GeePSJob",
        "metadata": {"name": "hangs", "namespace": "default"},
        "spec": {"command": ["python", "x.py"], "servers": {"replicas": 2, "elastic": True},
                 "workers": {"replicas": 1}}})
    p = plan(job, Ports(servers=tuple(free_ports(2))), Options(cwd=str(tmp_path)))
    said, killed, children = [], [], []

    def start(spec):
        # a joiner that hangs before it serves: it never answers anyone
        child = subprocess.Popen(["sleep", "60"], start_new_session=True)
        children.append(child)
        return child

    def kill(pid, sig):
        killed.append((pid, sig))
        kill_group(next(c for c in children if c.pid == pid))

    el = Elastic(p, Options(cwd=str(tmp_path)), say=said.append, kill=kill,
                 cwd=str(tmp_path), join_deadline=1.0)
    el.start_process = start
    el.start()
    try:
        sid, _ = el.add()
        assert sid == 2
        wait_for(lambda: el.coordinator.holds(2), 10, what="the join applied")
        assert el.fence_overdue(time.monotonic()) == []      # not overdue yet
        wait_for(lambda: el.fence_overdue() == [2], 10, what="the joiner fenced")
        assert killed == [(children[0].pid, signal.SIGKILL)]
        assert any("server 2 has not answered" in line for line in said), said
        # its exit is failed over like any server's: the pending change goes with it
        assert el.on_exit("server-2", -9, True, lambda: False) == "failed-over"
        wait_for(lambda: not el.coordinator.holds(2), 10, what="server 2 failed over")
        assert not el.coordinator.membership.pending
        assert el.fence_overdue() == []                      # killed once only
    finally:
        el.close()
        for c in children:
            kill_group(c)
