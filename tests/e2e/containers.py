"""The test kubelet's container mode: each pod becomes a `podman run` of its image, with
what the pod spec asks for enforced by the container runtime, not trusted.

    Cluster(workdir, kubelet=functools.partial(ContainerKubelet, owner="e2e-123"))

What the pod spec says, and what the container gets:
- image: the pod's image, never pulled (`--pull=never`); `mirror` maps a name to a local
  one, as a node's registry mirror would (examples name geeps/runtime:0.1.0, the CUDA
  image; here its CPU variant geeps/runtime:0.1.0-cpu runs).
- command/args: command replaces the image's ENTRYPOINT, args its CMD, as in Kubernetes;
  workingDir, else the image's WORKDIR.
- securityContext (the container's over the pod's): runAsUser/runAsGroup -> --user,
  fsGroup -> --group-add (and group ownership of the volumes, as a kubelet does),
  runAsNonRoot checked against the user, readOnlyRootFilesystem -> --read-only (without
  podman's extra tmpfs mounts, so only the pod's volumes are writable),
  allowPrivilegeEscalation: false -> no-new-privileges, capabilities drop/add ->
  --cap-drop/--cap-add, seccompProfile RuntimeDefault -> podman's default profile
  (Unconfined -> unconfined; Localhost profiles are not supported: the pod fails).
  privileged: true is refused (a test kubelet has no business running one).
- env: `value`; valueFrom fieldRef (metadata.name/namespace, status.podIP,
  spec.nodeName) and secretKeyRef (read from the API).
- volumes: emptyDir -> a fresh host directory per pod (mode 0777, as a kubelet makes
  it); persistentVolumeClaim -> one host directory per claim that outlives pods,
  group-owned by fsGroup and setgid; secret -> the Secret's keys (or its `items`, with
  their paths and modes) as files owned by root and fsGroup under defaultMode, mounted
  read-only. readOnly mounts are read-only; subPath is honoured.
- resources: limits.cpu -> --cpus, limits.memory -> --memory. Not applied: requests
  (a scheduler's business), GPUs and other extended resources (no device plugin),
  ephemeral-storage.
- network: the host's (--network host); each pod binds its own loopback address, as in
  process mode (see kubelet.py), so traffic never leaves this machine.
- ignored as in process mode: probes, node selection, imagePullSecrets (nothing is pulled).

Every container carries the label engine.LABEL=<owner>, so `remove_labelled(owner)`
clears what a crashed run left. After each container starts, the kubelet records what
its main process really runs as (from /proc: uids, gids, CapEff, Seccomp, NoNewPrivs)
and what a shell inside it sees (`id`, a write to /), for tests to assert on.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from dataclasses import dataclass, field

from geeps_sandbox import engine

from .harness import Operator
from .kubelet import Kubelet, Proc

# podman is told the signal by name, so its exit status stays 128+N as for a process.
_SIGNALS = {signal.SIGTERM: "TERM", signal.SIGKILL: "KILL", signal.SIGINT: "INT"}
_SECCOMP = {"RuntimeDefault": [], "Unconfined": ["--security-opt=seccomp=unconfined"]}


@dataclass
class Inside:
    """What one container's process runs as, seen from /proc and from a shell inside."""
    pod: str
    uid: str = ""           # /proc/PID/status "Uid:" (real, effective, saved, fs)
    gid: str = ""
    groups: str = ""
    cap_eff: str = ""
    seccomp: str = ""       # 2: filter mode (a profile is loaded)
    no_new_privs: str = ""
    id: str = ""            # `id` run inside, as the container's user
    root_write: str = ""    # what a write to / answered
    # Each place the runtime is told to write (temp dir, caches, checkpoints): True, or
    # the error a write there met; "curve" is True when every key file is readable.
    writes: dict = field(default_factory=dict)
    error: str = ""         # why something could not be seen (the container had ended)


def _cpus(value) -> str:
    v = str(value)
    return str(int(v[:-1]) / 1000) if v.endswith("m") else v


def _memory(value) -> str:
    """A Kubernetes memory quantity as bytes for podman (Mi is 2^20, M is 10^6)."""
    v = str(value)
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("Ti", 2**40),
                           ("k", 10**3), ("M", 10**6), ("G", 10**9), ("T", 10**12)):
        if v.endswith(suffix):
            return f"{int(float(v[:-len(suffix)]) * factor)}b"
    return f"{int(float(v))}b"


