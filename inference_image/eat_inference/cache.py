"""The node-local model cache: what makes a start warm or cold.

Every pod on a node mounts the same cache directory (a hostPath). A model is a diffusers
folder; in the *model store* it is packed as ``<name>.tar`` (any tar compression) with its
checksum beside it in ``<name>.tar.sha256`` (``sha256sum`` format). The store is a mounted
directory or an http(s) base URL.

Layout of the cache root::

    models/<key>/              one unpacked model; present means complete (placed by rename)
    models/<key>/.eat-model.json   name, sha256 of the archive, size of every file
    meta/<key>.json            last use and last load duration (for LRU and the node agent)
    locks/<key>.lock           held while fetching or evicting the model (exclusive)
    locks/<key>.use            shared while a process loads the model; eviction skips it
    locks/.cache.lock          held while choosing what to evict (no model key starts with '.')
    tmp/                       downloads and unpacking in progress

A miss fetches under the model's lock, so two pods fetching the same model download it once:
the second waits, then finds it. The archive is checked against its sha256, unpacked into
``tmp/`` and moved into ``models/`` with one ``rename``, so a reader sees the whole model or
nothing; a failed, corrupt or partial download leaves nothing behind. A placed model whose
files do not have the sizes recorded when it was placed is treated as absent and fetched
again, and so is one whose archive's sha256 is not the one asked for. Eviction is
least-recently-used under a byte capacity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import json
import logging
import os
import pathlib
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Protocol

import filelock

logger = logging.getLogger(__name__)

MARKER = ".eat-model.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
_CHUNK = 1 << 20


class CacheError(RuntimeError):
    """A model could not be made available from the cache."""


class ModelNotFoundError(CacheError):
    """The store answered, but has no such model."""


class StoreUnreachableError(CacheError):
    """The store could not be read at all (no mount, connection refused, timeout, HTTP 5xx)."""


class ChecksumMismatchError(CacheError):
    """The archive does not have the expected sha256 (corrupt or partial download)."""


class CacheFullError(CacheError):
    """The model does not fit in the cache, even after evicting every model not in use."""


def check_name(name: str) -> str:
    # No "--": key_of writes "/" so, and "org--model" would share "org/model"'s folder.
    if len(name) > 128 or not _NAME.match(name) or ".." in name or "--" in name:
        raise CacheError(f"invalid model name {name!r}: use letters, digits, '.', '_', '-' (not '--') "
                         "and '/' between parts")
    return name


def key_of(name: str) -> str:
    """File-system name of a model: '/' becomes '--' (as in the Hugging Face cache)."""
    return check_name(name).replace("/", "--")


# --- model stores -------------------------------------------------------------------------


class ModelStore(Protocol):
    """Where packed models come from."""

    uri: str

    def sha256(self, name: str) -> str:
        """The expected sha256 of the model's archive (hex)."""
        ...

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[tuple[IO[bytes], int | None]]:
        """The archive as a byte stream, and its size when known."""
        ...


def _parse_sha256(text: str, what: str) -> str:
    digest = text.strip().split()[0].lower() if text.strip() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise CacheError(f"{what} does not hold a sha256 digest")
    return digest


class LocalStore:
    """A store on a mounted file system: ``<root>/<name>.tar`` and ``<name>.tar.sha256``."""

    def __init__(self, root: str | pathlib.Path) -> None:
        self.root = pathlib.Path(root)
        self.uri = str(self.root)

    def _path(self, name: str, suffix: str = "") -> pathlib.Path:
        if not self.root.is_dir():
            raise StoreUnreachableError(
                f"model store {self.uri} is not reachable: no such directory (volume not mounted?)"
            )
        return self.root / f"{check_name(name)}.tar{suffix}"

    def sha256(self, name: str) -> str:
        path = self._path(name, ".sha256")
        if not path.is_file():
            if not self._path(name).is_file():
                raise ModelNotFoundError(f"model {name!r} is not in the store {self.uri} (no {name}.tar)")
            raise CacheError(f"model {name!r} in the store {self.uri} has no checksum file {path.name}")
        return _parse_sha256(path.read_text(), str(path))

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[tuple[IO[bytes], int | None]]:
        path = self._path(name)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise ModelNotFoundError(f"model {name!r} is not in the store {self.uri} (no {path.name})") from None
        except OSError as e:
            raise StoreUnreachableError(f"model store {self.uri} is not readable: {e}") from e
        with f:
            yield f, path.stat().st_size


