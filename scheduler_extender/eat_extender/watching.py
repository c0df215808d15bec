"""List+watch of nodes and pods from the API server into the ``cache``.

One daemon thread per resource, with the pattern of client-go's reflector: list (paged),
hand the whole list to the cache, then watch from the list's resourceVersion, applying each
event; re-list after ``resync_s``, when the server says the resourceVersion expired (410), or
after an error (with a doubling backoff). Objects are read as raw JSON and parsed with the same
``wire`` models the scheduler's requests use; the client's own model classes are never built
(they cost far more than the decisions).

The extender answers ``Error`` ("not synced") until both first lists are in, so that an
extender that cannot reach the API server is skipped (``ignorable``) instead of deciding on
an empty view.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import ValidationError

from eat_extender import cache, metrics, wire
from eat_extender.settings import Settings

log = logging.getLogger(__name__)

PAGE_SIZE = 500
REFRESH_TIMEOUT_S = 1.0


class Expired(Exception):
    """The watch's resourceVersion is too old (HTTP 410 Gone): list again."""


def load_api(settings: Settings) -> Any:
    """A ``kubernetes.client.CoreV1Api`` for the configured kubeconfig or the in-cluster account."""
    from kubernetes import client, config  # imported here: tests of the decisions do without it

    if settings.kubeconfig:
        api_client = config.new_client_from_config(config_file=settings.kubeconfig)  # type: ignore[no-untyped-call]
    else:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            api_client = client.ApiClient()
        except config.ConfigException:
            api_client = config.new_client_from_config()  # type: ignore[no-untyped-call]
    return client.CoreV1Api(api_client)


