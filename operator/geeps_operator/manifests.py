"""Pure builders of every object the operator creates for a GeePSJob.

    job = geeps.job.spec.validate(body)
    svc = service(job, owner)                  # headless: stable server DNS names
    pods = [server_pod(job, i, owner) for i in range(job.processes("server"))]

Nothing here talks to the API; the reconciler decides *when* to create, these say
*what*. Every child carries an owner reference to its job (so the garbage collector
removes it with the job) and the labels geeps.dev/job-name, geeps.dev/role and
geeps.dev/index, which is how the operator finds its pods again.

Restarts: pods are created with restartPolicy Never and the *operator* replaces a
failed pod, so it can count restarts against backoffLimit and apply ExitCode rules.
The replacement has the same name (`<job>-worker-<i>`), created once the failed pod
is gone, so names and server DNS records stay stable across restarts.

Security: every pod runs as a non-root user with a read-only root filesystem, no
capabilities and the runtime's default seccomp profile; /tmp is an emptyDir (Python,
CuPy and torch need somewhere to write). Workers and servers talk CurveZMQ with keys
from the job's Secret (`curve_secret`), mounted read-only at CURVE_MOUNT, unless
spec.security.insecure; a NetworkPolicy (`network_policy`) admits the parameter-server
port only from the job's own pods.

Co-located jobs (spec.servers.colocate): no server pods; worker pod i serves shard i
itself (GEEPS_COLOCATE=1), so it takes what a server pod has: the parameter-server
port, the headless service's DNS record, the checkpoint volume. Which pods serve the
shards is the job's to say (GeePSJob.shard_role, the same answer `geeps run` gets).

Coordinated jobs (GeePSJob.coordinated: spec.servers.replication >= 2 or
spec.servers.elastic): one more pod, `<job>-coordinator-0`, running `geeps coordinator`
(the membership: failover, joins, drains) with its HTTP API on COORDINATOR_PORT. Small:
it holds a few KiB of membership and pings the servers. The operator reaches it on its
pod IP, as it reaches worker 0's progress, so it needs no DNS record (the headless
service selects the shard-serving pods only); the job's NetworkPolicy admits its port
from the operator's pods only (OPERATOR_POD_LABELS), since the API drains servers. A
server pod created once the job runs (a new rank, or the replacement of a lost one)
is a joiner (GEEPS_JOIN=1): it restores nothing and waits for the membership.
"""
from __future__ import annotations

from typing import Any

from geeps.job import spec as _spec
from geeps.job.env import job_env
from geeps.job.spec import GeePSJob

LABEL_JOB = "geeps.dev/job-name"
LABEL_ROLE = "geeps.dev/role"
LABEL_INDEX = "geeps.dev/index"
MANAGED_BY = {"app.kubernetes.io/managed-by": "geeps-operator", "app.kubernetes.io/name": "geeps"}

SERVER_PORT = _spec.SERVER_PORT             # every shard listens here, on its own pod IP
SERVER_PORT_NAME = "ps"
METRICS_PORT_NAME = "metrics"
CONTAINER = "geeps"                         # the one container of every pod
SERVER_COMMAND = ["geeps", "server"]        # the runtime image puts `geeps` on PATH
COORDINATOR = "coordinator"                 # the role label of a coordinator pod
COORDINATOR_PORT = _spec.COORDINATOR_PORT
COORDINATOR_PORT_NAME = "coordinator"       # the chart's NetworkPolicy names it too
COORDINATOR_COMMAND = ["geeps", "coordinator"]
# What a coordinator pod asks of a node: it pings a few servers and keeps a membership
# of a few KiB. The memory limit is a bound on a leak, not a working size.
COORDINATOR_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"},
                         "limits": {"memory": "256Mi"}}
# The labels of the operator's own pods (the chart's selector labels, default name):
# the only pods a job's NetworkPolicy lets reach its coordinator's API.
OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "geeps-operator"}
GPU_RESOURCE = "nvidia.com/gpu"
CHECKPOINT_MOUNT = "/var/lib/geeps/checkpoints"
CHECKPOINT_VOLUME = "geeps-checkpoints"
CURVE_MOUNT = "/etc/geeps/curve"
CURVE_VOLUME = "geeps-curve"
TMP_MOUNT = "/tmp"
TMP_VOLUME = "geeps-tmp"
RUN_AS = 10001                              # the runtime image's `geeps` user and group
# Caches that default to $HOME, which a read-only root filesystem cannot hold.
WRITABLE_CACHES = {"XDG_CACHE_HOME": f"{TMP_MOUNT}/.cache",
                   "CUPY_CACHE_DIR": f"{TMP_MOUNT}/.cupy/kernel_cache"}


