"""A test kubelet: runs the pods it sees on the API as local processes, reports phases.

It watches every pod through the API over HTTP (as a kubelet does), and for each new
pod starts its container's command with the pod's environment, then patches the
pod's status: Running with a pod IP, later Succeeded or Failed with the exit code.

How a pod becomes a local process:
- Network: each pod gets its own loopback address (127.1.x.y) as its pod IP, so every
  server binds the same port 7777 on its own address, as pods do on their own IPs.
  GEEPS_BIND_HOST is set to that address (in a pod, `*` means the pod's IP).
- DNS: any `<host>.<subdomain>.<ns>.svc[.cluster.local]` in an environment value is
  rewritten to the address of the pod with that hostname and subdomain (the record a
  headless service publishes); a name is given its address before its pod starts,
  and a restarted pod keeps it, like a stable DNS record.
- Command: `geeps` runs as `python -m geeps` and `python`/`python3` as this
  interpreter; the working directory is the container's workingDir, else the
  repository root (the runtime image's WORKDIR holds the same files).
- Env: `value` entries, and `valueFrom.fieldRef` for metadata.name,
  metadata.namespace, status.podIP and spec.nodeName; other sources fail the pod.
- Deletion is graceful: the kubelet puts a finalizer on each pod it runs; when the
  pod is deleted it sends SIGTERM (SIGKILL after the grace period), reports the exit
  code, then removes the finalizer. Until then the pod is visible as terminating,
  as on a real node.
- Logs: stdout and stderr go to a file per pod, served as pods/<name>/log.
- Metrics: GEEPS_METRICS_ADDR is set to the pod IP (the runtime binds every interface
  in a pod, and these pods share one network namespace), so each pod serves its
  metrics on podIP:port as declared, where the operator reads worker 0's progress.
- Volumes: each mounted volume becomes a local directory, and an environment value
  naming a path under a mountPath is rewritten to the same path under that directory
  (a process cannot see the container's paths; GEEPS_CURVE_DIR and
  GEEPS_CHECKPOINT_DIR point into their mounts). A mount at /tmp is left as this
  host's /tmp: tests hand pods directories under it (MARKS) that must stay as given.
  `secret`: the Secret is read from the API (retried until it exists, as a kubelet
  retries a failed mount) and its data written into a private directory of the pod,
  files with the volume's defaultMode, removed when the pod ends. `emptyDir`: a fresh
  directory per pod (so a replaced pod starts with an empty one, as on a node).
  `persistentVolumeClaim`: one directory per claim (namespace + claimName) that
  outlives pods, so a replaced server finds its checkpoints. subPath is honoured.
  Other sources are not mounted.
- Failures on request, as a cluster shows them (the pod stays Pending, as it would):
  a pod whose nodeSelector the one node (NODE_LABELS) does not match gets PodScheduled
  False, reason Unschedulable (the scheduler's answer); an image named
  `<anything>/ErrImagePull` or `<anything>/ImagePullBackOff` (PULL_FAILURES) gets that
  waiting reason; an env source the kubelet cannot resolve (valueFrom other than the
  fieldRefs above) gets CreateContainerConfigError. `lose(ns, name)` loses the pod's
  node: its process dies unreported, and a deletion is never confirmed (the pod stays
  terminating until force-deleted, which the emulator allows).
- Ignored: resources (GPUs included), probes, securityContext, affinity.
"""
from __future__ import annotations

import asyncio
import json
import base64
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

import aiohttp


FINALIZER = "kubelet.test/graceful"
NODE = "test-node"
# The labels of the one node: a nodeSelector asking for anything else is unschedulable.
NODE_LABELS = {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux", "pool": "gpu"}
# The last path segment of an image that makes the pull fail, with the kubelet's message.
PULL_FAILURES = {
    "ErrImagePull": "rpc error: code = NotFound desc = failed to pull and unpack image",
    "ImagePullBackOff": "Back-off pulling image",
}
MOUNT_TIMEOUT = 20.0           # seconds a pod waits for its Secret before it fails
_DNS = re.compile(r"\b([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)"
                  r"\.([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.svc(?:\.cluster\.local)?\b")


def now() -> str:
    import datetime as dt
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Proc:
    ns: str
    name: str
    uid: str
    ip: str
    log_path: str
    process: asyncio.subprocess.Process | None = None
    exit_code: int | None = None
    deleting: bool = False
    started: asyncio.Event = field(default_factory=asyncio.Event)   # process exists, or never will
    done: asyncio.Event = field(default_factory=asyncio.Event)      # exit reported
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, str] = field(default_factory=dict)    # mountPath -> local directory
    files: dict[str, list] = field(default_factory=dict)    # mountPath -> files at start


