"""GeePSJobs from Python: submit, watch, read logs, delete, against a kubeconfig context
with the official `kubernetes` client (what `geeps submit|status|logs|delete` use).

    from geeps_operator.sdk import Jobs
    jobs = Jobs()                                   # current context and its namespace
    name = jobs.submit("examples/01-minimal/job.yaml")
    for job in jobs.watch(name):                    # each change, until it ends
        print(describe(job))
    print(jobs.logs(name, role="worker", rank=0))
    jobs.delete(name)

A manifest is checked here first (geeps.job.spec.validate: the same rules as the CRD
and `geeps run`), so a mistake is named before anything reaches the cluster.
"""
from __future__ import annotations

import json
import time
from typing import Any, Iterator

from geeps.job import spec as S

from .manifests import LABEL_INDEX, LABEL_JOB, LABEL_ROLE

TERMINAL = ("Succeeded", "Failed")


class JobError(Exception):
    """What the cluster said no to, in one line."""


def _client():
    # Imported here: `geeps --help` and the operator's other commands do not need it.
    try:
        import kubernetes
    except ImportError:
        raise JobError("the official Kubernetes client is missing: "
                       "pip install 'geeps[operator]'") from None
    return kubernetes


class Jobs:
    """GeePSJobs of one namespace in one cluster (a kubeconfig context)."""

    def __init__(self, namespace: str | None = None, *, context: str | None = None,
                 config_file: str | None = None):
        k = _client()
        try:
            k.config.load_kube_config(config_file=config_file, context=context)
        except (k.config.ConfigException, OSError) as e:
            raise JobError(f"no usable kubeconfig ({e}); set KUBECONFIG or pass "
                           "--kubeconfig") from None
        if namespace is None:
            contexts, active = k.config.list_kube_config_contexts(config_file=config_file)
            if context is not None:
                active = next(c for c in contexts if c["name"] == context)
            namespace = (active.get("context") or {}).get("namespace") or "default"
        self.namespace = namespace
        self._k = k
        self._api = k.client.ApiClient()
        self.custom = k.client.CustomObjectsApi(self._api)
        self.core = k.client.CoreV1Api(self._api)

    def _call(self, what: str, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except self._k.client.exceptions.ApiException as e:
            raise JobError(f"{what}: {_reason(e)}") from None
        except OSError as e:        # urllib3's connection errors are OSErrors
            raise JobError(f"{what}: cannot reach the cluster ({e})") from None

    # ---- the verbs ------------------------------------------------------------------
    def submit(self, manifest: str | dict) -> str:
        """Create the job from a file path or a manifest dict; its name."""
        body = S.read_manifest(manifest) if isinstance(manifest, str) else manifest
        S.validate(body)            # SpecError naming each field at fault
        body = dict(body, metadata=dict(body.get("metadata") or {}))
        ns = body["metadata"].get("namespace") or self.namespace
        body["metadata"]["namespace"] = ns
        made = self._call(f"submit {body['metadata'].get('name')}",
                          self.custom.create_namespaced_custom_object,
                          S.GROUP, S.VERSION, ns, S.PLURAL, body,
                          field_validation="Strict")
        return made["metadata"]["name"]

    def get(self, name: str) -> dict:
        return self._call(f"get {name}", self.custom.get_namespaced_custom_object,
                          S.GROUP, S.VERSION, self.namespace, S.PLURAL, name)

    def list(self) -> list[dict]:
        return self._call("list", self.custom.list_namespaced_custom_object,
                          S.GROUP, S.VERSION, self.namespace, S.PLURAL)["items"]

    def watch(self, name: str, timeout: float = 3600.0, poll: float = 1.0) -> Iterator[dict]:
        """The job each time its status changes, until it is Succeeded or Failed (or
        `timeout` seconds pass: JobError). Polls: a watch through proxies that cut long
        requests would need the same fallback."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            job = self.get(name)
            status = job.get("status") or {}
            if status != last:
                last = status
                yield job
            if status.get("phase") in TERMINAL:
                return
            if time.monotonic() > deadline:
                raise JobError(f"{name} is still {status.get('phase') or 'Pending'} after "
                               f"{timeout:g} s")
            time.sleep(poll)

    def wait(self, name: str, timeout: float = 3600.0) -> dict:
        """The job once it ended."""
        job = None
        for job in self.watch(name, timeout):
            pass
        return job

    def pods(self, name: str, role: str | None = None, rank: int | None = None) -> list[dict]:
        sel = [f"{LABEL_JOB}={name}"]
        if role is not None:
            sel.append(f"{LABEL_ROLE}={role}")
        if rank is not None:
            sel.append(f"{LABEL_INDEX}={rank}")
        # As JSON, not the client's models: those refuse a pod status missing a field
        # some kubelets leave out (a container's imageID before its image is pulled).
        out = self._call(f"pods of {name}", self.core.list_namespaced_pod, self.namespace,
                         label_selector=",".join(sel), _preload_content=False)
        return json.loads(out.data)["items"]

    def logs(self, name: str, role: str = "worker", rank: int = 0) -> str:
        """The log of one of the job's pods (worker 0 by default)."""
        pods = self.pods(name, role, rank)
        if not pods:
            raise JobError(f"{name} has no {role} {rank} pod (yet)")
        newest = max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
        out = self._call(f"log of {newest['metadata']['name']}",
                         self.core.read_namespaced_pod_log, newest["metadata"]["name"],
                         self.namespace, _preload_content=False)
        return out.data.decode("utf-8", "replace")

    def delete(self, name: str, wait: bool = False, timeout: float = 120.0) -> None:
        """Delete the job (its pods go with it, by owner references)."""
        self._call(f"delete {name}", self.custom.delete_namespaced_custom_object,
                   S.GROUP, S.VERSION, self.namespace, S.PLURAL, name)
        deadline = time.monotonic() + timeout
        while wait:
            try:
                self.custom.get_namespaced_custom_object(S.GROUP, S.VERSION,
                                                         self.namespace, S.PLURAL, name)
            except self._k.client.exceptions.ApiException as e:
                if e.status == 404:
                    return
                raise JobError(f"delete {name}: {_reason(e)}") from None
            if time.monotonic() > deadline:
                raise JobError(f"{name} still exists {timeout:g} s after its deletion "
                               "(a finalizer the operator did not remove: is it running?)")
            time.sleep(0.5)


def describe(job: dict) -> str:
    """One line: name, phase, progress, and the newest condition's message."""
    st = job.get("status") or {}
    progress = st.get("progress") or {}     # worker 0's geeps.report(), as the operator read it
    parts = [job["metadata"]["name"], st.get("phase") or "Pending"]
    if st.get("workers"):
        parts.append(f"workers {st['workers']}")
    if st.get("clock") is not None:
        parts.append(f"clock {st['clock']}")
    membership = st.get("membership") or {}     # a coordinated job's, from its coordinator
    if isinstance(membership.get("epoch"), int):
        parts.append(f"servers {len(membership.get('servers') or [])} epoch "
                     f"{membership['epoch']}" + ("" if membership.get("settled") else
                                                 " (changing)"))
    for key, fmt in (("loss", "loss {:.4g}"), ("accuracy", "accuracy {:.4g}"),
                     ("samplesPerSecond", "{:.0f} samples/s"), ("etaSeconds", "ETA {:.0f} s")):
        if isinstance(progress.get(key), (int, float)):
            parts.append(fmt.format(progress[key]))
    conds = [c for c in st.get("conditions") or [] if c.get("status") == "True"]
    if conds:
        c = max(conds, key=lambda c: c.get("lastTransitionTime") or "")
        parts.append(f"{c['type']}: {c.get('message') or c.get('reason') or ''}".rstrip(": "))
    return "  ".join(str(p) for p in parts)


def _reason(e: Any) -> str:
    """The API's message of an ApiException (its Status body), else its reason."""
    try:
        body = json.loads(e.body or "{}")
        return f"HTTP {e.status}: {body.get('message') or e.reason}"
    except ValueError:
        return f"HTTP {e.status}: {e.reason}"