class HttpStore:
    """A store behind http(s): ``<base>/<name>.tar`` and ``<base>/<name>.tar.sha256``."""

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self.uri = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def _url(self, name: str, suffix: str = "") -> str:
        return f"{self.uri}/{urllib.parse.quote(check_name(name))}.tar{suffix}"

    def _get(self, url: str, name: str) -> IO[bytes]:
        try:
            return urllib.request.urlopen(url, timeout=self.timeout_s)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise ModelNotFoundError(f"model {name!r} is not in the store {self.uri} (HTTP 404 for {url})") from e
            raise StoreUnreachableError(f"model store {self.uri} answered HTTP {e.code} for {url}") from e
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise StoreUnreachableError(f"model store {self.uri} is not reachable: {reason}") from e

    def sha256(self, name: str) -> str:
        url = self._url(name, ".sha256")
        with self._get(url, name) as r:
            return _parse_sha256(r.read(4096).decode("utf-8", "replace"), url)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[tuple[IO[bytes], int | None]]:
        r = self._get(self._url(name), name)
        with r:
            length = r.headers.get("Content-Length")  # type: ignore[attr-defined]
            yield r, int(length) if length and length.isdigit() else None


def store_from_uri(uri: str, timeout_s: float = 30.0) -> ModelStore:
    """``http(s)://…`` → :class:`HttpStore`; ``file://…`` or a path → :class:`LocalStore`."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        return HttpStore(uri, timeout_s)
    if parsed.scheme == "file":
        return LocalStore(parsed.path)
    if parsed.scheme:
        raise CacheError(
            f"model store {uri!r}: unsupported scheme {parsed.scheme!r} (use a path, file://, http:// or https://)"
        )
    return LocalStore(uri)


def pack(model_dir: str | pathlib.Path, store_dir: str | pathlib.Path, name: str) -> pathlib.Path:
    """Pack a diffusers folder into ``<store_dir>/<name>.tar`` plus its ``.sha256``; return the tar."""
    src = pathlib.Path(model_dir)
    if not (src / "model_index.json").is_file():
        raise CacheError(f"{src} is not a diffusers model folder (no model_index.json)")
    out = pathlib.Path(store_dir) / f"{check_name(name)}.tar"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}")
    with tarfile.open(tmp, "w") as tar:
        for path in sorted(src.rglob("*")):
            if path.is_file() and path.name != MARKER:
                tar.add(path, arcname=str(path.relative_to(src)))
    digest = _sha256_file(tmp)
    os.replace(tmp, out)
    out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n")
    return out


def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --- the cache ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CachedModel:
    """One model in the cache."""

    name: str
    path: pathlib.Path
    bytes: int
    sha256: str
    placed_at: float
    last_used: float
    last_load_s: float | None


@dataclasses.dataclass(frozen=True)
class Fetched:
    """How :meth:`ModelCache.ensure` made a model available."""

    name: str
    path: pathlib.Path
    source: str
    """``disk`` (warm: already cached) or ``store`` (cold: fetched now)."""
    fetch_s: float
    """Download, checksum, unpack and placement; 0 on a hit."""
    lock_wait_s: float
    """Time spent waiting for another process that was fetching the same model."""
    bytes: int
    evicted: tuple[str, ...] = ()

    @property
    def cold(self) -> bool:
        return self.source == "store"


# What a fetch of model <key> leaves in tmp/ when it crashes: its download (<key>.tar), its
# unpacking (<key>.<hex>) and evictions (<key>.evicted.<hex>). Keys may hold dots, so a name
# can parse two ways ("x.evicted.<hex>": x's eviction, or the unpacking of "x.evicted").
_LEFTOVER = tuple(re.compile(rf"(?P<key>.+{lazy})\.(tar|(evicted\.)?[0-9a-f]{{32}})") for lazy in ("?", ""))


class ModelCache:
    """A node-local, multi-process-safe cache of unpacked models under a byte capacity."""

    def __init__(
        self,
        root: str | pathlib.Path,
        capacity_bytes: int,
        lock_timeout_s: float = 1800.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = pathlib.Path(root)
        self.capacity_bytes = capacity_bytes
        self.lock_timeout_s = lock_timeout_s
        self.clock = clock
        self._reading: dict[str, list[IO[str]]] = {}
        """Use-lock files this process holds shared through :meth:`in_use`, by model key."""
        for sub in ("models", "meta", "locks", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- reading --

    def models(self) -> list[CachedModel]:
        """Every complete model in the cache (unverified; cheap enough for each scrape)."""
        out = []
        for d in sorted((self.root / "models").iterdir()):
            model = self._read(d)
            if model is not None:
                out.append(model)
        return out

    def get(self, name: str) -> CachedModel | None:
        return self._read(self.root / "models" / key_of(name))

    def used_bytes(self) -> int:
        return sum(m.bytes for m in self.models())

    def free_bytes(self) -> int:
        """Capacity left, bounded by the free space of the file system under the cache."""
        disk_free = shutil.disk_usage(self.root).free
        return max(0, min(self.capacity_bytes - self.used_bytes(), disk_free))

    def _read(self, d: pathlib.Path) -> CachedModel | None:
        try:
            marker = json.loads((d / MARKER).read_text())
        except (OSError, ValueError):
            return None
        meta = self._meta(d.name)
        return CachedModel(
            name=marker["name"],
            path=d,
            bytes=int(marker["bytes"]),
            sha256=marker["sha256"],
            placed_at=float(marker["placed_at"]),
            last_used=float(meta.get("last_used", marker["placed_at"])),
            last_load_s=meta.get("last_load_s"),
        )

    def _meta(self, key: str) -> dict[str, float]:
        try:
            data = json.loads((self.root / "meta" / f"{key}.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_meta(self, key: str, **values: float) -> None:
        meta = self._meta(key) | values
        path = self.root / "meta" / f"{key}.json"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, path)

    def record_load(self, name: str, seconds: float) -> None:
        """Remember how long the last load took (fetch included when cold), for the node agent.

        Nothing for a model evicted since it was loaded: its metadata went with it, and a
        later fetch must not inherit a stale load time."""
        key = key_of(name)
        with self.in_use(name):  # no eviction between the check and the write
            if (self.root / "models" / key).is_dir():
                self._write_meta(key, last_load_s=seconds, last_used=self.clock())

    # -- making a model available --

    def ensure(self, name: str, store: ModelStore | None, expected_sha256: str | None = None) -> Fetched:
        """The model's folder in the cache: a hit, or fetched from ``store`` now.

        With ``expected_sha256``, a cached copy of another archive is a miss: it is evicted
        (unless another process is reading it) and the model fetched again.
        Raises a :class:`CacheError` subclass with a message that names the model and the
        store; the cache is unchanged by a failed fetch.
        """
        key = key_of(name)
        expected = _parse_sha256(expected_sha256, "expected sha256") if expected_sha256 else None
        hit = self._hit(key, expected)
        if hit is not None:
            self._write_meta(key, last_used=self.clock())
            return Fetched(name, hit.path, "disk", 0.0, 0.0, hit.bytes)
        if store is None:
            raise CacheError(f"model {name!r} is not in the cache {self.root} and no model store is configured")
        t0 = time.monotonic()
        with self._model_lock(key, name):
            waited = time.monotonic() - t0
            hit = self._hit(key, expected)  # fetched by another process while we waited
            if hit is not None:
                self._write_meta(key, last_used=self.clock())
                return Fetched(name, hit.path, "disk", 0.0, waited, hit.bytes)
            t1 = time.monotonic()
            self._evict_other_archive(key, name, expected)
            self._clean_leftovers(key)
            path, size, evicted = self._fetch(name, key, store, expected)
            return Fetched(name, path, "store", time.monotonic() - t1, waited, size, evicted)

    @contextlib.contextmanager
    def in_use(self, name: str) -> Iterator[None]:
        """Hold the model against eviction while it is read (a shared lock)."""
        key = key_of(name)
        with (self.root / "locks" / f"{key}.use").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            held = self._reading.setdefault(key, [])
            held.append(f)
            try:
                yield
            finally:
                held.remove(f)
                fcntl.flock(f, fcntl.LOCK_UN)

    def evict(self, name: str) -> bool:
        """Remove a model now (waits for its fetch lock; fails if it is being read)."""
        key = key_of(name)
        with self._model_lock(key, name):
            return self._evict_locked(key)

    def _hit(self, key: str, expected: str | None) -> CachedModel | None:
        """The complete cached copy, if it is of the expected archive (any, when None)."""
        model = self._verified(key)
        if model is None or expected is None or model.sha256 == expected:
            return model
        logger.warning("cached model %s is of sha256 %s, not the expected %s", model.name, model.sha256, expected)
        return None

    def _evict_other_archive(self, key: str, name: str, expected: str | None) -> None:
        """Under the model's lock: evict a complete copy that :meth:`_hit` refused. The caller's
        own :meth:`in_use` hold does not keep it: that hold is for the copy ``ensure`` returns."""
        other = self._verified(key)
        if other is None or expected is None or other.sha256 == expected:
            return
        if not self._evict_locked(key, despite_own_hold=True):
            raise CacheError(
                f"model {name!r}: the cached copy is of sha256 {other.sha256}, not the expected {expected}, "
                f"and another process is reading it; it cannot be replaced now"
            )

    def _verified(self, key: str) -> CachedModel | None:
        d = self.root / "models" / key
        model = self._read(d)
        if model is None:
            return None
        files = json.loads((d / MARKER).read_text()).get("files", {})
        for rel, size in files.items():
            try:
                if (d / rel).stat().st_size != size:
                    raise FileNotFoundError(rel)
            except OSError:
                logger.warning("cached model %s is damaged (%s); it will be fetched again", model.name, rel)
                return None
        return model

    @contextlib.contextmanager
    def _model_lock(self, key: str, name: str) -> Iterator[None]:
        lock = filelock.FileLock(str(self.root / "locks" / f"{key}.lock"))
        try:
            lock.acquire(timeout=self.lock_timeout_s)
        except filelock.Timeout as e:
            raise CacheError(
                f"model {name!r}: another process held its cache lock for more than {self.lock_timeout_s:g} s"
            ) from e
        try:
            yield
        finally:
            lock.release()

    def _clean_leftovers(self, key: str) -> None:
        """Before fetching ``key`` (we hold its lock): remove what crashed fetches left, this
        model's and any other's not in progress (a fetch in progress holds its model's lock).
        A pod deleted mid-download leaves a partial archive as large as the model, which would
        otherwise stay until that model is fetched on this node again."""
        for leftover in (self.root / "tmp").iterdir():
            keys = {m["key"] for pattern in _LEFTOVER if (m := pattern.fullmatch(leftover.name))}
            with contextlib.ExitStack() as held:  # a name two models could have left: both locks
                try:
                    for k in sorted(keys - {key}):
                        held.enter_context(filelock.FileLock(str(self.root / "locks" / f"{k}.lock"), timeout=0))
                except filelock.Timeout:
                    continue
                if keys:
                    logger.info("removing %s, left by a fetch that did not finish", leftover.name)
                    _remove(leftover)
        d = self.root / "models" / key
        if d.exists():
            logger.warning("removing damaged or incomplete cached model %s", key)
            _remove(d)

    def _fetch(
        self, name: str, key: str, store: ModelStore, expected: str | None
    ) -> tuple[pathlib.Path, int, tuple[str, ...]]:
        tmp = self.root / "tmp" / f"{key}.{uuid.uuid4().hex}"
        archive = tmp.with_suffix(".tar")
        try:
            expected = expected or store.sha256(name)
            h, n = hashlib.sha256(), 0
            with store.open(name) as (src, length), archive.open("wb") as dst:
                try:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        dst.write(chunk)
                        n += len(chunk)
                except (OSError, http.client.HTTPException) as e:  # IncompleteRead: a chunked body cut off
                    raise StoreUnreachableError(
                        f"model {name!r}: download from {store.uri} broke off after {n} bytes: {e}"
                    ) from e
            if length is not None and n != length:
                raise ChecksumMismatchError(
                    f"model {name!r} from {store.uri}: partial download ({n} of {length} bytes); discarded, cache unchanged"
                )
            if h.hexdigest() != expected:
                raise ChecksumMismatchError(
                    f"model {name!r} from {store.uri}: sha256 mismatch (expected {expected}, got {h.hexdigest()} "
                    f"for {n} bytes); the download was discarded and the cache is unchanged"
                )
            files = _unpack(archive, tmp, name)
            archive.unlink()
            size = sum(files.values())
            marker = {"name": name, "sha256": expected, "bytes": size, "placed_at": self.clock(), "files": files}
            (tmp / MARKER).write_text(json.dumps(marker))
            evicted = self._place(tmp, name, key, size)
            logger.info("placed model %s (%d bytes) from %s", name, size, store.uri)
            return self.root / "models" / key, size, evicted
        finally:
            _remove(archive)
            _remove(tmp)

    def _place(self, tmp: pathlib.Path, name: str, key: str, size: int) -> tuple[str, ...]:
        """Evict least-recently-used models until ``size`` fits, then move the model in.

        Both happen under the cache-wide lock, so two fetches of different models cannot
        each count the same free bytes.
        """
        if size > self.capacity_bytes:
            raise CacheFullError(
                f"model {name!r} ({size} bytes) is larger than the cache capacity ({self.capacity_bytes} bytes)"
            )
        evicted: list[str] = []
        with filelock.FileLock(str(self.root / "locks" / ".cache.lock"), timeout=self.lock_timeout_s):
            others = sorted((m for m in self.models() if m.path.name != key), key=lambda m: m.last_used)
            used = sum(m.bytes for m in others)
            for victim in others:
                if used + size <= self.capacity_bytes:
                    break
                vkey = victim.path.name
                lock = filelock.FileLock(str(self.root / "locks" / f"{vkey}.lock"), timeout=0)
                try:
                    with lock:
                        if self._evict_locked(vkey):
                            used -= victim.bytes
                            evicted.append(victim.name)
                except filelock.Timeout:
                    logger.info("not evicting %s: it is being fetched", victim.name)
            if used + size > self.capacity_bytes:
                raise CacheFullError(
                    f"model {name!r} ({size} bytes) does not fit in the cache: {used} of {self.capacity_bytes} bytes "
                    f"are held by models in use"
                )
            self._write_meta(key, last_used=self.clock())
            os.rename(tmp, self.root / "models" / key)  # atomic: the model appears whole
        return tuple(evicted)

    def _evict_locked(self, key: str, despite_own_hold: bool = False) -> bool:
        d = self.root / "models" / key
        if not d.exists():
            return False
        with self._sole_reader(key, despite_own_hold) as sole:
            if not sole:
                logger.info("not evicting %s: it is being read", key)
                return False
            # Rename first, so that readers never see a half-deleted model.
            doomed = self.root / "tmp" / f"{key}.evicted.{uuid.uuid4().hex}"
            os.rename(d, doomed)
            _remove(doomed)
            (self.root / "meta" / f"{key}.json").unlink(missing_ok=True)
        logger.info("evicted model %s", key)
        return True

    @contextlib.contextmanager
    def _sole_reader(self, key: str, despite_own_hold: bool) -> Iterator[bool]:
        """The model's use lock held exclusively, if no one reads the model (else False).

        ``despite_own_hold``: this process's :meth:`in_use` hold (the runner's, around ``ensure``)
        does not count. flock would count it as another reader if locked through a second open
        file, so that hold is converted to exclusive and back instead. A conversion that fails
        drops the shared lock: it is taken again, which cannot block, as an exclusive lock is
        only taken under the model's lock, held here.
        """
        own = self._reading.get(key, []) if despite_own_hold else []
        with contextlib.ExitStack() as stack:
            f = own[-1] if own else stack.enter_context((self.root / "locks" / f"{key}.use").open("a"))
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                sole = True
            except BlockingIOError:
                sole = False
            try:
                yield sole
            finally:
                fcntl.flock(f, fcntl.LOCK_SH if own else fcntl.LOCK_UN)


def _unpack(archive: pathlib.Path, dest: pathlib.Path, name: str) -> dict[str, int]:
    """Unpack safely (no links outside, no absolute paths); return {relative path: size}."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise CacheError(f"model {name!r}: the archive cannot be unpacked: {e}") from e
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "model_index.json").is_file():
        # A tar with one top folder: lift its contents up (renamed first, so no name clashes).
        inner = entries[0].rename(dest / f".top.{uuid.uuid4().hex}")
        for p in inner.iterdir():
            os.rename(p, dest / p.name)
        inner.rmdir()
    if not (dest / "model_index.json").is_file():
        raise CacheError(f"model {name!r}: the archive is not a diffusers model (no model_index.json)")
    return {str(p.relative_to(dest)): p.stat().st_size for p in sorted(dest.rglob("*")) if p.is_file()}


def _remove(path: pathlib.Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
