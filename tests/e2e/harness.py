"""The e2e cluster: API emulator + test kubelet on a background event loop, the operator
as a separate process, and a small synchronous API client for the tests.

    with Cluster(tmp) as c:                      # emulator up, CRD installed, kubelet on
        with Operator(c.operator_url, tmp) as op:  # `geeps operator` subprocess
            c.api.create(job_manifest)
            c.wait_phase("ns", "job", "Succeeded")

The emulator listens on two ports: one only the operator uses (so the requests it
makes can be told apart for the RBAC check), one for everything else.
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import subprocess
import sys
import threading
import time
from typing import Any

import kmock
import requests

from geeps.job import spec as _spec
from geeps_operator.crd import build_crd
from tests.helpers import REPO, free_port, kill_group, wait_for

from .apiserver import CustomResource
from .emulator import GeepsEmulator
from .kubelet import Kubelet

JOBS = f"{_spec.GROUP}/{_spec.VERSION}/{_spec.PLURAL}"
BUILTIN = {
    "v1/pods": kmock.ResourceInfo(kind="Pod", namespaced=True, shortnames={"po"},
                                  verbs={"get", "list", "watch", "create", "patch", "delete"},
                                  subresources={"status", "log"}),
    "v1/services": kmock.ResourceInfo(kind="Service", namespaced=True, shortnames={"svc"},
                                      verbs={"get", "list", "watch", "create", "patch",
                                             "delete"}),
    "v1/secrets": kmock.ResourceInfo(kind="Secret", namespaced=True,
                                     verbs={"get", "list", "watch", "create", "patch",
                                            "delete"}),
    "networking.k8s.io/v1/networkpolicies": kmock.ResourceInfo(
        kind="NetworkPolicy", namespaced=True, shortnames={"netpol"},
        verbs={"get", "list", "watch", "create", "patch", "delete"}),
    "policy/v1/poddisruptionbudgets": kmock.ResourceInfo(
        kind="PodDisruptionBudget", namespaced=True, shortnames={"pdb"},
        verbs={"get", "list", "watch", "create", "patch", "delete"}),
    "v1/resourcequotas": kmock.ResourceInfo(
        kind="ResourceQuota", namespaced=True, shortnames={"quota"},
        verbs={"get", "list", "watch", "create", "patch", "delete"}),
    "coordination.k8s.io/v1/leases": kmock.ResourceInfo(
        kind="Lease", namespaced=True, verbs={"get", "list", "watch", "create", "patch",
                                              "delete"}),
    "v1/events": kmock.ResourceInfo(kind="Event", namespaced=True, shortnames={"ev"},
                                    verbs={"get", "list", "watch", "create", "patch"}),
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", namespaced=False,
                                        shortnames={"ns"}, verbs={"get", "list", "watch"}),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, shortnames={"crd"},
        verbs={"get", "list", "watch", "create", "patch", "delete"}),
    # The Prometheus Operator's CRD, as on a cluster that runs it.
    "monitoring.coreos.com/v1/podmonitors": kmock.ResourceInfo(
        kind="PodMonitor", namespaced=True, verbs={"get", "list", "watch", "create",
                                                   "delete"}),
}


class Api:
    """Synchronous JSON client of the emulator for test code (what kubectl would do)."""

    def __init__(self, base: str):
        self.base = base.rstrip("/")
        self.http = requests.Session()
        self.http.headers["User-Agent"] = "e2e-test"

    @staticmethod
    def path(plural: str, ns: str | None = None, name: str | None = None,
             group: str = "", version: str = "v1", sub: str | None = None) -> str:
        out = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        out += f"/namespaces/{ns}" if ns else ""
        out += f"/{plural}" + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")
        return out

    def job_path(self, ns: str, name: str | None = None) -> str:
        return self.path(_spec.PLURAL, ns, name, _spec.GROUP, _spec.VERSION)

    def get(self, path: str) -> dict | None:
        r = self.http.get(self.base + path, timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()

    def items(self, path: str, selector: str | None = None) -> list[dict]:
        params = {"labelSelector": selector} if selector else None
        r = self.http.get(self.base + path, params=params, timeout=10)
        r.raise_for_status()
        return r.json()["items"]

    def create(self, path: str, body: dict) -> dict:
        r = self.http.post(self.base + path, json=body, timeout=10)
        r.raise_for_status()
        return r.json()

    def send(self, method: str, path: str, body: Any = None, *, params: dict | None = None,
             content_type: str = "application/json") -> requests.Response:
        """A raw request, for tests of what the API server answers (status, warnings)."""
        return self.http.request(method, self.base + path, json=body, params=params,
                                 headers={"Content-Type": content_type}, timeout=10)

    def patch(self, path: str, body: dict) -> dict:
        r = self.http.patch(self.base + path, json=body, timeout=10,
                            headers={"Content-Type": "application/merge-patch+json"})
        r.raise_for_status()
        return r.json()

    # ---- GeePSJob helpers ----------------------------------------------------------
    def create_job(self, manifest: dict) -> dict:
        return self.create(self.job_path(manifest["metadata"]["namespace"]), manifest)

    def job(self, ns: str, name: str) -> dict | None:
        return self.get(self.job_path(ns, name))

    def pods(self, ns: str, job: str) -> list[dict]:
        return self.items(self.path("pods", ns), f"geeps.dev/job-name={job}")

    def events(self, ns: str, name: str) -> list[dict]:
        return [e for e in self.items(self.path("events", ns))
                if (e.get("involvedObject") or {}).get("name") == name]


class Cluster:
    def __init__(self, workdir: str, prometheus_operator: bool = True,
                 kubelet=Kubelet):
        self.workdir = workdir
        self.kubelet_factory = kubelet     # containers.ContainerKubelet runs containers
        # Whether the monitoring.coreos.com CRDs are served (PodMonitor).
        self.resources = {k: v for k, v in BUILTIN.items()
                          if prometheus_operator or not k.startswith("monitoring.")}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="emulator",
                                        daemon=True)
        self._stop: asyncio.Event | None = None
        self._main: Any = None
        self.emulator: GeepsEmulator | None = None
        self.kubelet: Kubelet | None = None
        self.url = self.operator_url = ""
        self.api: Api | None = None

    def __enter__(self) -> "Cluster":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._ready(), self.loop).result(15)
        self.api = Api(self.url)
        return self

    async def _ready(self) -> None:
        started = asyncio.get_running_loop().create_future()
        self._main = asyncio.ensure_future(self._serve(started))
        await started

    async def _serve(self, started: asyncio.Future) -> None:
        self._stop = asyncio.Event()
        logs = os.path.join(self.workdir, "pod-logs")
        os.makedirs(logs, exist_ok=True)
        try:
            async with GeepsEmulator() as emu, kmock.Server(emu) as srv, \
                    kmock.Server(emu) as op_srv:
                for key, info in self.resources.items():
                    emu.resources[key] = info
                self.emulator = emu
                self.url, self.operator_url = str(srv.url).rstrip("/"), \
                    str(op_srv.url).rstrip("/")
                async with srv.client.post(
                        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                        json=build_crd()) as r:
                    assert r.status < 300, await r.text()
                self.kubelet = self.kubelet_factory(self.url, REPO, logs,
                                       os.path.join(self.workdir, "volumes"))
                emu.logs = self.kubelet.log_text
                kubelet_task = asyncio.ensure_future(self.kubelet.run())
                started.set_result(None)
                try:
                    await self._stop.wait()
                finally:
                    kubelet_task.cancel()
                    try:
                        await kubelet_task
                    except asyncio.CancelledError:
                        pass
        except BaseException as e:
            if not started.done():
                started.set_exception(e)
            raise

    def __exit__(self, *exc) -> None:
        async def stop():
            self._stop.set()
            await self._main
        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    @contextlib.contextmanager
    def stale_crd(self):
        """While inside, GeePSJob specs are stored unchecked, as by a cluster whose CRD
        predates the schema (status writes are still checked): how invalid jobs reach
        the operator, whose own validation is then the last line."""
        crd = copy.deepcopy(build_crd())
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        schema["properties"]["spec"] = {"type": "object",
                                        "x-kubernetes-preserve-unknown-fields": True}
        schema.pop("x-kubernetes-validations")
        schema.pop("required")
        with self.crd_admission(crd):
            yield

    @contextlib.contextmanager
    def crd_admission(self, crd: dict):
        """While inside, GeePSJob writes are admitted by `crd` instead of today's."""
        res = kmock.resource(_spec.GROUP, _spec.VERSION, _spec.PLURAL)

        async def swap(new):
            old, self.emulator._admission[res] = self.emulator._admission[res], new
            return old
        current = asyncio.run_coroutine_threadsafe(
            swap(CustomResource(crd, _spec.VERSION)), self.loop).result(10)
        try:
            yield
        finally:
            asyncio.run_coroutine_threadsafe(swap(current), self.loop).result(10)

    # ---- observation (thread-safe reads of the emulator's state) ------------------
    def requests_on(self, url: str) -> list:
        """Every request the emulator received through the server at `url`."""
        port = int(url.rsplit(":", 1)[1])

        async def collect():
            return [r for r in self.emulator.all_requests() if r.url.port == port]
        return asyncio.run_coroutine_threadsafe(collect(), self.loop).result(10)

    def lose_node(self, ns: str, pod: str) -> None:
        """The node of `pod` is lost (kubelet.lose)."""
        async def lose():
            self.kubelet.lose(ns, pod)
        asyncio.run_coroutine_threadsafe(lose(), self.loop).result(10)

    def processes(self, ns: str) -> list:
        async def collect():
            return list(self.kubelet.processes(ns))
        return asyncio.run_coroutine_threadsafe(collect(), self.loop).result(10)

    def wait_job(self, ns: str, name: str, pred, timeout: float = 30.0, what: str = "") -> dict:
        last: dict = {}

        def check():
            nonlocal last
            last = self.api.job(ns, name) or {}
            return last if pred(last) else None
        try:
            return wait_for(check, timeout, 0.05, what or f"job {ns}/{name}")
        except AssertionError as e:
            raise AssertionError(f"{e}; last status: {last.get('status')}") from None

    def wait_phase(self, ns: str, name: str, phase: str, timeout: float = 30.0) -> dict:
        """Wait for `phase`; fail at once if the job ends in another terminal phase."""
        def reached(j: dict) -> bool:
            now = (j.get("status") or {}).get("phase")
            if now in ("Succeeded", "Failed") and now != phase:
                raise AssertionError(f"job {ns}/{name} ended {now}, not {phase}: "
                                     f"{j.get('status')}")
            return now == phase
        return self.wait_job(ns, name, reached, timeout, f"job {ns}/{name} to reach {phase}")


