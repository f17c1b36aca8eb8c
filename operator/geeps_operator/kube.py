"""A minimal asynchronous Kubernetes API client for the reconciler.

    kube = Kube(kopf.ConnectionInfo(server="http://127.0.0.1:8001"))
    pods = await kube.list(path("", "v1", "pods", "ns"), label_selector="a=b")
    await kube.close()

kopf watches and posts events with its own client; this one does the few verbs the
reconciler needs, with the same ConnectionInfo the login handler gives kopf (one
source of credentials). Not thread-safe: use it from the operator's event loop.
"""
from __future__ import annotations

import json
from typing import Any

import aiohttp
import kopf


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
        self.headers = {"User-Agent": user_agent, "Accept": "application/json",
                        **info.as_http_headers()}
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ssl: Any = self.info.as_ssl_context() if self.base.startswith("https") else None
            self._session = aiohttp.ClientSession(
                headers=self.headers, timeout=self.timeout,
                connector=aiohttp.TCPConnector(ssl=ssl) if ssl else None)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path_: str, *, body: Any = None,
                    params: dict | None = None, content_type: str = "application/json",
                    ok_missing: bool = False, ok_conflict: bool = False,
                    as_text: bool = False) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self._client().request(method, self.base + path_, data=data,
                                          params=params, headers=headers) as resp:
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

    async def text(self, path_: str, params: dict | None = None) -> str | None:
        """A plain-text subresource (pods/log); None if absent."""
        return await self._call("GET", path_, params=params, ok_missing=True, as_text=True)