class Kubelet:
    def __init__(self, api_url: str, root: str, log_dir: str, volume_dir: str,
                 grace: float = 5.0):
        self.api = api_url.rstrip("/")
        self.root = root
        self.log_dir = log_dir
        self.volume_dir = volume_dir
        self.grace = grace
        self.procs: dict[str, Proc] = {}              # by pod uid
        self.history: list[Proc] = []                 # every process ever started
        self._addresses: dict[tuple[str, str, str], str] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        self._seen: set[str] = set()                  # pod uids ever started
        self._lost: set[str] = set()                  # pod uids on a lost node

    # ---- addresses -------------------------------------------------------------------
    def address(self, ns: str, subdomain: str, host: str) -> str:
        key = (ns, subdomain, host)
        if key not in self._addresses:
            n = len(self._addresses) + 1
            self._addresses[key] = f"127.1.{n // 250}.{n % 250 + 1}"
        return self._addresses[key]

    def _rewrite(self, value: str) -> str:
        return _DNS.sub(lambda mt: self.address(mt.group(3), mt.group(2), mt.group(1)), value)

    # ---- API -------------------------------------------------------------------------
    async def _patch(self, ns: str, name: str, body: dict, sub: str = "") -> None:
        url = f"{self.api}/api/v1/namespaces/{ns}/pods/{name}{sub}"
        async with self._session.patch(url, data=json.dumps(body), headers={
                "Content-Type": "application/merge-patch+json"}) as r:
            await r.read()

    async def run(self) -> None:
        """Watch pods forever (until cancelled), reconnecting if the stream ends."""
        self._session = aiohttp.ClientSession(headers={"User-Agent": "test-kubelet"})
        try:
            while True:
                try:
                    async with self._session.get(f"{self.api}/api/v1/pods",
                                                 params={"watch": "true"},
                                                 timeout=aiohttp.ClientTimeout(None)) as r:
                        async for line in r.content:
                            if line.strip():
                                await self._on_event(json.loads(line))
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    await asyncio.sleep(0.1)   # reconnect backoff, not synchronisation
        finally:
            await self.shutdown()
            await self._session.close()

    async def _on_event(self, event: dict) -> None:
        pod = event.get("object") or {}
        meta = pod.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return
        proc = self.procs.get(uid)
        if uid in self._lost:
            return                                    # no kubelet answers for it
        if event.get("type") == "DELETED":
            if proc is not None:
                self._spawn(self._stop(proc))
            return
        if meta.get("deletionTimestamp"):
            if proc is not None and not proc.deleting:
                proc.deleting = True
                self._spawn(self._stop(proc, release=True))
            elif proc is None and FINALIZER in (meta.get("finalizers") or []):
                self._spawn(self._release(meta["namespace"], meta["name"]))
            return
        phase = (pod.get("status") or {}).get("phase")
        if proc is None and phase in (None, "Pending") and uid not in self._seen:
            self._seen.add(uid)
            self._spawn(self._start(pod))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- volumes -----------------------------------------------------------------------
    def _pod_dir(self, uid: str) -> str:
        return os.path.join(self.volume_dir, "pods", uid)

    def claim_dir(self, ns: str, claim: str) -> str:
        """Where a persistentVolumeClaim's data lives (for tests to look at)."""
        return os.path.join(self.volume_dir, "claims", ns, claim)

    async def _secret(self, ns: str, name: str) -> dict:
        url = f"{self.api}/api/v1/namespaces/{ns}/secrets/{name}"
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while True:
            async with self._session.get(url) as r:
                if r.status == 200:
                    return await r.json()
                if r.status != 404 or time.monotonic() > deadline:
                    raise ValueError(f"secret {ns}/{name}: HTTP {r.status}")
            await asyncio.sleep(0.1)   # a kubelet's mount retry, bounded by the deadline

    async def _mount(self, pod: dict) -> dict[str, str]:
        """{mountPath: local directory} for the container's mounts (see module doc)."""
        meta, spec = pod["metadata"], pod["spec"]
        ns, uid = meta["namespace"], meta["uid"]
        local: dict[str, str] = {}
        for vol in spec.get("volumes") or []:
            name = vol["name"]
            if "emptyDir" in vol:
                local[name] = os.path.join(self._pod_dir(uid), name)
            elif "persistentVolumeClaim" in vol:
                local[name] = self.claim_dir(ns, vol["persistentVolumeClaim"]["claimName"])
            elif "secret" in vol:
                src = vol["secret"]
                secret = await self._secret(ns, src["secretName"])
                d = local[name] = os.path.join(self._pod_dir(uid), name)
                os.makedirs(d, mode=0o700, exist_ok=True)
                data = secret.get("data") or {}
                # `items` projects only the keys it names, at its paths (a worker gets the
                # client's keys, never the server's); without it every key is a file.
                items = src.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    if item["key"] not in data:
                        raise ValueError(f"secret {ns}/{src['secretName']} has no key "
                                         f"{item['key']!r}")
                    path = os.path.join(d, item["path"])
                    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                    with open(path, "wb") as f:
                        f.write(base64.b64decode(data[item["key"]]))
                    os.chmod(path, item.get("mode", src.get("defaultMode", 0o644)))
            else:
                continue
            os.makedirs(local[name], mode=0o700, exist_ok=True)
        out = {}
        for mount in spec["containers"][0].get("volumeMounts") or []:
            if mount["name"] in local and mount["mountPath"].rstrip("/") != "/tmp":
                d = os.path.join(local[mount["name"]], mount.get("subPath") or "")
                os.makedirs(d, mode=0o700, exist_ok=True)
                out[mount["mountPath"]] = d.rstrip("/")
        return out

    # ---- pod lifecycle -----------------------------------------------------------------
    def _environment(self, pod: dict, ip: str, mounts: dict[str, str]) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
               "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "HOSTNAME": spec.get("hostname") or meta["name"]}
        if os.environ.get("PYTHONPATH"):
            # The code under test, as the runtime image would hold it (not whatever
            # geeps an installed package points at).
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                  "status.podIP": ip, "spec.nodeName": NODE}
        for e in spec["containers"][0].get("env") or []:
            if "value" in e:
                env[e["name"]] = self._rewrite(str(e["value"]))
            else:
                ref = ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
                if ref not in fields:
                    raise ValueError(f"env {e['name']}: only fieldRef {sorted(fields)} supported")
                env[e["name"]] = fields[ref]
        for key, value in env.items():
            for path, local in mounts.items():
                if value == path or value.startswith(path.rstrip("/") + "/"):
                    env[key] = local + value[len(path.rstrip("/")):]
                    break
        if "GEEPS_BIND_HOST" in env:
            env["GEEPS_BIND_HOST"] = ip
        if env.get("GEEPS_METRICS_PORT", "0") != "0":
            # Metrics bind every interface in a pod; here pods share this host's network,
            # so each binds its own pod IP instead, on the port its manifest declares
            # (the operator scrapes podIP:port, as it would on a cluster).
            env["GEEPS_METRICS_ADDR"] = ip
        return env

    @staticmethod
    def _command(container: dict) -> list[str]:
        cmd = list(container.get("command") or []) + list(container.get("args") or [])
        if not cmd:
            raise ValueError("the container has no command (images' entrypoints are not known)")
        if cmd[0] == "geeps":
            cmd[:1] = [sys.executable, "-m", "geeps"]
        elif cmd[0] in ("python", "python3"):
            cmd[0] = sys.executable
        return cmd

    async def _start(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        ip = self.address(ns, spec.get("subdomain") or "", spec.get("hostname") or name)
        proc = Proc(ns, name, uid, ip, os.path.join(self.log_dir, f"{ns}_{name}_{uid[:8]}.log"))
        self.procs[uid] = proc
        container = spec["containers"][0]
        selector = spec.get("nodeSelector") or {}
        if any(NODE_LABELS.get(k) != v for k, v in selector.items()):
            await self._patch(ns, name, {"status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "lastTransitionTime": now(),
                "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node "
                           "affinity/selector."}]}}, "/status")
            return
        pull = container.get("image", "").rsplit("/", 1)[-1]
        if pull in PULL_FAILURES:
            await self._waiting(ns, name, container, pull,
                                f'{PULL_FAILURES[pull]} "{container["image"]}"')
            return
        try:
            try:
                proc.command = self._command(container)
                proc.mounts = await self._mount(pod)
                proc.files = {m: sorted(os.listdir(d)) for m, d in proc.mounts.items()}
                proc.env = self._environment(pod, ip, proc.mounts)
            except ValueError as e:
                # A kubelet keeps retrying such a pod, which stays Pending.
                await self._waiting(ns, name, container, "CreateContainerConfigError", str(e))
                return
            await self._patch(ns, name, {"metadata": {"finalizers": [FINALIZER]}})
            try:
                with open(proc.log_path, "wb") as log:
                    proc.process = await self._exec(proc, pod, log)
            except OSError as e:
                await self._report(proc, container, 127, "StartError", str(e))
                return
            self.history.append(proc)
            proc.started.set()
            started = now()
            await self._patch(ns, name, {"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "hostIP": "127.0.0.1", "startTime": started,
                "containerStatuses": [{"name": container["name"], "ready": True,
                                       "restartCount": 0,
                                       "state": {"running": {"startedAt": started}}}]}},
                "/status")
            code = await proc.process.wait()
            if uid in self._lost:
                return                        # nobody reports for a lost node
            proc.exit_code = 128 - code if code < 0 else code     # -15 -> 143, as runtimes do
            await self._report(proc, container, proc.exit_code,
                               "Completed" if proc.exit_code == 0 else "Error", "")
        finally:
            # The pod's own volumes (its Secret's keys among them) end with it.
            shutil.rmtree(self._pod_dir(uid), ignore_errors=True)
            proc.started.set()
            proc.done.set()

    # ---- how a pod's process starts and is signalled (tests/e2e/containers.py runs
    # ---- containers instead) ----------------------------------------------------------
    async def _exec(self, proc: Proc, pod: dict, log) -> asyncio.subprocess.Process:
        container = pod["spec"]["containers"][0]
        return await asyncio.create_subprocess_exec(
            *proc.command, env=proc.env, stdout=log, stderr=asyncio.subprocess.STDOUT,
            cwd=container.get("workingDir") or self.root, start_new_session=True)

    async def _signal(self, proc: Proc, sig: int) -> None:
        os.killpg(proc.process.pid, sig)      # ProcessLookupError once it is gone

    async def _waiting(self, ns: str, name: str, container: dict, reason: str,
                       message: str) -> None:
        await self._patch(ns, name, {"status": {
            "phase": "Pending", "containerStatuses": [{
                "name": container["name"], "ready": False, "restartCount": 0,
                "image": container.get("image", ""),
                "state": {"waiting": {"reason": reason, "message": message}}}]}}, "/status")

    async def _report(self, proc: Proc, container: dict, code: int | None, reason: str,
                      message: str) -> None:
        state = {"terminated": {"exitCode": code, "finishedAt": now(), "reason": reason,
                                "message": message}} if code is not None else \
            {"waiting": {"reason": reason, "message": message}}
        await self._patch(proc.ns, proc.name, {"status": {
            "phase": "Succeeded" if code == 0 else "Failed",
            "reason": reason if code is None else None,
            "containerStatuses": [{"name": container["name"], "ready": False,
                                   "restartCount": 0, "state": state}]}}, "/status")

    async def _stop(self, proc: Proc, release: bool = False) -> None:
        await proc.started.wait()
        p = proc.process
        if p is not None and p.returncode is None:
            for sig, wait in ((signal.SIGTERM, self.grace), (signal.SIGKILL, 10.0)):
                try:
                    await self._signal(proc, sig)
                except ProcessLookupError:
                    break
                try:
                    await asyncio.wait_for(asyncio.shield(proc.done.wait()), wait)
                    break
                except asyncio.TimeoutError:
                    continue
        await proc.done.wait()
        self.procs.pop(proc.uid, None)
        if release:
            await self._release(proc.ns, proc.name)

    async def _release(self, ns: str, name: str) -> None:
        await self._patch(ns, name, {"metadata": {"finalizers": None}})

    async def shutdown(self) -> None:
        for proc in list(self.procs.values()):
            if proc.process is not None and proc.process.returncode is None:
                try:
                    await self._signal(proc, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for proc in list(self.procs.values()):
            if proc.process is not None:
                await proc.process.wait()
        for t in list(self._tasks):
            t.cancel()

    # ---- for tests -----------------------------------------------------------------------
    def lose(self, ns: str, name: str) -> None:
        """The node of pod ns/name is lost: its process dies and nothing reports it,
        and a deletion of the pod is never confirmed. Call on the kubelet's loop."""
        for proc in list(self.procs.values()):
            if proc.ns == ns and proc.name == name:
                self._lost.add(proc.uid)
                if proc.process is not None and proc.process.returncode is None:
                    try:
                        os.killpg(proc.process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                return
        raise KeyError(f"no running pod {ns}/{name}")

    def log_text(self, ns: str, name: str) -> str | None:
        for proc in reversed(self.history):
            if proc.ns == ns and proc.name == name:
                try:
                    with open(proc.log_path, errors="replace") as f:
                        return f.read()
                except OSError:
                    return None
        return None

    def processes(self, ns: str) -> list[Proc]:
        return [p for p in self.history if p.ns == ns]
