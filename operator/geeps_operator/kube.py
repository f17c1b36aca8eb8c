"""The reconciler's Kubernetes API calls, through the official asynchronous client
(kubernetes_asyncio), inside kopf's event loop.

    kube = Kube(kopf.ConnectionInfo(server="http://127.0.0.1:8001"))
    pods = await kube.list(path("", "v1", "pods", "ns"), label_selector="a=b")
    await kube.close()

kopf watches and posts events with its own client; this one does the few verbs the
reconciler needs, on the official client's ApiClient, configured from the same
ConnectionInfo the login handler gives kopf (one source of credentials). The verbs take
REST paths rather than the client's typed models: the reconciler writes manifests as
plain dicts (geeps_operator.manifests), and the typed models would refuse a pod status
missing a field some kubelets leave out. Not thread-safe: use it from one event loop.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import kopf
from kubernetes_asyncio import client as k8s


class ApiError(Exception):
    """The API answered with an error status (other than the ones a verb expects)."""

    def __init__(self, status: int, method: str, path: str, message: str):
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.message = message


def path(group: str, version: str, plural: str, namespace: str | None = None,
         name: str | None = None, sub: str | None = None) -> str:
    """The REST path of a collection, an object or a subresource."""
    out = f"/api/{version}" if group == "" else f"/apis/{group}/{version}"
    if namespace:
        out += f"/namespaces/{namespace}"
    out += f"/{plural}"
    if name:
        out += f"/{name}"
    if sub:
        out += f"/{sub}"
    return out


def path_of(manifest: dict) -> str:
    """The collection a manifest is POSTed to."""
    group, _, version = manifest["apiVersion"].rpartition("/")
    plural = {"Pod": "pods", "Service": "services", "Secret": "secrets",
              "PodMonitor": "podmonitors", "NetworkPolicy": "networkpolicies",
              "PodDisruptionBudget": "poddisruptionbudgets"}[manifest["kind"]]
    return path(group, version, plural, manifest["metadata"].get("namespace"))


class Kube:
    def __init__(self, info: kopf.ConnectionInfo, *, user_agent: str = "geeps-operator",
                 timeout: float = 30.0):
        self.info = info
        self.base = info.server.rstrip("/")
        self.timeout = timeout
        self._files: list[str] = []
        self._api: k8s.ApiClient | None = None
        self.user_agent = user_agent

    def _configuration(self) -> k8s.Configuration:
        info = self.info
        cfg = k8s.Configuration(host=self.base)
        cfg.verify_ssl = not info.insecure
        # The official client reads certificates from files; kopf may hold them as data.
        cfg.ssl_ca_cert = self._file(info.ca_path, info.ca_data)
        cfg.cert_file = self._file(info.certificate_path, info.certificate_data)
        cfg.key_file = self._file(info.private_key_path, info.private_key_data)
        if info.proxy_url:
            cfg.proxy = info.proxy_url
        return cfg

    def _file(self, path_: Any, data: Any) -> str | None:
        if path_:
            return os.fsdecode(path_)
        if not data:
            return None
        fd, name = tempfile.mkstemp(prefix="geeps-kube-")
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        self._files.append(name)
        return name

    def _client(self) -> k8s.ApiClient:
        if self._api is None:
            self._api = k8s.ApiClient(self._configuration())
            self._api.user_agent = self.user_agent
            for k, v in self.info.as_http_headers().items():   # token or basic auth
                self._api.set_default_header(k, v)
        return self._api

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None
        for name in self._files:
            try:
                os.unlink(name)
            except OSError:
                pass
        self._files = []

    async def _call(self, method: str, path_: str, *, body: Any = None,
                    params: dict | None = None, content_type: str = "application/json",
                    ok_missing: bool = False, ok_conflict: bool = False,
                    as_text: bool = False) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        resp = await self._client().call_api(
            path_, method, query_params=list((params or {}).items()),
            header_params=headers, body=body, response_types_map={}, auth_settings=[],
            _preload_content=False, _request_timeout=self.timeout)
        async with resp:
            if (resp.status == 404 and ok_missing) or (resp.status == 409 and ok_conflict):
                return None
            text = await resp.text()
        if resp.status >= 400:
            try:
                message = json.loads(text).get("message") or text
            except (ValueError, AttributeError):
                message = text
            raise ApiError(resp.status, method, path_, str(message)[:500])
        if as_text:
            return text
        return json.loads(text) if text else {}

    async def get(self, path_: str) -> dict | None:
        """The object, or None if it does not exist."""
        return await self._call("GET", path_, ok_missing=True)

    async def list(self, path_: str, *, label_selector: str | None = None) -> list[dict]:
        params = {"labelSelector": label_selector} if label_selector else None
        out = await self._call("GET", path_, params=params)
        return list(out.get("items") or [])

    async def create(self, path_: str, body: dict, *, ok_missing: bool = False) -> dict | None:
        """The created object; None if it already exists (409), or if the resource is
        not served and `ok_missing` (404: an optional CRD such as PodMonitor)."""
        return await self._call("POST", path_, body=body, ok_conflict=True,
                                ok_missing=ok_missing)

    async def patch(self, path_: str, body: dict) -> dict | None:
        """JSON merge patch; None if the object is gone."""
        return await self._call("PATCH", path_, body=body, ok_missing=True,
                                content_type="application/merge-patch+json")

    async def json_patch(self, path_: str, ops: list[dict]) -> dict | None:
        """JSON patch (RFC 6902); a failed `test` op is the API's 422. None if gone."""
        return await self._call("PATCH", path_, body=ops, ok_missing=True,
                                content_type="application/json-patch+json")

    async def delete(self, path_: str, *, propagation: str = "Background") -> bool:
        """True if a deletion was requested, False if the object was already gone."""
        out = await self._call("DELETE", path_, ok_missing=True,
                               body={"kind": "DeleteOptions", "apiVersion": "v1",
                                     "propagationPolicy": propagation})
        return out is not None

    async def force_delete(self, path_: str) -> bool:
        """Delete with gracePeriodSeconds 0 (`kubectl delete --force`): the API server
        removes the object without waiting for a kubelet that may never answer."""
        out = await self._call("DELETE", path_, ok_missing=True,
                               params={"gracePeriodSeconds": "0"},
                               body={"kind": "DeleteOptions", "apiVersion": "v1",
                                     "gracePeriodSeconds": 0,
                                     "propagationPolicy": "Background"})
        return out is not None