class Operator:
    """`geeps operator` as a subprocess against the emulator, as it runs in production."""

    # Short deadlines for tests; the terminating grace outlasts the kubelet's own
    # SIGTERM grace (5 s), so only a pod no kubelet answers for is force-deleted.
    BLOCKED_DEADLINE = 4.0
    TERMINATING_GRACE = 8.0

    LEASE_NAMESPACE = "geeps-system"

    def __init__(self, cluster: Cluster, workdir: str, resync: float = 0.5,
                 namespaces: tuple[str, ...] = (), *, leader_elect: bool = True,
                 lease_seconds: float = 6.0, standby: bool = False, name: str = "operator"):
        """`standby`: another replica leads, so do not wait for this one to watch."""
        self.cluster = cluster
        self.standby = standby
        self.namespaces = namespaces
        self.health_port, self.metrics_port = free_port(), free_port()
        self.log_path = os.path.join(workdir, f"{name}.log")
        scope = [f"--namespace={n}" for n in namespaces] or ["--all-namespaces"]
        self.args = [sys.executable, "-m", "geeps", "operator", *scope,
                     "--server", cluster.operator_url, "--resync-seconds", str(resync),
                     "--health-port", str(self.health_port),
                     "--metrics-port", str(self.metrics_port),
                     "--blocked-deadline-seconds", str(self.BLOCKED_DEADLINE),
                     "--terminating-grace-seconds", str(self.TERMINATING_GRACE)]
        if leader_elect:
            self.args += ["--leader-elect", "--lease-namespace", self.LEASE_NAMESPACE,
                          "--lease-seconds", str(lease_seconds)]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Operator":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=REPO, start_new_session=True)
        try:
            wait_for(self._healthy, 30, 0.1, "the operator's /healthz")
            if not self.standby:
                wait_for(self._watching, 30, 0.05,
                         "the operator to watch GeePSJobs and pods")
        except AssertionError:
            self.__exit__()
            raise AssertionError(f"operator did not start; log:\n{self.log()}") from None
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log()}")
        try:
            return requests.get(f"http://127.0.0.1:{self.health_port}/healthz",
                                timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def _watching(self) -> bool:
        watched = {(r.resource.plural if r.resource else None)
                   for r in self.cluster.requests_on(self.cluster.operator_url)
                   if r.params.get("watch") == "true"}
        return {_spec.PLURAL, "pods"} <= watched

    def metric(self, name: str, labels: dict | None = None) -> float:
        """Sum of a metric's samples matching `labels`, from the operator's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in (labels or {}).items()):
                    total += sample.value
        return total

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-20000:]
        except OSError:
            return ""

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            kill_group(self.proc, timeout=10)
        self._log.close()