class Watcher:
    """Keeps ``target`` in sync with the API server until ``stop()``."""

    def __init__(self, target: cache.ClusterCache, settings: Settings,
                 api_factory: Callable[[Settings], Any] = load_api) -> None:
        self.target = target
        self.settings = settings
        self._api_factory = api_factory
        self._api: Any = None
        self._api_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._responses: dict[str, Any] = {}
        self.last_error: str | None = None
        self._read_started: dict[str, float] = {}
        """Per node, when the last completed re-read of its pods began (monotonic)."""
        self._node_locks: dict[str, threading.Lock] = {}
        self._node_locks_guard = threading.Lock()

    def start(self) -> None:
        for resource in (cache.NODES, cache.PODS):
            t = threading.Thread(target=self._run, args=(resource,), name=f"eat-extender-watch-{resource}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for resp in list(self._responses.values()):
            try:
                resp.close()  # unblocks a thread reading a watch stream
            except Exception as e:  # noqa: BLE001 - closing a dying connection may fail any way
                log.debug("closing a watch stream: %s", e)
        for t in self._threads:
            t.join(timeout)

    def refresh_nodes(self, nodes: Iterable[str]) -> bool:
        """Re-read the pods bound to ``nodes`` from the API server into the cache, now.

        Called (in a worker thread) before the filter holds a pod back for lack of GPUs on these
        nodes: the watch may not have delivered a deletion that kube-scheduler has already seen,
        and a pod rejected by the extender alone is retried only on the next cluster event.

        Every call is answered by a read that began after it was made: a read skipped because
        another had just been done could miss a deletion that happened in between, and then the
        pod would wait for minutes. Concurrent calls for one node share a read. True once every
        node has been re-read (False without an API client, or if a node's read was stuck).
        """
        if self._api is None:
            return False
        asked = time.monotonic()
        fresh = True
        for node in nodes:
            lock = self._node_lock(node)
            if not lock.acquire(timeout=REFRESH_TIMEOUT_S):
                fresh = False  # another read of it hangs on the API server: do not queue behind it
                continue
            try:
                if self._read_started.get(node, -1.0) < asked:  # else one that began after this call just ended
                    self._read(node)
            finally:
                lock.release()
        return fresh

    def _read(self, node: str) -> None:
        started = time.monotonic()
        for _ in range(2):  # once more if a full re-list voided it: that LIST may be the older one
            with self.target.node_read(node) as replace:
                resp = self._api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}",
                                                             _preload_content=False,
                                                             _request_timeout=REFRESH_TIMEOUT_S)
                if replace(_parse_all(wire.Pod, json.loads(resp.data).get("items") or [])):
                    break
        self._read_started[node] = started
        metrics.node_refreshes.inc()

    def _node_lock(self, node: str) -> threading.Lock:
        with self._node_locks_guard:
            return self._node_locks.setdefault(node, threading.Lock())

    # ------------------------------------------------------------------ the loop

    def _run(self, resource: str) -> None:
        backoff = 0.5
        cause = "start"
        while not self._stop.is_set():
            try:
                with self._api_lock:
                    if self._api is None:
                        self._api = self._api_factory(self.settings)
                rv = self._list(resource)
                metrics.watch_restarts.labels(resource, cause).inc()
                self.last_error = None
                backoff = 0.5
                deadline = time.monotonic() + self.settings.resync_s
                while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
                    rv = self._watch(resource, rv, min(left, self.settings.watch_timeout_s))
                cause = "resync"
            except Expired:
                cause = "expired"
            except Exception as e:  # noqa: BLE001 - any API/network failure: back off and re-list
                if self._stop.is_set():
                    return
                cause = "error"
                self.last_error = f"{resource}: {type(e).__name__}: {e}"
                log.warning("watch of %s failed, re-listing in %.1fs: %s", resource, backoff, self.last_error)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.settings.backoff_max_s)

    def _call(self, resource: str, **kw: Any) -> Any:
        fn = self._api.list_node if resource == cache.NODES else self._api.list_pod_for_all_namespaces
        return fn(_preload_content=False, **kw)

    def _list(self, resource: str) -> str:
        t0 = time.perf_counter()
        items: list[dict[str, Any]] = []
        token: str | None = None
        rv = ""
        while True:
            kw: dict[str, Any] = {"limit": PAGE_SIZE, "_request_timeout": 60}
            if token:
                kw["_continue"] = token
            page = json.loads(self._call(resource, **kw).data)
            items.extend(page.get("items") or ())
            meta = page.get("metadata") or {}
            rv = meta.get("resourceVersion", rv)
            token = meta.get("continue")
            if not token:
                break
        if resource == cache.NODES:
            self.target.replace_nodes(_parse_all(wire.Node, items))
        else:
            self.target.replace_pods(_parse_all(wire.Pod, items))
        log.info("listed %d %s in %.3fs (resourceVersion %s)", len(items), resource, time.perf_counter() - t0, rv)
        return str(rv)

    def _watch(self, resource: str, rv: str, timeout_s: float) -> str:
        resp = self._call(resource, watch=True, resource_version=rv, allow_watch_bookmarks=True,
                          timeout_seconds=max(int(timeout_s), 1), _request_timeout=timeout_s + 30)
        self._responses[resource] = resp
        try:
            for line in _lines(resp):
                if self._stop.is_set():
                    break
                rv = self._apply(resource, json.loads(line), rv)
        finally:
            self._responses.pop(resource, None)
            resp.close()
            resp.release_conn()
        return rv

    def _apply(self, resource: str, event: dict[str, Any], rv: str) -> str:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Expired(obj.get("message", ""))
            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
        new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
        if kind == "BOOKMARK":
            return new_rv
        metrics.watch_events.labels(resource, str(kind)).inc()
        try:
            if resource == cache.NODES:
                node = wire.Node.model_validate(obj)
                if kind == "DELETED":
                    self.target.delete_node(node.metadata.name)
                else:
                    self.target.upsert_node(node)
            else:
                pod = wire.Pod.model_validate(obj)
                if kind == "DELETED":
                    self.target.delete_pod(pod.metadata.namespace, pod.metadata.name)
                else:
                    self.target.upsert_pod(pod)
        except ValidationError as e:
            log.warning("ignored a %s event the extender cannot read: %s", resource, e)
        return new_rv


def _parse_all(model: type[wire.Node | wire.Pod], items: list[dict[str, Any]]) -> Iterator[Any]:
    for item in items:
        try:
            yield model.model_validate(item)
        except ValidationError as e:
            log.warning("ignored a listed %s the extender cannot read: %s", model.__name__, e)


def _lines(resp: Any) -> Iterator[bytes]:
    """Newline-delimited JSON events from a streaming urllib3 response."""
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line
    if buf.strip():
        yield buf
