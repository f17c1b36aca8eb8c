"""The servers of a running local job under the coordinator: what `geeps run` does when
one is lost, added or removed (spec.servers.replication >= 2, or `geeps servers`).

- A server that exits while workers run is failed over (geeps.job.membership.fail:
  its first replicas serve its rows at once, nobody rolls back) and a fresh server
  is started on a new port as a joiner (GEEPS_JOIN=1) to bring the job back to its
  server count, within runPolicy.backoffLimit like any restart. Only when some rows
  had no other holder (replication 1, or every holder lost) does the job fall back to
  today's recovery: the same server restarts from its checkpoint and the workers roll
  back.
- A server silent for the coordinator's `silent_after` is killed (fenced: a server
  the job stopped trusting must not answer anyone), which makes it an exit as above.
- `geeps servers add` starts a joiner; `geeps servers remove ID` drains server ID and
  stops it once it holds nothing (geeps.launch.control).

The supervisor owns the processes; this object owns the decisions about servers and
tells the supervisor what to start and stop.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Callable

from geeps.job import env as config
from geeps.job import membership as ms
from geeps.launch.control import ControlSocket
from geeps.launch.coordinator import Coordinator
from geeps.launch.plan import LaunchPlan, Options, ProcessSpec, joiner
from geeps.wire.ports import free_port

JOIN_DEADLINE = 60.0    # s a joiner has to answer the coordinator before it is killed:
                        # a process start on a loaded machine takes seconds, not this


def wanted(plan: LaunchPlan) -> bool:
    """Whether a job's servers run under the coordinator (GeePSJob.coordinated)."""
    return plan.job.coordinated


