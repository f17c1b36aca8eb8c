"""kmock's KubernetesEmulator, taught the few API-server behaviours the e2e tests rely on.

kmock keeps objects in memory and serves them over real HTTP, but it is deliberately
simple. This subclass adds, the way a real API server does them:

- metadata on create: uid, creationTimestamp, name from generateName (kopf's Events
  use generateName; without it every Event after the first would conflict);
- a Secret's write-only `stringData` merged into `data` (base64) on create, so
  readers (the test kubelet) see what they would see on a cluster;
- resourceVersion, moved by every write (kopf's JSON patches test it), and 422 when
  such a test fails;
- registering a CustomResourceDefinition's resource for discovery when the CRD is
  created (names, short names, namespaced, status subresource), and discovery
  documents kubectl accepts (core groupVersion "v1", singular names, subresources
  without the parent's short names);
- labelSelector on list and watch (=, ==, !=, key, !key);
- `kind: <Kind>List` on lists (kubectl refuses lists without it);
- server-side Table responses (`Accept: application/json;as=Table`), built from a
  CRD's additionalPrinterColumns, so `kubectl get gj` prints the printer columns;
- listing and watching namespaces (implicit: each namespace holding an object);
- GET pods/<name>/log from a provider (the test kubelet's captured output), as the
  API server proxies it from the kubelet;
- speed: served requests move to an archive (all_requests()), since kmock routes each
  request by scanning its whole request log;
- admission as kube-apiserver does it (apiserver.py): every create and patch of a
  CRD-defined kind, and of its status subresource, is pruned, checked for unknown
  fields per `fieldValidation` (Strict: 400; Warn, the default: Warning headers;
  Ignore), defaulted, validated against the CRD's openAPIV3Schema and its CEL rules
  (422 naming each field); built-in kinds are validated on create with
  kubernetes-validate; `dryRun=All` admits without storing;
- OpenAPI v3 documents of the CRD-defined group-versions (/openapi/v3), so plain
  `kubectl apply` validates on the server instead of failing to download them;
- ResourceQuota admission of the pod count (`spec.hard.pods`): a pod create beyond it
  is refused with 403 Forbidden and the API server's "exceeded quota" message;
- force deletion: DELETE of a pod with gracePeriodSeconds=0 removes it at once without
  the test kubelet's confirmation (its finalizer stands for the graceful wait a real
  API server does without one; see kubelet.py).

What it still lacks, and the tests do not pretend otherwise: what apiserver.py lists
(CEL cost estimation, transition rules, ratcheting), validation of built-in kinds on
update, resourceVersion preconditions on merge patches, resuming a watch from a
resourceVersion, garbage collection through owner references, PUT, Namespace objects
(and namespaces appearing after a watch starts), OpenAPI documents of built-in kinds
and /openapi/v2, admission webhooks, and authorization (the RBAC test checks requests
instead).
"""
from __future__ import annotations

import asyncio
import base64
import copy
import datetime as _dt
import json
import random
import string
import uuid
from typing import Any, Callable

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import dicts, enums, rendering

from .apiserver import CustomResource, Refused, builtin_problems
from .kubelet import FINALIZER as KUBELET_FINALIZER

TABLE_ACCEPT = "as=Table"


