"""A coordinated job's coordinator, over HTTP (`geeps coordinator`'s API,
geeps.launch.coordinator_http): the I/O only; what to ask is policy's (Observed.coordinator
in, Actions.join and Actions.drain out).

    answer = await state(session, pod)              # GET /membership, None if unreachable
    await join(session, pod, "job-server-2.job-server.ns.svc:7777")   # POST /servers
    await drain(session, pod, 2)                    # DELETE /servers/2

The operator reaches the coordinator pod on its IP, as it reaches worker 0's metrics
(geeps_operator.progress): the job's NetworkPolicy admits the operator's pods there.
Every call is idempotent at the coordinator, so a reconcile repeated after a crash asks
again without harm; a failed call is logged and tried on the next reconcile.
"""
from __future__ import annotations

import asyncio
import logging

import aiohttp

from . import manifests as m

log = logging.getLogger(__name__)


def base_url(pod: dict | None) -> str | None:
    """http://<pod IP>:<coordinator port> of a running, not terminating coordinator pod."""
    st = (pod or {}).get("status") or {}
    ip = st.get("podIP")
    if st.get("phase") != "Running" or not ip or \
            ((pod or {}).get("metadata") or {}).get("deletionTimestamp"):
        return None
    port = next((pt.get("containerPort") for c in (pod or {}).get("spec", {}).get(
        "containers", []) for pt in c.get("ports") or []
        if pt.get("name") == m.COORDINATOR_PORT_NAME), None)
    if not port:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}"


async def _call(session: aiohttp.ClientSession, method: str, url: str,
                body: dict | None = None) -> tuple[int, dict] | None:
    try:
        async with session.request(method, url, json=body) as r:
            try:
                data = await r.json(content_type=None)
            except ValueError:
                data = None
            return r.status, data if isinstance(data, dict) else {}
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
        log.debug("coordinator %s %s: %s", method, url, e)
        return None


async def state(session: aiohttp.ClientSession, pod: dict | None) -> dict | None:
    """GET /membership: the coordinator's answer, None when it cannot be reached or
    is still recovering the membership from the servers."""
    url = base_url(pod)
    if url is None:
        return None
    got = await _call(session, "GET", url + "/membership")
    if got is None or got[0] != 200 or got[1].get("recovering"):
        return None
    return got[1]


async def join(session: aiohttp.ClientSession, pod: dict | None, address: str) -> int | None:
    """POST /servers: the id the server at `address` gets, None if not asked now."""
    url = base_url(pod)
    got = None if url is None else await _call(session, "POST", url + "/servers",
                                                {"address": address})
    if got is None or got[0] not in (200, 202):
        log.info("coordinator did not take joiner %s: %s", address,
                 got[1].get("error") if got else "unreachable")
        return None
    return got[1].get("server")


async def drain(session: aiohttp.ClientSession, pod: dict | None, sid: int) -> bool:
    """DELETE /servers/<sid>: whether the coordinator is draining it."""
    url = base_url(pod)
    got = None if url is None else await _call(session, "DELETE", f"{url}/servers/{sid}")
    if got is None or got[0] != 202:
        log.info("coordinator did not drain server %s: %s", sid,
                 got[1].get("error") if got else "unreachable")
        return False
    return True