# Run inside a container as its user: can it write where the runtime will (the temp
# directory, CuPy's kernel cache, other caches, the checkpoint directory), and read its
# CurveZMQ keys? On a read-only root each must be a volume.
_WRITES = """
import json, os, tempfile
out = {}
for key in ("tmp", "CUPY_CACHE_DIR", "XDG_CACHE_HOME", "GEEPS_CHECKPOINT_DIR"):
    d = tempfile.gettempdir() if key == "tmp" else os.environ.get(key)
    if not d:
        continue
    try:
        os.makedirs(d, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=d).close()
        out[key] = True
    except OSError as e:
        out[key] = f"{d}: {e.strerror}"
curve = os.environ.get("GEEPS_CURVE_DIR")
if curve:
    try:
        out["curve"] = all(open(os.path.join(curve, f), "rb").read() is not None
                           for f in os.listdir(curve))
    except OSError as e:
        out["curve"] = f"{curve}: {e.strerror}"
print(json.dumps(out))
"""


def stand_in_or_skip() -> None:
    """Make (or find) the stand-in base image, or skip the test saying why when the
    machine cannot: debootstrap fetches Debian's packages from its mirror. A failing
    build of the project's own Dockerfiles afterwards still fails the test."""
    import pytest
    from geeps_sandbox import images
    try:
        images.stand_in(log=lambda *a: None)
    except SystemExit as e:         # not root: debootstrap cannot run
        pytest.skip(f"no stand-in base image on this machine: {e}")
    except RuntimeError as e:
        if str(e).startswith("debootstrap"):
            pytest.skip(f"no stand-in base image on this machine: {str(e)[:400]}")
        raise


