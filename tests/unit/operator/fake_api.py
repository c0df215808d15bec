"""An in-memory stand-in for ``kube.Client``, for unit tests that drive ``Dispatcher.cycle``.

Objects live under their URL; creates answer 409 on a taken name, merge patches 409 on a stale
resourceVersion, as the API server does. The integration tests run the real one.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from eat_operator import kube

Obj = dict[str, Any]


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.requests: list[tuple[str, str]] = []
        self.refusals: dict[str, kube.ApiError] = {}
        """Collection URL → the error every create there gets (a quota, an admission webhook)."""
        self._versions = itertools.count(100)

    def put(self, url: str, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
        obj["metadata"].setdefault("uid", "uid-" + obj["metadata"]["name"])
        self.objects[url] = obj
        return copy.deepcopy(obj)

    def under(self, collection: str) -> list[Obj]:
        return [o for url, o in self.objects.items() if url.rsplit("/", 1)[0] == collection]

    async def create(self, url: str, body: Obj) -> Obj:
        self.requests.append(("POST", url))
        if url in self.refusals:
            raise self.refusals[url]
        if url.endswith("/events"):
            return {}
        target = f"{url}/{body['metadata']['name']}"
        if target in self.objects:
            raise kube.ApiError(409, "AlreadyExists", f"{target} already exists")
        return self.put(target, body)

    async def request(self, method: str, url: str, body: Obj | None = None, **_: Any) -> Obj:
        self.requests.append((method, url))
        if method != "GET":
            raise NotImplementedError(method)
        if url not in self.objects:
            raise kube.ApiError(404, "NotFound", url)
        return copy.deepcopy(self.objects[url])

    async def merge_patch(self, url: str, patch: Obj) -> Obj:
        self.requests.append(("PATCH", url))
        target = url.removesuffix("/status")
        if target not in self.objects:
            raise kube.ApiError(404, "NotFound", url)
        current = self.objects[target]
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected and expected != current["metadata"]["resourceVersion"]:
            raise kube.ApiError(409, "Conflict", "the object has been modified")
        return self.put(target, _merge(copy.deepcopy(current), {k: v for k, v in patch.items() if k != "metadata"}))

    async def delete(self, url: str, body: Obj | None = None) -> Obj:
        self.requests.append(("DELETE", url))
        if self.objects.pop(url, None) is None:
            raise kube.ApiError(404, "NotFound", url)
        return {"kind": "Status", "status": "Success"}


def _merge(into: Obj, patch: Obj) -> Obj:
    """RFC 7386 merge patch."""
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key] = _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into
