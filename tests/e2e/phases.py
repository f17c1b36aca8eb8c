"""Every phase a job passes through, from a watch on the API (a short phase such as
Restarting can come and go between two polls; a watch sees each status write).

    with PhaseRecorder(cluster, ns, "job") as seen:
        ...                                     # make things happen
    assert seen.wait("Succeeded") == ["Pending", "Running", "Restarting", "Running", "Succeeded"]

The watch runs on the cluster's event loop, so stopping it is a task cancellation
(a blocking HTTP read in a thread could not be interrupted).
"""
from __future__ import annotations

import asyncio
import json
import threading

import aiohttp

from geeps.job import spec as _spec
from tests.helpers import wait_for


class PhaseRecorder:
    def __init__(self, cluster, ns: str, name: str):
        self.cluster = cluster
        self.url = (f"{cluster.url}/apis/{_spec.GROUP}/{_spec.VERSION}/namespaces/{ns}/"
                    f"{_spec.PLURAL}")
        self.name = name
        self.phases: list[str] = []             # each change, in order
        self._lock = threading.Lock()
        self._task = None

    def __enter__(self) -> "PhaseRecorder":
        async def start():
            watching = asyncio.Event()
            task = asyncio.ensure_future(self._watch(watching))
            await asyncio.wait_for(watching.wait(), 10)
            return task
        self._task = asyncio.run_coroutine_threadsafe(start(), self.cluster.loop).result(15)
        return self

    async def _watch(self, watching: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.url, params={"watch": "true"},
                                timeout=aiohttp.ClientTimeout(None)) as r:
                watching.set()
                async for line in r.content:
                    if line.strip():
                        self._seen(json.loads(line))

    def _seen(self, event: dict) -> None:
        obj = event.get("object") or {}
        if (obj.get("metadata") or {}).get("name") != self.name:
            return
        phase = (obj.get("status") or {}).get("phase")
        with self._lock:
            if phase and (not self.phases or self.phases[-1] != phase):
                self.phases.append(phase)

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.phases)

    def wait(self, phase: str, timeout: float = 10.0) -> list[str]:
        """The phases once `phase` is the latest seen (the watch may trail a read)."""
        wait_for(lambda: self.snapshot()[-1:] == [phase], timeout, 0.02,
                 f"the watch to see {self.name} {phase}")
        return self.snapshot()

    def __exit__(self, *exc) -> None:
        async def stop():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        asyncio.run_coroutine_threadsafe(stop(), self.cluster.loop).result(10)