class ContainerKubelet(Kubelet):
    def __init__(self, api_url: str, root: str, log_dir: str, volume_dir: str,
                 grace: float = 5.0, *, owner: str, mirror: dict[str, str] | None = None):
        super().__init__(api_url, root, log_dir, volume_dir, grace)
        self.owner = owner
        self.mirror = dict(mirror or {})
        self.inside: dict[str, Inside] = {}          # by pod "ns/name", latest container
        self._args: dict[str, list[str]] = {}       # by pod uid: podman run flags

    @staticmethod
    def container_name(proc: Proc) -> str:
        return f"geeps-{proc.ns}-{proc.name}-{proc.uid[:8]}"[:120]

    # ---- command: the image's, not this interpreter ------------------------------------
    @staticmethod
    def _command(container: dict) -> list[str]:
        return list(container.get("command") or []) + list(container.get("args") or [])

    # ---- environment: no host paths, no host PATH ----------------------------------------
    def _environment(self, pod: dict, ip: str, mounts: dict[str, str]) -> dict[str, str]:
        # secretKeyRef entries are resolved in _mount (they need the API); the process
        # kubelet would refuse them, so they are hidden from it here.
        spec = dict(pod["spec"])
        c = dict(spec["containers"][0])
        c["env"] = [e for e in c.get("env") or []
                    if "secretKeyRef" not in (e.get("valueFrom") or {})]
        spec["containers"] = [c] + spec["containers"][1:]
        env = super()._environment({**pod, "spec": spec}, ip, {})   # {}: container paths
        for host_only in ("PATH", "HOME", "PYTHONDONTWRITEBYTECODE"):
            env.pop(host_only, None)
        return env

    async def _secret_env(self, pod: dict, env: dict[str, str]) -> None:
        ns = pod["metadata"]["namespace"]
        for e in pod["spec"]["containers"][0].get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                data = (await self._secret(ns, ref["name"])).get("data") or {}
                if ref["key"] not in data:
                    raise ValueError(f"env {e['name']}: secret {ref['name']} has no key "
                                     f"{ref['key']}")
                env[e["name"]] = base64.b64decode(data[ref["key"]]).decode()

    # ---- volumes -------------------------------------------------------------------------
    async def _mount(self, pod: dict) -> dict[str, str]:
        """Host directories for the pod's volumes; the podman flags go to self._args."""
        meta, spec = pod["metadata"], pod["spec"]
        ns, uid = meta["namespace"], meta["uid"]
        container = spec["containers"][0]
        sec = self._security(pod)
        fs_group = (spec.get("securityContext") or {}).get("fsGroup")
        local: dict[str, str] = {}
        for vol in spec.get("volumes") or []:
            name = vol["name"]
            if "emptyDir" in vol:
                d = local[name] = os.path.join(self._pod_dir(uid), name)
                os.makedirs(d, exist_ok=True)
                os.chmod(d, 0o777)
            elif "persistentVolumeClaim" in vol:
                d = local[name] = self.claim_dir(ns, vol["persistentVolumeClaim"]["claimName"])
                os.makedirs(d, exist_ok=True)
                if fs_group is not None:
                    os.chown(d, 0, int(fs_group))
                    os.chmod(d, 0o2775)
            elif "secret" in vol:
                local[name] = await self._secret_volume(pod, vol, fs_group)
            else:
                raise ValueError(f"volume {name}: only emptyDir, persistentVolumeClaim and "
                                 f"secret are supported")
        flags, out = [], {}
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in local:
                raise ValueError(f"volumeMount {mount['name']}: no such volume")
            d = os.path.join(local[mount["name"]], mount.get("subPath") or "")
            if mount.get("subPath"):
                os.makedirs(d, exist_ok=True)
            ro = mount.get("readOnly") or any("secret" in v and v["name"] == mount["name"]
                                              for v in spec.get("volumes") or [])
            flags.append(f"--volume={d.rstrip('/')}:{mount['mountPath']}"
                         + (":ro" if ro else ""))
            out[mount["mountPath"]] = d.rstrip("/")
        env_extra: dict[str, str] = {}
        await self._secret_env(pod, env_extra)
        self._args[uid] = sec + flags + self._limits(container) + \
            [f"--env={k}={v}" for k, v in env_extra.items()]
        return out

    async def _secret_volume(self, pod: dict, vol: dict, fs_group) -> str:
        src = vol["secret"]
        secret = await self._secret(pod["metadata"]["namespace"], src["secretName"])
        data = secret.get("data") or {}
        d = os.path.join(self._pod_dir(pod["metadata"]["uid"]), vol["name"])
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
        default = src.get("defaultMode", 0o644)
        items = src.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            if item["key"] not in data:
                if src.get("optional"):
                    continue
                raise ValueError(f"volume {vol['name']}: secret {src['secretName']} has no "
                                 f"key {item['key']}")
            path = os.path.join(d, item["path"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(base64.b64decode(data[item["key"]]))
            if fs_group is not None:
                os.chown(path, 0, int(fs_group))
            os.chmod(path, item.get("mode", default))
        return d

    # ---- securityContext and limits --------------------------------------------------------
    def _security(self, pod: dict) -> list[str]:
        spec = pod["spec"]
        psc = spec.get("securityContext") or {}
        csc = spec["containers"][0].get("securityContext") or {}
        sc = {**psc, **csc}     # the container's settings win, as in Kubernetes
        if sc.get("privileged"):
            raise ValueError("securityContext.privileged: not run by this kubelet")
        user, group = sc.get("runAsUser"), sc.get("runAsGroup")
        flags = []
        if user is not None:
            flags.append(f"--user={user}" + (f":{group}" if group is not None else ""))
        elif group is not None:
            raise ValueError("securityContext.runAsGroup without runAsUser is not supported")
        if sc.get("runAsNonRoot") and user is None:
            raise ValueError("securityContext.runAsNonRoot needs a numeric runAsUser here")
        if sc.get("runAsNonRoot") and int(user) == 0:
            raise ValueError("securityContext.runAsNonRoot: runAsUser is 0")
        for g in [psc.get("fsGroup")] + list(psc.get("supplementalGroups") or []):
            if g is not None:
                flags.append(f"--group-add={g}")
        if sc.get("readOnlyRootFilesystem"):
            flags += ["--read-only", "--read-only-tmpfs=false"]
        if sc.get("allowPrivilegeEscalation") is False:
            flags.append("--security-opt=no-new-privileges")
        caps = sc.get("capabilities") or {}
        flags += [f"--cap-drop={c}" for c in caps.get("drop") or []]
        flags += [f"--cap-add={c}" for c in caps.get("add") or []]
        profile = (sc.get("seccompProfile") or {}).get("type", "RuntimeDefault")
        if profile not in _SECCOMP:
            raise ValueError(f"securityContext.seccompProfile.type {profile}: not supported")
        return flags + _SECCOMP[profile]

    @staticmethod
    def _limits(container: dict) -> list[str]:
        limits = (container.get("resources") or {}).get("limits") or {}
        flags = []
        if "cpu" in limits:
            flags.append(f"--cpus={_cpus(limits['cpu'])}")
        if "memory" in limits:
            flags.append(f"--memory={_memory(limits['memory'])}")
        return flags

    # ---- the container -----------------------------------------------------------------
    async def _exec(self, proc: Proc, pod: dict, log) -> asyncio.subprocess.Process:
        spec, container = pod["spec"], pod["spec"]["containers"][0]
        image = self.mirror.get(container["image"], container["image"])
        cmd = engine.podman(
            "run", "--rm", "--pull=never", "--network=host", "--tty=false",
            f"--name={self.container_name(proc)}",
            f"--label={engine.LABEL}={self.owner}",
            f"--label=geeps.pod={proc.ns}/{proc.name}",
            f"--hostname={spec.get('hostname') or proc.name}",
            *engine.ulimits(), *self._args.pop(proc.uid, []),
            *[f"--env={k}={v}" for k, v in proc.env.items()])
        if container.get("workingDir"):
            cmd.append(f"--workdir={container['workingDir']}")
        if container.get("command"):
            cmd.append("--entrypoint=" + json.dumps(container["command"]))
        cmd.append(image)
        cmd += list(container.get("args") or [])
        p = await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=asyncio.subprocess.STDOUT,
                                                 stdin=asyncio.subprocess.DEVNULL,
                                                 start_new_session=True)
        self._spawn(self._look_inside(proc, p))
        return p

    async def _signal(self, proc: Proc, sig: int) -> None:
        name = _SIGNALS.get(sig, str(int(sig)))
        p = await asyncio.create_subprocess_exec(
            *engine.podman("kill", f"--signal={name}", self.container_name(proc)),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        if await p.wait() != 0 and proc.process.returncode is None:
            # Not created yet, or already gone: signal `podman run` itself, which
            # forwards it (--sig-proxy) or has nothing left to stop.
            os.killpg(proc.process.pid, sig)

    async def _podman(self, *args: str, timeout: float = 30) -> tuple[int, str]:
        p = await asyncio.create_subprocess_exec(*engine.podman(*args),
                                                 stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(p.communicate(), timeout)
        except asyncio.TimeoutError:
            p.kill()
            return -1, "timeout"
        return p.returncode, out.decode(errors="replace").strip()

    async def _look_inside(self, proc: Proc, runner) -> None:
        """Record what the container's process runs as (see Inside)."""
        name, seen = self.container_name(proc), Inside(f"{proc.ns}/{proc.name}")
        self.inside[seen.pod] = seen
        pid = 0
        for _ in range(400):            # until the container runs, or `podman run` ends
            code, out = await self._podman("inspect", "--format", "{{.State.Pid}}", name)
            if code == 0 and out.isdigit() and int(out) > 0:
                pid = int(out)
                break
            if runner.returncode is not None:
                break
            await asyncio.sleep(0.05)   # polling podman: there is no event to wait on here
        if not pid:
            seen.error = "the container never ran"
            return
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        except OSError as e:
            seen.error = f"/proc/{pid}/status: {e}"
            return
        seen.uid, seen.gid, seen.groups = status.get("Uid", ""), status.get("Gid", ""), \
            status.get("Groups", "")
        seen.cap_eff, seen.seccomp = status.get("CapEff", ""), status.get("Seccomp", "")
        seen.no_new_privs = status.get("NoNewPrivs", "")
        # One exec for every probe: a short job's container may end between two.
        code, out = await self._podman(
            "exec", name, "sh", "-c",
            "id; echo '<<sep>>'; (echo x > /geeps-probe && echo WRITTEN) 2>&1; "
            "echo '<<sep>>'; python -c \"$0\"", _WRITES)
        parts = out.split("<<sep>>")
        if code != 0 and len(parts) < 3:
            seen.error = f"exec (exit {code}): {out[-500:]}"
            return
        seen.id, seen.root_write, writes = (p.strip() for p in parts[:3])
        try:
            seen.writes = json.loads(writes.splitlines()[-1])
        except (ValueError, IndexError):
            seen.writes = {"probe": writes[-500:]}

    async def shutdown(self) -> None:
        await super().shutdown()
        engine.remove_labelled(self.owner)

    def container_names(self, ns: str) -> list[str]:
        return [self.container_name(p) for p in self.history if p.ns == ns]


class ImageOperator(Operator):
    """The operator from its image, as the chart runs it (templates/deployment.yaml):
    the image's user, a read-only root whose only writable path is a /tmp volume, no
    capabilities, no privilege escalation; against the emulator over the host's
    network."""

    def __init__(self, cluster, workdir: str, owner: str, image: str,
                 runtime_image: str | None = None):
        super().__init__(cluster, workdir)
        self.name = f"geeps-operator-{owner}"
        tmp = os.path.join(workdir, "operator-tmp")
        os.makedirs(tmp, exist_ok=True)
        os.chmod(tmp, 0o1777)           # an emptyDir's mode
        self.args = engine.podman(
            "run", "--rm", "--pull=never", "--network=host", f"--name={self.name}",
            f"--label={engine.LABEL}={owner}", "--read-only", "--read-only-tmpfs=false",
            f"--volume={tmp}:/tmp", "--cap-drop=ALL", "--security-opt=no-new-privileges",
            "--env=PYTHONDONTWRITEBYTECODE=1", *engine.ulimits(), image,
            "--all-namespaces", "--server", cluster.operator_url, "--resync-seconds", "0.5",
            "--health-port", str(self.health_port), "--metrics-port", str(self.metrics_port),
            *([f"--runtime-image={runtime_image}"] if runtime_image else []))

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        engine.run(engine.podman("rm", "-f", "-t", "0", self.name), check=False)
