"""A real Prometheus scraping a local GeePS job and a real operator: the dashboard's data.

Used by tests/metrics (every dashboard query returns data) and tools/render_dashboard.py
(the picture in docs/):

    with observed_run(workdir, "examples/01-minimal/job.yaml") as (prom, job, name, _):
        prom.query_range("geeps_clock", job.started, job.ended)

Three parts, each a context manager that cleans up its processes:

- Prometheus: Debian's `prometheus` binary with a generated config: 1 s scrapes of the
  targets in a file_sd file (so targets can be added once their ports are known), with
  honor_labels so the pods' own `job` label (the GeePSJob name) is kept, as the chart's
  PodMonitor does.
- OperatorOnEmulator: `geeps operator` exactly as in a pod, against kmock's Kubernetes API
  emulator (no cluster runs here), with its metrics port on.
- LocalJob: `geeps run MANIFEST` with metrics on; the launcher prints each process's port.

    python tools/promstack.py emulator    # internal: serve the emulator, print its URL
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterable

import requests
import yaml

from geeps.job import spec as _spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(REPO, "charts", "geeps-operator", "dashboards", "geeps.json")
SCRAPE_SECONDS = 1
# Grafana's $__rate_interval is max(4 x scrape interval, step + scrape interval).
RATE_INTERVAL = f"{4 * SCRAPE_SECONDS}s"


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, what: str, proc: subprocess.Popen | None = None,
          interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM the process group started with start_new_session=True; SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout)


def _get(url: str, **params) -> requests.Response | None:
    try:
        return requests.get(url, params=params, timeout=5)
    except requests.RequestException:
        return None


class _Tail:
    """Collect a child's merged output lines from a thread (pipes must be drained)."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._t.start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self.lines.append(line.rstrip("\n"))

    def text(self, last: int = 40) -> str:
        return "\n".join(self.lines[-last:])


# --- Prometheus ---------------------------------------------------------------------

def prometheus_config(targets_file: str) -> dict:
    return {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s",
                   "scrape_timeout": f"{SCRAPE_SECONDS}s",
                   "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "scrape_configs": [{
            "job_name": "geeps",
            "honor_labels": True,
            "file_sd_configs": [{"files": [targets_file], "refresh_interval": "1s"}],
        }],
    }


class Prometheus:
    def __init__(self, workdir: str, binary: str | None = None):
        self.workdir = workdir
        self.binary = binary or shutil.which("prometheus")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets_file = os.path.join(workdir, "targets.json")
        self.proc: subprocess.Popen | None = None
        self.tail: _Tail | None = None

    def __enter__(self) -> "Prometheus":
        if not self.binary:
            raise FileNotFoundError("prometheus is not installed (apt-get install prometheus)")
        os.makedirs(self.workdir, exist_ok=True)
        self.set_targets([])
        config = os.path.join(self.workdir, "prometheus.yml")
        with open(config, "w") as f:
            json.dump(prometheus_config(self.targets_file), f)     # JSON is YAML
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={config}",
             f"--storage.tsdb.path={os.path.join(self.workdir, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self.tail = _Tail(self.proc.stdout)
        try:
            _wait(lambda: (r := _get(self.url + "/-/ready")) is not None and r.ok, 30,
                  "Prometheus to be ready", self.proc)
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        _stop(self.proc)

    def set_targets(self, targets: Iterable[str]) -> None:
        """Scrape exactly these host:port targets (written atomically: Prometheus watches
        the file and must never read half of it)."""
        tmp = self.targets_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump([{"targets": sorted(targets)}], f)
        os.replace(tmp, self.targets_file)

    def active_targets(self) -> dict[str, str]:
        r = _get(self.url + "/api/v1/targets", state="active")
        if r is None or not r.ok:
            return {}
        return {t["discoveredLabels"]["__address__"]: t["health"]
                for t in r.json()["data"]["activeTargets"]}

    def wait_discovered(self, targets: Iterable[str], timeout: float = 30) -> None:
        """Until Prometheus has taken up these targets (up or not). Its scrape manager
        applies discovery updates at most every 5 s, so register targets before their
        processes start, or a short job ends before its first scrape."""
        want = set(targets)
        _wait(lambda: want <= set(self.active_targets()), timeout,
              f"Prometheus to discover {sorted(want)}", self.proc)

    def wait_scraped(self, targets: Iterable[str], timeout: float = 30) -> None:
        want = set(targets)
        _wait(lambda: all(self.active_targets().get(t) == "up" for t in want), timeout,
              f"Prometheus to scrape {sorted(want)}", self.proc)

    def _api(self, endpoint: str, **params) -> list[dict]:
        r = requests.get(f"{self.url}/api/v1/{endpoint}", params=params, timeout=30)
        body = r.json()
        if body.get("status") != "success":
            raise ValueError(f"{endpoint} {params.get('query')!r}: {body.get('error')}")
        return body["data"]["result"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """/api/v1/query: the instant vector `expr` evaluates to at `at` (default now)."""
        return self._api("query", query=expr, **({"time": f"{at:.3f}"} if at else {}))

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self._api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                         step=f"{step}")


