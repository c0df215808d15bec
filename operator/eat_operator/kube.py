"""A small asynchronous Kubernetes API client: JSON in, JSON out, over one connection pool.

kopf's own client serves its watch streams; the dispatcher needs plain list/create/patch/
delete at a high rate (several requests per job, hundreds of jobs per minute), so it talks
to the API server through httpx with credentials loaded by the ``kubernetes`` package
(kubeconfig or in-cluster service account). Objects stay dicts: the operator reads few
fields and must not pay for full model (de)serialisation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
import urllib.parse
from typing import Any

import httpx
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

Obj = dict[str, Any]


class ApiError(RuntimeError):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def load_configuration(kubeconfig: str | None) -> k8s_client.Configuration:
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    except (k8s_config.ConfigException, FileNotFoundError, TypeError):
        if kubeconfig:
            raise
        k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return cfg


def path(group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None) -> str:
    base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name:
        base += f"/{name}"
    if subresource:
        base += f"/{subresource}"
    return base


class Client:
    """Async JSON client. ``request`` raises ApiError for any non-2xx answer."""

    def __init__(self, cfg: k8s_client.Configuration, concurrency: int = 32, timeout_s: float = 30.0) -> None:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        headers = {"Accept": "application/json", "User-Agent": "eat-operator"}
        token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        if token:
            headers["Authorization"] = token if token.startswith("Bearer ") else f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=cfg.host, verify=ctx, headers=headers, timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8),
        )
        self._sem = asyncio.Semaphore(concurrency)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None, concurrency: int = 32) -> Client:
        return cls(load_configuration(kubeconfig), concurrency)

    async def close(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, url: str, body: Any = None, content_type: str = "application/json",
                      params: dict[str, str] | None = None) -> Obj:
        headers = {"Content-Type": content_type} if body is not None else {}
        data = json.dumps(body).encode() if body is not None else None
        async with self._sem:
            r = await self._http.request(method, url, content=data, headers=headers, params=params)
        if r.status_code >= 300:
            try:
                status = r.json()
                raise ApiError(r.status_code, str(status.get("reason", "")), str(status.get("message", r.text)))
            except ValueError:
                raise ApiError(r.status_code, "", r.text[:500]) from None
        out: Obj = r.json() if r.content else {}
        return out

    async def list(self, url: str, label_selector: str | None = None, field_selector: str | None = None) -> Obj:
        params: dict[str, str] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        return await self.request("GET", url, params=params)

    async def create(self, url: str, body: Obj) -> Obj:
        return await self.request("POST", url, body)

    async def merge_patch(self, url: str, patch: Obj) -> Obj:
        return await self.request("PATCH", url, patch, "application/merge-patch+json")

    async def delete(self, url: str, body: Obj | None = None) -> Obj:
        return await self.request("DELETE", url, body)


def now_rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def micro_time(t: float) -> str:
    return now_rfc3339(t)


def parse_time(ts: str | None) -> float | None:
    if not ts:
        return None
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def event(involved: Obj, type_: str, reason: str, message: str, t: float, component: str = "eat-operator") -> Obj:
    """A core/v1 Event about ``involved`` (an object with apiVersion, kind and metadata)."""
    meta = involved["metadata"]
    stamp = dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
            "namespace": meta["namespace"], "uid": meta["uid"],
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def quote(s: str) -> str:
    return urllib.parse.quote(s, safe="")