def with_default_image(job_body: dict, image: str) -> dict:
    """`job_body` with spec.image set to `image` (the operator's --runtime-image) where
    the job names none: the CRD has no default, so the platform's choice applies. An
    empty image is not "none", nor is a missing or malformed spec given one: they stay,
    for validation to refuse by field."""
    spec = job_body.get("spec")
    if not isinstance(spec, dict) or "image" in spec:
        return job_body
    return {**job_body, "spec": {**spec, "image": image}}


def owner_reference(job_body: dict) -> dict:
    """The controller reference every child of `job_body` carries."""
    meta = job_body["metadata"]
    return {"apiVersion": _spec.API_VERSION, "kind": _spec.KIND, "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def labels(job: GeePSJob, role: str | None = None, index: int | None = None) -> dict[str, str]:
    out = dict(MANAGED_BY)
    out[LABEL_JOB] = job.name
    if role is not None:
        out[LABEL_ROLE] = role
    if index is not None:
        out[LABEL_INDEX] = str(index)
    return out


def service_name(job_name: str) -> str:
    return f"{job_name}-server"


def pod_name(job_name: str, role: str, index: int) -> str:
    return f"{job_name}-{role}-{index}"


def server_address(job: GeePSJob, index: int) -> str:
    """host:port of shard `index`: its pod's DNS name through the headless service
    (the same for every pod of that slot, a replacement included)."""
    return (f"{pod_name(job.name, job.shard_role, index)}.{service_name(job.name)}."
            f"{job.namespace}.svc:{SERVER_PORT}")


def server_addresses(job: GeePSJob) -> list[str]:
    """GEEPS_SERVERS: the DNS name of each shard through the headless service."""
    return [server_address(job, i) for i in range(job.shards)]


def _meta(job: GeePSJob, name: str, owner: dict, lab: dict[str, str]) -> dict:
    return {"name": name, "namespace": job.namespace, "labels": lab,
            "ownerReferences": [owner]}


def service(job: GeePSJob, owner: dict) -> dict:
    """Headless service `<job>-server`: gives server pod i the name
    `<job>-server-<i>.<job>-server.<ns>.svc`. publishNotReadyAddresses, because workers
    must resolve a shard before it passes any probe (they connect and retry)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(job, service_name(job.name), owner, labels(job)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB: job.name, LABEL_ROLE: job.shard_role},
            "ports": [{"name": SERVER_PORT_NAME, "port": SERVER_PORT,
                       "targetPort": SERVER_PORT_NAME, "protocol": "TCP"}],
        },
    }


def _env(job: GeePSJob, role: str, index: int, checkpoint_dir: str,
         join: bool = False) -> list[dict]:
    plain = dict(WRITABLE_CACHES)
    plain.update(job_env(job, role, index, server_addresses(job), bind_host="*",
                         checkpoint_dir=checkpoint_dir,
                         curve_dir="" if job.insecure else CURVE_MOUNT,
                         metrics_port=job.metrics_port, join=join))
    env = [{"name": k, "value": v} for k, v in plain.items()]
    # valueFrom entries (secrets, field refs) are resolved by the kubelet, not by us.
    env += [dict(e) for e in job.env if "valueFrom" in e and "value" not in e]
    return env


def container_security() -> dict:
    """Container-level securityContext: what the runtime needs and nothing more."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}}


def pod_security() -> dict:
    """Pod-level securityContext. fsGroup makes the mounted Secret and checkpoint volume
    readable and writable by the non-root user (the kubelet gives the group access)."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}}


def checkpoint_source(job: GeePSJob) -> dict | None:
    """The volume source server pods keep checkpoints on: spec.checkpoint.volume; else,
    when checkpoints are on, an emptyDir, which dies with the pod (see
    `checkpoints_durable`); None when there is nothing to keep."""
    volume = job.spec.get("checkpoint", {}).get("volume")
    if volume:
        return dict(volume)
    return {"emptyDir": {}} if job.checkpoint_every > 0 else None


def checkpoints_durable(job: GeePSJob) -> bool:
    """Whether a replaced server pod finds its shard's checkpoints again."""
    return job.checkpoint_every <= 0 or bool(job.spec.get("checkpoint", {}).get("volume"))


def _resources(role_spec: dict, gpus: int) -> dict:
    res = {k: dict(v) for k, v in (role_spec.get("resources") or {}).items() if v}
    if gpus > 0:
        # Extended resources must be in limits (requests default to them).
        res.setdefault("limits", {})[GPU_RESOURCE] = gpus
    return res


def _pod(job: GeePSJob, role: str, index: int, owner: dict, *, command: list[str],
         args: list[str], join: bool = False) -> dict:
    role_spec = job.servers.raw if role == "server" else job.workers.raw
    if role == COORDINATOR:
        # Scheduled like the servers, but none of their volumes or resources.
        role_spec = {k: v for k, v in job.servers.raw.items()
                     if k not in ("volumes", "volumeMounts", "resources")}
    gpus = job.workers.gpus if role == "worker" else 0
    volumes = [dict(v) for v in role_spec.get("volumes", [])]
    mounts = [dict(m) for m in role_spec.get("volumeMounts", [])]
    if not any(mt.get("mountPath") == TMP_MOUNT for mt in mounts):   # the user's own wins
        volumes.append({"name": TMP_VOLUME, "emptyDir": {}})
        mounts.append({"name": TMP_VOLUME, "mountPath": TMP_MOUNT})
    if not job.insecure:
        volume, mount = curve_mount(job, role)
        volumes.append(volume)
        mounts.append(mount)
    checkpoint_dir = ""
    source = checkpoint_source(job)
    if job.serves_shards(role) and source is not None:
        volumes.append({"name": CHECKPOINT_VOLUME, **source})
        mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": CHECKPOINT_MOUNT})
        # One directory per job, so jobs sharing a claim never read each other's shards.
        # Made by the server, not by a subPath mount: the kubelet creates a subPath
        # directory owned by root, which the non-root server could not write.
        checkpoint_dir = f"{CHECKPOINT_MOUNT}/{job.name}"
    ports = [{"name": METRICS_PORT_NAME, "containerPort": job.metrics_port, "protocol": "TCP"}]
    if job.serves_shards(role):
        ports.insert(0, {"name": SERVER_PORT_NAME, "containerPort": SERVER_PORT,
                         "protocol": "TCP"})
    if role == COORDINATOR:
        ports.insert(0, {"name": COORDINATOR_PORT_NAME, "containerPort": COORDINATOR_PORT,
                         "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": job.spec.get("image") or _spec.DEFAULT_IMAGE,
        "imagePullPolicy": job.spec["imagePullPolicy"],
        "command": list(command),
        "args": list(args),
        "env": _env(job, role, index, checkpoint_dir, join),
        "ports": ports,
        "securityContext": container_security(),
    }
    if job.spec.get("workingDir"):
        container["workingDir"] = job.spec["workingDir"]
    resources = _resources({"resources": COORDINATOR_RESOURCES} if role == COORDINATOR
                           else role_spec, gpus)
    if resources:
        container["resources"] = resources
    container["volumeMounts"] = mounts
    if role == "server":
        container["readinessProbe"] = {"tcpSocket": {"port": SERVER_PORT_NAME},
                                       "periodSeconds": 5}
    elif role == COORDINATOR:
        container["readinessProbe"] = {"httpGet": {"path": "/membership",
                                                   "port": COORDINATOR_PORT_NAME},
                                       "periodSeconds": 5}
    name = pod_name(job.name, role, index)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",   # the operator restarts, so it can count (see module doc)
        "securityContext": pod_security(),
        "containers": [container],
    }
    if job.serves_shards(role):
        # hostname + subdomain = the headless service's DNS record for this shard.
        pod_spec["hostname"] = name
        pod_spec["subdomain"] = service_name(job.name)
    if job.spec.get("imagePullSecrets"):
        pod_spec["imagePullSecrets"] = [{"name": s["name"]}
                                        for s in job.spec["imagePullSecrets"]]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName",
                "serviceAccountName"):
        if role_spec.get(key):
            pod_spec[key] = role_spec[key]
    pod_spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": _meta(job, name, owner, labels(job, role, index)),
            "spec": pod_spec}