def finite(result: list[dict]) -> list[tuple[dict, float]]:
    """(labels, value) of every sample in an instant-query result that is a real number."""
    out = []
    for series in result:
        v = float(series["value"][1])
        if math.isfinite(v):
            out.append((series["metric"], v))
    return out


# --- the dashboard's queries --------------------------------------------------------

def load_dashboard(path: str = DASHBOARD) -> dict:
    with open(path) as f:
        return json.load(f)


def panel_queries(dashboard: dict) -> list[dict]:
    """Every query of every panel: {panel, refId, expr, legend}, in dashboard order."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append({"panel": panel["title"], "refId": target["refId"],
                        "expr": target["expr"], "legend": target.get("legendFormat", "")})
    return out


_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def concrete(expr: str, variables: dict[str, str]) -> str:
    """`expr` with Grafana's variables replaced, as Grafana does before sending it.

    An unknown variable raises KeyError: a new dashboard variable must be given a value
    here, not silently sent to Prometheus as text."""
    values = {"__rate_interval": RATE_INTERVAL, "__interval": f"{SCRAPE_SECONDS}s", **variables}
    return _VAR.sub(lambda m: values[next(g for g in m.groups() if g)], expr)


# --- the operator, against kmock's Kubernetes API emulator ----------------------------

EMULATED = {
    # (group/version/plural): (kind, namespaced, subresources)
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False, ()),
    "v1/namespaces": ("Namespace", False, ()),
    "v1/pods": ("Pod", True, ("log", "status")),
    "v1/services": ("Service", True, ()),
    "v1/secrets": ("Secret", True, ()),
    "v1/events": ("Event", True, ()),
    "events.k8s.io/v1/events": ("Event", True, ()),
    "geeps.dev/v1alpha1/geepsjobs": ("GeePSJob", True, ("status",)),
}


async def _serve_emulator() -> None:
    import asyncio

    import kmock
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
    async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s) as server:
        for key, (kind, namespaced, subresources) in EMULATED.items():
            k8s.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced,
                                                    verbs=verbs, subresources=set(subresources))
        print(server.url, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


class OperatorOnEmulator:
    """`geeps operator -A` against a kmock Kubernetes API emulator, metrics on.

    A stand-in API server, because no Kubernetes cluster can run here; the operator
    itself is the production command, unchanged."""

    def __init__(self):
        self.metrics_port = _free_port()
        self.health_port = _free_port()
        self.metrics_target = f"127.0.0.1:{self.metrics_port}"
        self.api: str | None = None
        self.emulator: subprocess.Popen | None = None
        self.operator: subprocess.Popen | None = None
        self.tail: _Tail | None = None

    def __enter__(self) -> "OperatorOnEmulator":
        try:
            self.emulator = subprocess.Popen([sys.executable, os.path.abspath(__file__), "emulator"],
                                             stdout=subprocess.PIPE, text=True,
                                             start_new_session=True)
            self.api = self.emulator.stdout.readline().strip()
            if not self.api.startswith("http"):
                raise RuntimeError(f"the emulator did not start (printed {self.api!r})")
            self.operator = subprocess.Popen(
                [sys.executable, "-m", "geeps", "operator", "--server", self.api,
                 "--all-namespaces", f"--health-port={self.health_port}",
                 f"--metrics-port={self.metrics_port}", "--resync-seconds=1"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True)
            self.tail = _Tail(self.operator.stdout)
            _wait(lambda: (r := _get(f"http://127.0.0.1:{self.health_port}/healthz"))
                  is not None and r.ok, 60, "the operator's /healthz", self.operator)
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        _stop(self.operator)
        _stop(self.emulator)

    def create_job(self, manifest: dict, namespace: str = "default") -> dict:
        # A real API server assigns these; the emulator stores what it is given, and kopf
        # and the operator rely on them (owner references, optimistic patches).
        import uuid
        meta = manifest.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        r = requests.post(f"{self.api}/apis/geeps.dev/v1alpha1/namespaces/{namespace}/geepsjobs",
                          json=manifest, timeout=10)
        r.raise_for_status()
        return r.json()


# --- a local job ----------------------------------------------------------------------

METRICS_LINE = re.compile(r"metrics at http://127\.0\.0\.1:PORT/metrics: (.*)$")


def _free_run(n: int, attempts: int = 50) -> int:
    """A port p with p .. p+n-1 all free now."""
    import socket
    for _ in range(attempts):
        base = _free_port()
        held = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no run of {n} free ports found")


class LocalJob:
    """`geeps run MANIFEST --servers S --workers W [ARGS]`, every process serving metrics.

    `planned_targets` are the metrics ports the launcher will take (it takes the given
    base and the ports after it, where free), known before the job starts so Prometheus
    can watch them from the first second; `wait_metrics_targets()` reads the ones it
    really took from its banner."""

    def __init__(self, manifest: str, servers: int, workers: int, args: Iterable[str] = (),
                 cwd: str = REPO, coordinator: bool = False):
        # A coordinated job's launcher serves its coordinator's metrics on the port after
        # the processes' (geeps.launch.plan.metrics_ports).
        n = servers + workers + (1 if coordinator else 0)
        base = _free_run(n)
        self.planned_targets = [f"127.0.0.1:{p}" for p in range(base, base + n)]
        self.argv = [sys.executable, "-m", "geeps", "run", manifest, f"--metrics-port={base}",
                     "--servers", str(servers), "--workers", str(workers), *args]
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.tail: _Tail | None = None
        self.started = self.ended = 0.0

    def start(self) -> "LocalJob":
        self.started = time.time()
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.tail = _Tail(self.proc.stdout)
        return self

    def wait_metrics_targets(self, timeout: float = 60) -> list[str]:
        """host:port of every process's metrics endpoint, from the launcher's banner."""
        def found():
            for line in self.tail.lines:
                m = METRICS_LINE.search(line)
                if m:
                    return [f"127.0.0.1:{p.split()[-1]}" for p in m.group(1).split(", ")]
            return None
        return _wait(found, timeout, "the launcher's metrics ports", self.proc)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self.ended = time.time()
        return code

    def stop(self) -> None:
        _stop(self.proc)
        if not self.ended:
            self.ended = time.time()


# --- all together ----------------------------------------------------------------------

class JobFailed(RuntimeError):
    pass


@contextlib.contextmanager
def observed_run(workdir: str, manifest_path: str, *, servers: int = 2, workers: int = 2,
                 timeout: float = 300, prometheus: str | None = None):
    """Run a job to its end under Prometheus, the operator handling the same job.

    Yields (prometheus, job, job name, scraped targets) with Prometheus still serving,
    so its HTTP API can be queried over [job.started, job.ended]."""
    with open(manifest_path) as f:
        manifest = next(d for d in yaml.safe_load_all(f) if d and d.get("kind") == "GeePSJob")
    name = manifest["metadata"]["name"]
    with Prometheus(workdir, prometheus) as prom, OperatorOnEmulator() as op:
        job = LocalJob(manifest_path, servers, workers,
                       coordinator=_spec.validate(manifest).coordinated)
        targets = [op.metrics_target] + job.planned_targets
        prom.set_targets(targets)
        prom.wait_discovered(targets)
        job.start()
        try:
            taken = job.wait_metrics_targets()
            if sorted(taken) != sorted(job.planned_targets):
                # A planned port was taken meanwhile; the launcher moved on to others.
                targets = [op.metrics_target] + taken
                prom.set_targets(targets)
            # The operator sees the same job, so "jobs by phase" counts it.
            op.create_job(manifest)
            code = job.wait(timeout)
        finally:
            job.stop()
        if code != 0:
            raise JobFailed(f"geeps run exited {code}:\n{job.tail.text()}")
        yield prom, job, name, targets


if __name__ == "__main__":
    if sys.argv[1:] == ["emulator"]:
        import asyncio
        asyncio.run(_serve_emulator())
    else:
        print(__doc__)
        sys.exit(2)
