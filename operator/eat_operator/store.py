"""An in-memory copy of the objects the operator watches, fed by kopf and by its own writes.

kopf's watch streams deliver every event (``handlers``); the dispatcher's own API answers
are applied too, so a cycle sees what the previous one wrote before the watch echo arrives.
Stale copies never win: an object is replaced only by one with a newer resourceVersion,
and a deleted object leaves a tombstone so a late echo cannot bring it back. A periodic
relist (``replace``) repairs anything a stream missed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str]


def _rv(obj: Obj) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:  # opaque on some servers: then the last write wins
        return 0


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Store:
    def __init__(self, keep: Callable[[Obj], bool] | None = None) -> None:
        self._objs: dict[Key, Obj] = {}
        self._tombs: dict[Key, int] = {}
        self._keep = keep

    def __len__(self) -> int:
        return len(self._objs)

    def values(self) -> list[Obj]:
        return list(self._objs.values())

    def get(self, key: Key) -> Obj | None:
        return self._objs.get(key)

    def apply(self, type_: str | None, obj: Obj) -> bool:
        """One watch event (ADDED, MODIFIED, DELETED; None for kopf's initial listing) or an
        API answer (type None). True if the store changed."""
        k, rv = key_of(obj), _rv(obj)
        old = self._objs.get(k)
        if type_ == "DELETED":
            if old is not None and rv and _rv(old) > rv:
                return False
            self._tombs[k] = max(rv, self._tombs.get(k, 0))
            return self._objs.pop(k, None) is not None
        if old is not None and rv and _rv(old) > rv:
            return False
        if old is None and rv and self._tombs.get(k, -1) >= rv:
            return False
        if self._keep is not None and not self._keep(obj):
            return self._objs.pop(k, None) is not None
        self._objs[k] = obj
        return True

    def forget(self, key: Key, rv: int = 0) -> None:
        """The object is gone (a 404 from our own request)."""
        self._objs.pop(key, None)
        self._tombs[key] = max(rv, self._tombs.get(key, 0))

    def replace(self, items: Iterable[Obj], list_rv: str | None) -> None:
        """A full relist: keep newer copies, drop what the list proves deleted."""
        try:
            at = int(list_rv or 0)
        except ValueError:
            at = 0
        seen: set[Key] = set()
        for obj in items:
            seen.add(key_of(obj))
            self.apply(None, obj)
        for k in [k for k, o in self._objs.items() if k not in seen and (not at or _rv(o) <= at)]:
            del self._objs[k]
        if len(self._tombs) > 10 * max(len(self._objs), 1000):
            self._tombs.clear()