def server_pod(job: GeePSJob, index: int, owner: dict, join: bool = False) -> dict:
    """Server pod `index`; `join`: it joins the running job (GEEPS_JOIN=1) instead of
    restoring its shard (a coordinated job's new rank, or a lost server's replacement)."""
    return _pod(job, "server", index, owner, command=SERVER_COMMAND, args=[], join=join)


def coordinator_pod(job: GeePSJob, owner: dict) -> dict:
    """`<job>-coordinator-0`: `geeps coordinator` over the job's servers (see the module
    doc); it connects to them as a client does, so it gets the client's keys."""
    return _pod(job, COORDINATOR, 0, owner, command=COORDINATOR_COMMAND, args=[])


def worker_pod(job: GeePSJob, index: int, owner: dict) -> dict:
    return _pod(job, "worker", index, owner, command=list(job.command), args=list(job.args))


def role_pod(job: GeePSJob, role: str, index: int, owner: dict, join: bool = False) -> dict:
    return server_pod(job, index, owner, join) if role == "server" \
        else worker_pod(job, index, owner)


def pod_monitor(job: GeePSJob, owner: dict) -> dict:
    """A Prometheus Operator PodMonitor scraping every pod of the job (created only
    where the monitoring.coreos.com CRDs exist; the create is skipped on 404)."""
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": _meta(job, job.name, owner, labels(job)),
        "spec": {
            "selector": {"matchLabels": {LABEL_JOB: job.name}},
            # honorLabels: the pods' own job/role/rank labels are what the dashboard
            # filters on; without it Prometheus renames `job` to `exported_job`.
            "podMetricsEndpoints": [{"port": METRICS_PORT_NAME, "path": "/metrics",
                                     "honorLabels": True}],
        },
    }