class Elastic:
    def __init__(self, plan: LaunchPlan, options: Options, *, say: Callable[[str], None],
                 kill: Callable[[int, int], None], cwd: str = ".",
                 heartbeat: float | None = None, silent_after: float | None = None,
                 hosts=None, join_deadline: float = JOIN_DEADLINE):
        self.plan, self.options, self.say, self.kill = plan, options, say, kill
        # where joiners run: None = this machine, on a free port; on the lab, a new
        # host each (geeps.launch.onlab.JoinHosts: address(name), place(spec))
        self.hosts = hosts
        self.join_deadline = join_deadline
        self._joining: dict[int, float] = {}    # joiner id -> when it was started
        cfg = config.load(plan.role("server")[0].env)
        kw = {k: v for k, v in (("heartbeat", heartbeat), ("silent_after", silent_after))
              if v is not None}
        self.coordinator = Coordinator(ms.initial(plan.servers, plan.job.replication), cfg,
                                       log=say, on_silent=self._silent,
                                       metrics=self._metrics(plan, options, say), **kw)
        self.control = ControlSocket(cwd, plan.job.name)
        self._lock = threading.Lock()
        self.sid_of: dict[str, int] = {}        # process name -> its server id
        self.pid_of: dict[int, int] = {}        # server id -> pid (the fencing target)
        self.added: list[str] = []              # addresses of servers started later
        self.retiring: set[str] = set()         # drained: their exit is expected
        self.start_process: Callable[[ProcessSpec], object] | None = None

    @staticmethod
    def _metrics(plan: LaunchPlan, options: Options, say: Callable[[str], None]):
        """The coordinator's metrics, served from the launcher on the port the plan gave
        it (what `geeps coordinator` serves on Kubernetes), or None."""
        if not plan.coordinator_metrics_port:
            return None
        from geeps.metrics import Metrics, MetricsPortError
        metrics = Metrics(plan.job.name, "coordinator", 0)
        try:
            metrics.serve(plan.coordinator_metrics_port, options.host)
        except MetricsPortError as e:
            say(f"warning: the coordinator serves no metrics: {e.strerror}")
            return None
        return metrics

    # ---- lifecycle ----------------------------------------------------------------------
    def started(self, name: str, sid: int, pid: int) -> None:
        with self._lock:
            self.sid_of[name] = sid
            self.pid_of[sid] = pid

    def start(self) -> None:
        self.coordinator.start()

    def close(self) -> None:
        self.coordinator.close()
        self.control.close()

    # ---- decisions ----------------------------------------------------------------------
    def on_exit(self, name: str, code: int, workers_running: bool,
                restart_allowed: Callable[[], bool]) -> str:
        """What to do about server `name` that exited with `code`: "expected" (it was
        drained, or the job is ending), "failed-over" (its rows are served by
        replicas; a joiner may have been started), or "rollback" (some rows had no
        other holder: restart it as before)."""
        sid = self.sid_of.get(name)
        if name in self.retiring or not workers_running:
            return "expected"
        if sid is None or not self.coordinator.holds(sid):
            return "expected"
        try:
            ms.fail(self.coordinator.membership, sid)
        except ms.Lost as e:
            self.say(f"{name} (server {sid}) lost rows no other server holds ({e}); "
                     f"restarting it from its checkpoint, the workers roll back")
            return "rollback"
        self.say(f"{name} (server {sid}) exited; failing over to its replicas, no worker "
                 f"rolls back")
        self.coordinator.fail(sid)
        if restart_allowed():
            self.add(replacing=name)
        return "failed-over"

    def add(self, replacing: str | None = None) -> tuple[int, str]:
        """Start a joining server on a new port; its id and address."""
        if self.start_process is None:
            raise RuntimeError("the supervisor has not attached start_process")
        name = f"server-{len(self.plan.servers) + len(self.added)}"
        address = self.hosts.address(name) if self.hosts is not None \
            else f"{self.options.host}:{free_port(self.options.host)}"
        self.added.append(address)
        spec = joiner(self.plan, self.added, self.options)
        if self.hosts is not None:
            spec = self.hosts.place(spec)
        if spec.name != name:
            raise RuntimeError(f"the joiner is {spec.name}, its host was made for {name}")
        child = self.start_process(spec)
        sid = self.coordinator.join(address)
        # A server knows itself by its rank, so joiners are numbered as the coordinator
        # gives ids; a membership changed behind the launcher's back breaks that.
        if sid != spec.rank:
            raise RuntimeError(f"the coordinator gave the joiner {spec.name} id {sid}, "
                               f"its rank is {spec.rank}")
        self.started(spec.name, sid, child.pid)
        with self._lock:
            self._joining[sid] = time.monotonic()
        self.say(f"{spec.name} (server {sid}, {address}) joins"
                 + (f", replacing {replacing}" if replacing else ""))
        return sid, address

    def remove(self, sid: int) -> None:
        ms.leave(self.coordinator.membership, sid)       # ValueError when refused
        self.coordinator.leave(sid)

    def to_stop(self) -> list[str]:
        """Processes of servers the membership no longer holds (drained): the
        supervisor stops them, and their exit is expected."""
        out = []
        for name, sid in list(self.sid_of.items()):
            if name not in self.retiring and not self.coordinator.holds(sid) \
                    and self.coordinator.settled(0):
                self.retiring.add(name)
                out.append(name)
        return out

    def fence_overdue(self, now: float | None = None) -> list[int]:
        """Kill joiners that have not answered the coordinator within join_deadline of
        their start (a process that hangs before it serves, or a host it cannot be
        reached on): the coordinator judges silence only after a first answer, so
        without this a joiner that never answers would hold its change pending for
        good. Its exit is then failed over like any server's (its pending arcs are
        dropped, and another joiner is started within the backoffLimit). Returns the
        ids killed."""
        now = time.monotonic() if now is None else now
        out = []
        with self._lock:
            joining = list(self._joining.items())
        for sid, since in joining:
            if self.coordinator.heard(sid):
                with self._lock:
                    self._joining.pop(sid, None)
            elif now - since > self.join_deadline:
                with self._lock:
                    self._joining.pop(sid, None)
                    pid = self.pid_of.get(sid)
                if pid is not None:
                    self.say(f"server {sid} has not answered {now - since:.0f} s after it "
                             f"was started to join; killing it (it is then failed over)")
                    self.kill(pid, signal.SIGKILL)
                    out.append(sid)
        return out

    def _silent(self, sid: int) -> None:
        pid = self.pid_of.get(sid)
        if pid is not None:
            self.say(f"server {sid} stopped answering; killing it so that it cannot "
                     f"serve stale rows (it is then failed over)")
            self.kill(pid, signal.SIGKILL)

    # ---- `geeps servers` ------------------------------------------------------------------
    def handle(self, req: dict) -> dict:
        op = req.get("op")
        m = self.coordinator.membership
        if op == "list":
            return {"ok": True, "membership": m.to_json(),
                    "settled": self.coordinator.settled(0)}
        if op == "add":
            sid, address = self.add()
            return {"ok": True, "server": sid, "address": address}
        if op == "remove":
            sid = req.get("server")
            if not isinstance(sid, int) or isinstance(sid, bool):
                return {"ok": False, "error": "remove: field 'server' must be a server id"}
            try:
                self.remove(sid)
            except ValueError as e:
                return {"ok": False, "error": f"remove {sid}: {e}"}
            return {"ok": True, "server": sid}
        return {"ok": False, "error": f"op {op!r} is not one of list, add, remove"}
