"""The list+watch loop against a scripted API: lists, events, paging, expiry, failures."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from eat_extender import cache, metrics, watching, wire
from eat_extender.settings import Settings

from . import kube


class Stream:
    """A urllib3-like streaming response: yields queued chunks until closed."""

    def __init__(self, chunks: queue.Queue[bytes | None]) -> None:
        self.chunks = chunks
        self.closed = threading.Event()

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        while not self.closed.is_set():
            try:
                chunk = self.chunks.get(timeout=0.02)
            except queue.Empty:
                continue
            if chunk is None:  # the server ended this watch
                return
            yield chunk

    def close(self) -> None:
        self.closed.set()

    def release_conn(self) -> None:
        pass


class Page:
    def __init__(self, items: list[dict[str, Any]], rv: str, token: str | None = None) -> None:
        self.data = json.dumps({"metadata": {"resourceVersion": rv, "continue": token}, "items": items}).encode()


class FakeAPI:
    """list_node / list_pod_for_all_namespaces with scripted pages and watch streams."""

    def __init__(self) -> None:
        self.pages: dict[str, list[Page]] = {"nodes": [], "pods": []}
        """The current listing of each resource, page by page."""
        self.watches: dict[str, queue.Queue[bytes | None]] = {"nodes": queue.Queue(), "pods": queue.Queue()}
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def list_node(self, **kw: Any) -> Any:
        return self._call("nodes", kw)

    def list_pod_for_all_namespaces(self, **kw: Any) -> Any:
        return self._call("pods", kw)

    def _call(self, resource: str, kw: dict[str, Any]) -> Any:
        self.calls.append((resource, kw))
        if kw.get("watch"):
            return Stream(self.watches[resource])
        return self.pages[resource][int(kw.get("_continue") or 0)]

    def event(self, resource: str, kind: str, obj: dict[str, Any], rv: str) -> None:
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = rv
        line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
        # Split the line across chunks: the reader must reassemble it.
        self.watches[resource].put(line[:7])
        self.watches[resource].put(line[7:])

    def lists(self, resource: str) -> int:
        return sum(1 for r, kw in self.calls if r == resource and not kw.get("watch") and not kw.get("_continue"))


def wait(cond: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def api() -> FakeAPI:
    a = FakeAPI()
    a.pages["nodes"] = [Page([kube.make_node("a", 4)], "10", token="1"), Page([kube.make_node("b", 2)], "10")]
    a.pages["pods"] = [Page([kube.make_pod("p", 1, node="a", phase="Running")], "11")]
    return a


@pytest.fixture
def run_watcher() -> Iterator[Callable[..., tuple[watching.Watcher, cache.ClusterCache]]]:
    started: list[watching.Watcher] = []

    def start(factory: Callable[[Settings], Any], **settings: Any) -> tuple[watching.Watcher, cache.ClusterCache]:
        c = cache.ClusterCache()
        w = watching.Watcher(c, Settings(watch=True, backoff_max_s=0.05, **settings), api_factory=factory)
        w.start()
        started.append(w)
        return w, c

    yield start
    for w in started:
        w.stop()


def test_lists_all_pages_then_applies_watch_events(api: FakeAPI, run_watcher: Any) -> None:
    _, c = run_watcher(lambda s: api)
    wait(lambda: c.snapshot().synced, "first lists")
    s = c.snapshot()
    assert {n: ns.gpus_free for n, ns in s.nodes.items()} == {"a": 3, "b": 2}

    api.event("pods", "ADDED", kube.make_pod("q", 2, node="b", phase="Running"), "12")
    wait(lambda: c.snapshot().nodes["b"].gpus_free == 0, "pod q counted on b")
    api.event("pods", "MODIFIED", kube.make_pod("q", 2, node="b", phase="Succeeded"), "13")
    wait(lambda: c.snapshot().nodes["b"].gpus_free == 2, "finished pod q released")
    api.event("pods", "DELETED", kube.make_pod("p", 1, node="a", phase="Running"), "14")
    wait(lambda: c.snapshot().nodes["a"].gpus_free == 4, "deleted pod p released")
    api.event("nodes", "BOOKMARK", {"metadata": {}}, "15")
    api.event("nodes", "ADDED", kube.make_node("c", 8, cached=("sd15",)), "16")
    wait(lambda: "c" in c.snapshot().nodes, "node c added")
    assert c.snapshot().nodes["c"].cached_models == {"sd15"}
    api.event("nodes", "DELETED", kube.make_node("a"), "17")
    wait(lambda: "a" not in c.snapshot().nodes, "node a deleted")

    watch_calls = [kw for r, kw in api.calls if r == "pods" and kw.get("watch")]
    assert watch_calls[0]["resource_version"] == "11"
    assert watch_calls[0]["allow_watch_bookmarks"] is True


def test_watch_resumes_from_the_last_resource_version(api: FakeAPI, run_watcher: Any) -> None:
    _, c = run_watcher(lambda s: api)
    wait(lambda: c.snapshot().synced, "first lists")
    api.event("pods", "ADDED", kube.make_pod("q", 1, node="b", phase="Running"), "42")
    wait(lambda: c.snapshot().nodes["b"].gpus_free == 1, "pod q")
    api.watches["pods"].put(None)  # the server closes the watch (its timeout)
    wait(lambda: sum(1 for r, kw in api.calls if r == "pods" and kw.get("watch")) >= 2, "a second watch")
    second = [kw for r, kw in api.calls if r == "pods" and kw.get("watch")][1]
    assert second["resource_version"] == "42"
    assert api.lists("pods") == 1


def test_expired_resource_version_relists(api: FakeAPI, run_watcher: Any) -> None:
    before = metrics.watch_restarts.labels("pods", "expired")._value.get()
    _, c = run_watcher(lambda s: api)
    wait(lambda: c.snapshot().synced, "first lists")
    # After the 410 the fresh list no longer has pod p.
    api.pages["pods"] = [Page([], "50")]
    line = json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}})
    api.watches["pods"].put(line.encode() + b"\n")
    wait(lambda: api.lists("pods") >= 2, "a re-list")
    wait(lambda: c.snapshot().nodes["a"].gpus_free == 4, "state from the re-list")
    assert metrics.watch_restarts.labels("pods", "expired")._value.get() == before + 1


def test_unreachable_api_backs_off_and_recovers(api: FakeAPI, run_watcher: Any) -> None:
    attempts = []

    def factory(s: Settings) -> Any:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("api server down")
        return api

    w, c = run_watcher(factory)
    wait(lambda: c.snapshot().synced, "lists once the API is back")
    assert len(attempts) >= 3
    assert w.last_error is None


def test_refresh_rereads_the_pods_of_a_node(api: FakeAPI, run_watcher: Any) -> None:
    w, c = run_watcher(lambda s: api)
    wait(lambda: c.snapshot().synced, "first lists")
    assert c.snapshot().nodes["a"].gpus_free == 3
    api.pages["pods"] = [Page([kube.make_pod("new", 2, node="a", phase="Running")], "30")]
    assert w.refresh_nodes(["a"]) is True
    assert c.snapshot().nodes["a"].gpus_free == 2  # p gone, new counted
    selector = [kw for r, kw in api.calls if kw.get("field_selector")]
    assert selector[-1]["field_selector"] == "spec.nodeName=a"


def test_every_refresh_reads_after_it_was_asked(api: FakeAPI, run_watcher: Any) -> None:
    """Asked again at once, it reads again: the pod freed in between must be seen.

    A refresh skipped because the node had just been read left a gang unplaced for minutes:
    the deletion came between the two filter calls, and the watch had not delivered it yet.
    """
    w, c = run_watcher(lambda s: api)
    wait(lambda: c.snapshot().synced, "first lists")
    api.pages["pods"] = [Page([kube.make_pod("hog", 4, node="a", phase="Running")], "30")]
    assert w.refresh_nodes(["a"]) is True
    assert c.snapshot().nodes["a"].gpus_free == 0
    api.pages["pods"] = [Page([], "31")]  # the hog is deleted; no watch event yet
    assert w.refresh_nodes(["a"]) is True
    assert c.snapshot().nodes["a"].gpus_free == 4


def held_read(api: FakeAPI, w: watching.Watcher) -> tuple[threading.Event, threading.Thread]:
    """A refresh of node a whose read of the API server hangs until the returned gate is set."""
    gate, reading = threading.Event(), threading.Event()
    plain = api.list_pod_for_all_namespaces

    def slow_read(**kw: Any) -> Any:
        reading.set()
        gate.wait(5)
        return plain(**kw)

    api.list_pod_for_all_namespaces = slow_read  # type: ignore[method-assign]
    first = threading.Thread(target=w.refresh_nodes, args=(["a"],))
    first.start()
    assert reading.wait(5)
    return gate, first


def test_concurrent_refreshes_of_a_node_share_a_read(api: FakeAPI, run_watcher: Any) -> None:
    w, c = run_watcher(lambda s: api)
    wait(lambda: c.snapshot().synced, "first lists")
    before = metrics.node_refreshes._value.get()
    gate, first = held_read(api, w)
    # Asked while the first read is under way: it began before this call, so one more is due.
    second = threading.Thread(target=w.refresh_nodes, args=(["a"],))
    third = threading.Thread(target=w.refresh_nodes, args=(["a"],))
    second.start()
    third.start()
    time.sleep(0.1)
    gate.set()
    for t in (first, second, third):
        t.join(5)
    assert metrics.node_refreshes._value.get() - before == 2  # the second and third shared one


def test_a_deletion_seen_during_a_refresh_is_not_undone_by_it(api: FakeAPI, run_watcher: Any) -> None:
    """The LIST answered before pod p's deletion; the watch delivers it before the LIST's answer
    is applied. Applying the answer whole brought p back, and no event was left to remove it."""
    w, c = run_watcher(lambda s: api)
    wait(lambda: c.snapshot().synced, "first lists")
    before = metrics.node_refreshes._value.get()
    gate, first = held_read(api, w)  # its answer will still list p
    api.event("pods", "DELETED", kube.make_pod("p", 1, node="a", phase="Running"), "12")
    wait(lambda: c.snapshot().nodes["a"].gpus_free == 4, "the deletion from the watch")
    gate.set()
    first.join(5)
    assert metrics.node_refreshes._value.get() == before + 1  # the answer was applied
    assert c.snapshot().nodes["a"].gpus_free == 4


def test_a_refresh_voided_by_a_re_list_reads_again(api: FakeAPI, run_watcher: Any) -> None:
    """A full re-list applied during a node's read voids it (which LIST is newer cannot be told):
    the re-list here still shows p, deleted since; the node is read again, and p is gone."""
    w, c = run_watcher(lambda s: api)
    wait(lambda: c.snapshot().synced, "first lists")
    gate, first = held_read(api, w)
    c.replace_pods([wire.Pod.model_validate(kube.make_pod("p", 1, node="a", phase="Running"))])  # older
    api.pages["pods"] = [Page([], "13")]  # p deleted: what the node's reads now answer
    gate.set()
    first.join(5)
    assert c.snapshot().nodes["a"].gpus_free == 4


def test_unreadable_objects_are_skipped(api: FakeAPI, run_watcher: Any) -> None:
    _, c = run_watcher(lambda s: api)
    wait(lambda: c.snapshot().synced, "first lists")
    api.watches["pods"].put(json.dumps({"type": "ADDED", "object": {"spec": {}}}).encode() + b"\n")
    api.event("pods", "ADDED", kube.make_pod("q", 1, node="b", phase="Running"), "20")
    wait(lambda: c.snapshot().nodes["b"].gpus_free == 1, "the next good event")


def test_a_refresh_does_not_queue_behind_a_stuck_read(api: FakeAPI, run_watcher: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watching, "REFRESH_TIMEOUT_S", 0.2)
    w, c = run_watcher(lambda s: api)
    wait(lambda: c.snapshot().synced, "first lists")
    gate, first = held_read(api, w)
    assert w.refresh_nodes(["a"]) is False  # gave up on the node after the timeout instead of waiting
    gate.set()
    first.join(5)