def curve_secret_name(job_name: str) -> str:
    return f"{job_name}-curve"


def curve_secret(job: GeePSJob, owner: dict, keys: dict[str, str] | None = None) -> dict:
    """The per-job Secret holding CurveZMQ keys (geeps.wire.curve.FILES as {file: text}).

    Keys are random, so they are not made here: the policy plans this Secret without
    them and the reconciler fills `stringData` from geeps.wire.curve.keys_as_files() just
    before it creates the Secret, once; it is never regenerated while it exists (pods
    already running hold its keys)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(job, curve_secret_name(job.name), owner, labels(job)),
            "stringData": dict(keys or {})}


def curve_mount(job: GeePSJob, role: str = "server") -> tuple[dict, dict]:
    """(volume, volumeMount) exposing the job's CurveZMQ Secret at CURVE_MOUNT.

    Only pods that serve shards (servers, or workers of a co-located job) get the
    servers' secret key: a plain worker gets the public keys and the client's secret,
    so a compromised worker cannot impersonate a server.

    Mode 0440: the files belong to root and the pod's fsGroup, and the process runs as
    RUN_AS in that group (owner-only 0400 would leave them unreadable to it)."""
    files = ["server.key", "client.key", "client.key_secret"]
    if job.serves_shards(role):
        files.append("server.key_secret")
    return ({"name": CURVE_VOLUME, "secret": {"secretName": curve_secret_name(job.name),
                                              "defaultMode": 0o440,
                                              "items": [{"key": f, "path": f}
                                                        for f in files]}},
            {"name": CURVE_VOLUME, "mountPath": CURVE_MOUNT, "readOnly": True})


def network_policy_name(job_name: str) -> str:
    return f"{job_name}-geeps"


def network_policy(job: GeePSJob, owner: dict) -> dict:
    """NetworkPolicy `<job>-geeps` over every pod of the job (ingress only).

    The parameter-server port admits only pods of the same job (CurveZMQ authenticates
    them too; this keeps everyone else from reaching the socket at all). The metrics
    port stays open to any source, so Prometheus can scrape from its own namespace.
    Nothing else reaches the job's pods. Egress is left alone: workers read data and
    resolve the servers' names wherever the cluster keeps them."""
    same_job = [{"podSelector": {"matchLabels": {LABEL_JOB: job.name}}}]
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(job, network_policy_name(job.name), owner, labels(job)),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_JOB: job.name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": same_job, "ports": [{"protocol": "TCP", "port": SERVER_PORT}]},
                {"ports": [{"protocol": "TCP", "port": job.metrics_port}]},
            ] + ([{"from": [{"namespaceSelector": {},
                             "podSelector": {"matchLabels": dict(OPERATOR_POD_LABELS)}}],
                   "ports": [{"protocol": "TCP", "port": COORDINATOR_PORT}]}]
                 if job.coordinated else []),
        },
    }


def disruption_budget_name(job_name: str) -> str:
    return f"{job_name}-shards"


def disruption_budget(job: GeePSJob, owner: dict) -> dict:
    """PodDisruptionBudget `<job>-shards`: a voluntary disruption (a node drain, the
    eviction API) takes at most one shard-serving pod at a time; each shard lost at
    once is a rollback to a checkpoint, several at once can be the whole model."""
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": _meta(job, disruption_budget_name(job.name), owner, labels(job)),
        "spec": {"maxUnavailable": 1,
                 "selector": {"matchLabels": {LABEL_JOB: job.name,
                                              LABEL_ROLE: job.shard_role}}},
    }