def now_rfc3339() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_selector(text: str) -> list[tuple[str, str, str | None]]:
    """[(key, op, value)] for 'a=b,c!=d,e,!f' (set-based `in` is not supported)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in part:
            k, v = part.split("!=", 1)
            out.append((k.strip(), "!=", v.strip()))
        elif "==" in part or "=" in part:
            k, v = part.split("==", 1) if "==" in part else part.split("=", 1)
            out.append((k.strip(), "=", v.strip()))
        elif part.startswith("!"):
            out.append((part[1:].strip(), "!", None))
        else:
            out.append((part, "exists", None))
    return out


def selector_matches(obj: dict, text: str | None) -> bool:
    if not text:
        return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for key, op, value in parse_selector(text):
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
    return True


def json_path(obj: Any, expr: str) -> Any:
    """The simple `.a.b.c` subset of JSONPath that printer columns use."""
    node = obj
    for part in expr.strip().lstrip(".").split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    t = _dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    secs = int((_dt.datetime.now(_dt.timezone.utc) - t).total_seconds())
    if secs < 120:
        return f"{max(secs, 0)}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h"


@attrs.define(kw_only=True)
class GeepsEmulator(kmock.KubernetesEmulator):
    # (namespace, pod name) -> the pod's log text, or None if unknown.
    logs: Callable[[str, str], str | None] = lambda ns, name: None
    # plural -> CRD body, for Table responses.
    _crds: dict = attrs.field(factory=dict, init=False)
    _version: int = attrs.field(default=0, init=False)
    _archive: list = attrs.field(factory=list, init=False)
    _inflight: set = attrs.field(factory=set, init=False)
    # resource -> what the API server does to writes of a CRD-defined kind.
    _admission: dict = attrs.field(factory=dict, init=False)
    # Writes are admitted against the stored object and stored in one step, as the
    # API server's storage does under its resourceVersion precondition.
    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> Any:
        # kmock cannot parse the path /api/v1/namespaces (no namespace after "namespaces"),
        # which kopf lists and watches when it serves named namespaces. Namespaces are
        # implicit here: every namespace that holds an object exists.
        if raw_request.method == "GET" and raw_request.path.rstrip("/") == "/api/v1/namespaces":
            return await self._serve_namespaces(raw_request)
        if raw_request.method == "GET" and raw_request.path.startswith("/openapi/v3"):
            return self._serve_openapi(raw_request.path[len("/openapi/v3"):].strip("/"))
        return await super().__call__(raw_request)

    def _serve_openapi(self, group_version: str) -> aiohttp.web.Response:
        """OpenAPI v3 documents of the CRD-defined group-versions: what kubectl reads
        to learn that the server validates (the fieldValidation parameter on PATCH) and
        then sends fieldValidation=Strict instead of validating client-side. Built-in
        kinds have no document here (kubectl would fall back to client-side validation
        for them, which needs documents this emulator does not serve)."""
        docs = {}
        for plural, crd in self._crds.items():
            spec = crd["spec"]
            for version in spec["versions"]:
                docs.setdefault(f"apis/{spec['group']}/{version['name']}", []).append(
                    (spec, version))
        if not group_version:
            return aiohttp.web.json_response({"paths": {
                gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash=0"} for gv in docs}})
        if group_version not in docs:
            return aiohttp.web.json_response({"message": "not found"}, status=404)
        paths, schemas = {}, {}
        for spec, version in docs[group_version]:
            names, group = spec["names"], spec["group"]
            gvk = [{"group": group, "version": version["name"], "kind": names["kind"]}]
            ref = ".".join(reversed(group.split("."))) + f".{version['name']}.{names['kind']}"
            schemas[ref] = dict(version["schema"]["openAPIV3Schema"],
                                **{"x-kubernetes-group-version-kind": gvk})
            params = [{"name": p, "in": "query", "schema": {"type": "string"}}
                      for p in ("dryRun", "fieldManager", "fieldValidation")]
            op = {"x-kubernetes-group-version-kind": gvk[0], "parameters": params,
                  "responses": {"200": {"description": "OK", "content": {
                      "application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}}}
            base = f"/{group_version}/namespaces/{{namespace}}/{names['plural']}"
            paths[base] = {"post": op}
            paths[base + "/{name}"] = {"get": op, "patch": op, "put": op}
            paths[base + "/{name}/status"] = {"get": op, "patch": op, "put": op}
        return aiohttp.web.json_response({"openapi": "3.0.0",
                                          "info": {"title": "Kubernetes", "version": "v1.33.0"},
                                          "paths": paths, "components": {"schemas": schemas}})

    async def _serve_namespaces(self, raw_request: aiohttp.web.BaseRequest) -> Any:
        watch = raw_request.query.get("watch") == "true"
        self._archive.append(rendering.Request(
            method=raw_request.method, url=raw_request.url, params=dict(raw_request.query),
            headers=dict(raw_request.headers), resource=kmock.resource("", "v1", "namespaces"),
            action=enums.action.WATCH if watch else enums.action.LIST))
        names = sorted({ns for _, ns, _ in self.objects if ns})
        items = [{"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": n, "uid": f"ns-{n}", "resourceVersion": "1",
                               "labels": {"kubernetes.io/metadata.name": n}},
                  "status": {"phase": "Active"}} for n in names]
        if not watch:
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "NamespaceList",
                                              "metadata": {"resourceVersion": "1"},
                                              "items": items})
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw_request)
        for item in items:
            await response.write(json.dumps({"type": "ADDED", "object": item}).encode() + b"\n")
        await asyncio.Event().wait()       # no namespaces come or go later; until closed
        return response

    def all_requests(self) -> list[rendering.Request]:
        """Every request served so far, oldest first."""
        return self._archive + list(self._requests)

    async def _handle(self, request: rendering.Request) -> Any:
        # kmock routes a request by scanning every request it ever logged (O(n) each, so
        # a long session slows quadratically); finished ones move to an archive instead.
        self._inflight.add(id(request))
        keep = []
        for r in self._requests:
            (keep if id(r) in self._inflight else self._archive).append(r)
        self._requests[:] = keep
        try:
            return await self._serve(request)
        finally:
            self._inflight.discard(id(request))

    async def _serve(self, request: rendering.Request) -> Any:
        if request.action == enums.action.DELETE and self._forced(request):
            key = (request.resource, request.namespace, request.name)
            if key in self.objects and not self.objects[key].deleted:
                finalizers = self.objects[key].raw.get("metadata", {}).get("finalizers") or []
                self.objects[key].patch({"metadata": {"finalizers": [
                    f for f in finalizers if f != KUBELET_FINALIZER] or None}})
        if request.action not in (enums.action.CREATE, enums.action.UPDATE):
            return await self._store(request)
        async with self._writes:
            try:
                warnings = self._admit(request)
            except Refused as e:
                raise kmock.KubernetesError(status=e.code, reason=e.reason, message=e.message,
                                            details=e.status("", request.name)["details"]
                                            ) from None
            if request.params.get("dryRun") == "All":
                # Admitted, answered, never stored (kubectl --dry-run=server).
                response = aiohttp.web.json_response(
                    self._dry_result(request),
                    status=201 if request.action == enums.action.CREATE else 200)
            else:
                response = await self._store(request)
                if request.action == enums.action.CREATE and response.status == 200:
                    response.set_status(201)           # kmock says 200; the API server 201
        for text in warnings:
            escaped = text.replace("\\", "\\\\").replace('"', '\\"')
            response.headers.add("Warning", f'299 - "{escaped}"')
        return response

    @staticmethod
    def _forced(request: rendering.Request) -> bool:
        if request.resource != kmock.resource("", "v1", "pods"):
            return False
        body = request.data if isinstance(request.data, dict) else {}
        return str(request.params.get("gracePeriodSeconds", body.get("gracePeriodSeconds"))) \
            == "0"

    def _quota(self, request: rendering.Request) -> None:
        """ResourceQuota admission of the pod count, as kube-apiserver's quota plugin."""
        ns = request.namespace
        # Pods that ended no longer count, as in kube-apiserver.
        used = sum(1 for (res, n, _), obj in self.objects.items()
                   if res == request.resource and n == ns and not obj.deleted
                   and (obj.raw.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
        for (res, n, qname), obj in self.objects.items():
            if res != kmock.resource("", "v1", "resourcequotas") or n != ns or obj.deleted:
                continue
            hard = ((obj.raw.get("spec") or {}).get("hard") or {}).get("pods")
            if hard is not None and used + 1 > int(hard):
                name = (request.data.get("metadata") or {}).get("name")
                raise Refused(403, "Forbidden",
                              f'pods "{name}" is forbidden: exceeded quota: {qname}, '
                              f"requested: pods=1, used: pods={used}, limited: pods={hard}")

    def _admit(self, request: rendering.Request) -> list[str]:
        """Complete, check and (for custom resources) prune and default a write in
        place, as the API server does before storing it; the warnings to send."""
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            self._complete(request)
            if request.resource == kmock.resource("", "v1", "pods"):
                self._quota(request)
        mode = request.params.get("fieldValidation")
        admission = self._admission.get(request.resource)
        if admission is None:
            if request.action == enums.action.CREATE and isinstance(request.data, dict):
                # The API server takes apiVersion and kind from the URL when a body
                # (kopf's Events) leaves them out.
                res = request.resource
                request.data.setdefault("apiVersion",
                                        f"{res.group}/{res.version}" if res.group else res.version)
                kind = self._kind(request)
                if kind:
                    request.data.setdefault("kind", kind)
                errors, warnings = builtin_problems(request.data, mode)
                if errors:
                    kind = request.data.get("kind", "")
                    name = (request.data.get("metadata") or {}).get("name")
                    raise Refused(422, "Invalid", f'{kind} "{name}" is invalid: '
                                  + "; ".join(errors))
                return warnings
            return []
        if request.action == enums.action.CREATE:
            obj, warnings = admission.admit(request.data, old=None, subresource=None,
                                            field_validation=mode)
            request.data.clear()
            request.data.update(obj)
            return warnings
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return []                                      # kmock answers 404
        old = self.objects[key].raw
        try:
            new = dicts.patch_dict(copy.deepcopy(old), request.data)
        except jsonpatch.JsonPatchException as e:
            raise Refused(422, "Invalid", str(e)) from None
        obj, warnings = admission.admit(dict(new), old=old, subresource=request.subresource,
                                        field_validation=mode)
        obj.setdefault("metadata", {})["resourceVersion"] = self._next_version()
        # The admitted object replaces the stored one whole (pruned fields stay gone).
        # (Request is frozen; kmock stores what request.data says.)
        object.__setattr__(request, "data", [{"op": "replace", "path": "", "value": obj}])
        return warnings

    def _dry_result(self, request: rendering.Request) -> dict:
        if isinstance(request.data, list):     # an admitted update: the whole object
            return request.data[0]["value"]
        return request.data

    async def _store(self, request: rendering.Request) -> Any:
        if request.action == enums.action.UPDATE and \
                self._admission.get(request.resource) is None:
            # Every write moves resourceVersion; kopf's JSON patches `test` it first,
            # which gives optimistic concurrency for free.
            version = self._next_version()
            if isinstance(request.data, dict):
                request.data.setdefault("metadata", {})["resourceVersion"] = version
            elif isinstance(request.data, list):
                request.data.append({"op": "add", "path": "/metadata/resourceVersion",
                                     "value": version})
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchException as e:
            # A failed `test` op: the object moved on. The API server says 422 (kopf then
            # retries on its next cycle); kmock would say 500.
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(e)) from None

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _complete(self, request: rendering.Request) -> None:
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        if request.namespace and not meta.get("namespace"):
            meta["namespace"] = request.namespace
        key = (request.resource, meta.get("namespace"), meta.get("name"))
        if meta.get("name") and key in self.objects and not self.objects[key].deleted:
            return                          # the emulator answers 409; keep its uid
        meta["uid"] = str(uuid.uuid4())
        meta["resourceVersion"] = self._next_version()
        meta["creationTimestamp"] = now_rfc3339()
        meta.setdefault("generation", 1)
        if request.resource == kmock.resource("apiextensions.k8s.io", "v1",
                                              "customresourcedefinitions"):
            self._register_crd(request.data)
        if request.resource == kmock.resource("", "v1", "secrets"):
            data = dict(request.data.get("data") or {})
            for key, text in (request.data.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(text.encode()).decode()
            request.data["data"] = data

    def _register_crd(self, crd: dict) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            key = f"{spec['group']}/{version['name']}/{names['plural']}"
            self.resources[key] = kmock.ResourceInfo(
                kind=names["kind"], singular=names.get("singular"),
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                namespaced=spec["scope"] == "Namespaced",
                verbs={"get", "list", "watch", "create", "patch", "delete"},
                subresources=set((version.get("subresources") or {}).keys()))
        self._crds[names["plural"]] = crd
        for version in spec["versions"]:
            self._admission[kmock.resource(spec["group"], version["name"], names["plural"])] = \
                CustomResource(crd, version["name"])

    async def _serve_version(self, request: rendering.Request) -> Any:
        # kmock's APIResourceList says groupVersion "/v1" for the core group, uses the
        # plural as singular, and gives subresources their parent's short names; kubectl
        # then finds no "pods" and warns that "gj" is ambiguous.
        out = await super()._serve_version(request)
        if out.get("groupVersion", "").startswith("/"):
            out["groupVersion"] = out["groupVersion"][1:]
        for entry in out["resources"]:
            if "/" in entry["name"]:
                entry.update(shortNames=[], categories=[], singularName="",
                             verbs=["get"] if entry["name"].endswith("/log") else ["get", "patch"])
            elif entry["singularName"] == entry["name"]:
                entry["singularName"] = (entry.get("kind") or entry["name"]).lower()
        return out

    def _kind(self, request: rendering.Request) -> str | None:
        info = self.resources.get(request.resource) if request.resource in self.resources \
            else None
        return info.kind if info is not None else None

    async def _serve_list(self, request: rendering.Request) -> Any:
        out = await super()._serve_list(request)
        sel = request.params.get("labelSelector")
        out["items"] = [o for o in out["items"] if selector_matches(o, sel)]
        kind = self._kind(request)
        if kind:
            out["kind"] = f"{kind}List"
        res = request.resource
        out["apiVersion"] = f"{res.group}/{res.version}" if res.group else res.version
        if TABLE_ACCEPT in request.headers.get("Accept", ""):
            return self._table(request, out["items"])
        return out

    async def _serve_watch(self, request: rendering.Request):
        sel = request.params.get("labelSelector")
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and not selector_matches(event.get("object", {}), sel):
                continue
            yield event

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        if request.subresource == "log" and request.resource == kmock.resource("v1", "pods"):
            await super()._serve_fetch(request)     # 404 for an unknown pod
            text = self.logs(request.namespace, request.name) or ""
            tail = request.params.get("tailLines")
            if tail and tail.isdigit():
                text = "\n".join(text.splitlines()[-int(tail):]) + "\n"
            return text.encode()
        obj = await super()._serve_fetch(request)
        if TABLE_ACCEPT in request.headers.get("Accept", ""):
            return self._table(request, [obj])
        return obj

    def _table(self, request: rendering.Request, items: list[dict]) -> dict:
        crd = self._crds.get(request.resource.plural)
        columns = [{"name": "Name", "type": "string", "format": "name",
                    "description": "Name must be unique within a namespace", "priority": 0}]
        printer = []
        if crd is not None:
            version = next(v for v in crd["spec"]["versions"]
                           if v["name"] == request.resource.version)
            printer = version.get("additionalPrinterColumns", [])
        else:
            printer = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        for col in printer:
            columns.append({"name": col["name"], "type": col["type"],
                            "format": col.get("format", ""),
                            "description": col.get("description", ""),
                            "priority": col.get("priority", 0)})
        rows = []
        for obj in items:
            cells: list[Any] = [obj["metadata"]["name"]]
            for col in printer:
                value = json_path(obj, col["jsonPath"])
                if col["type"] == "date":
                    value = age(value)
                cells.append(value)
            rows.append({"cells": cells, "object": {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"]}})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": "1"}, "columnDefinitions": columns,
                "rows": rows}
