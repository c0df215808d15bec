"""The node-local model cache: hits, misses, LRU, concurrency, and failures that leave it clean.

Stores are real: a directory and an HTTP server on loopback. Models are small diffusers-like
folders (a model_index.json and a weights file of chosen size), so these tests need no torch.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("filelock")

from eat_inference import cache

from . import storeserver
from .conftest import child_env, free_port

MiB = 1 << 20


def make_model(root: pathlib.Path, name: str, size: int, fill: bytes = b"w") -> pathlib.Path:
    d = root / "src" / name
    (d / "unet").mkdir(parents=True)
    (d / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(fill * size)
    return d


@pytest.fixture
def store(tmp_path: pathlib.Path) -> pathlib.Path:
    """A store with models a (1 MiB), b (1 MiB), c (2 MiB)."""
    s = tmp_path / "store"
    for name, size in (("a", MiB), ("b", MiB), ("c", 2 * MiB)):
        cache.pack(make_model(tmp_path, name, size), s, name)
    return s


def assert_clean(c: cache.ModelCache) -> None:
    """Nothing half-done is left: no temporary files, every model directory complete."""
    assert list((c.root / "tmp").iterdir()) == []
    for d in (c.root / "models").iterdir():
        assert (d / cache.MARKER).is_file()


def test_cold_fetch_then_warm_hit(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    cold = c.ensure("a", cache.LocalStore(store))
    assert cold.source == "store" and cold.cold and cold.fetch_s > 0
    assert (cold.path / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size == MiB
    warm = c.ensure("a", cache.LocalStore(store))
    assert warm.source == "disk" and not warm.cold and warm.fetch_s == 0.0
    assert warm.path == cold.path
    # A hit needs no store at all.
    assert c.ensure("a", None).source == "disk"
    assert [m.name for m in c.models()] == ["a"]
    assert_clean(c)


def test_http_store(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    with storeserver.serve(store) as srv:
        fetched = c.ensure("b", cache.store_from_uri(srv.url))
        assert fetched.cold and fetched.bytes > MiB
        assert sorted(srv.requests) == ["/b.tar", "/b.tar.sha256"]


def test_lru_eviction_under_capacity(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    now = [1000.0]
    c = cache.ModelCache(tmp_path / "cache", int(3.5 * MiB), clock=lambda: now[0])
    s = cache.LocalStore(store)
    c.ensure("a", s)
    now[0] += 1
    c.ensure("b", s)
    now[0] += 1
    c.ensure("a", s)  # a is now more recently used than b
    now[0] += 1
    fetched = c.ensure("c", s)  # 2 MiB more: only one of a, b may stay
    assert fetched.evicted == ("b",)
    assert sorted(m.name for m in c.models()) == ["a", "c"]
    assert c.used_bytes() <= c.capacity_bytes
    assert_clean(c)


def test_model_in_use_is_not_evicted(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    c = cache.ModelCache(tmp_path / "cache", int(2.5 * MiB))
    s = cache.LocalStore(store)
    c.ensure("a", s)
    with c.in_use("a"):
        with pytest.raises(cache.CacheFullError, match="does not fit"):
            c.ensure("c", s)
    assert [m.name for m in c.models()] == ["a"]
    assert_clean(c)
    assert c.ensure("c", s).evicted == ("a",)


def test_larger_than_capacity(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    c = cache.ModelCache(tmp_path / "cache", MiB // 2)
    with pytest.raises(cache.CacheFullError, match="larger than the cache capacity"):
        c.ensure("a", cache.LocalStore(store))
    assert c.models() == []
    assert_clean(c)


def test_concurrent_fetchers_download_once(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    """Three processes (pods on one node) ask for the same model at once: one download."""
    root = tmp_path / "cache"
    code = (
        "import sys, json; from eat_inference import cache; "
        "f = cache.ModelCache(sys.argv[1], 10 << 20).ensure('c', cache.store_from_uri(sys.argv[2])); "
        "print(json.dumps({'source': f.source, 'path': str(f.path), 'wait': f.lock_wait_s}))"
    )
    with storeserver.serve(store) as srv:
        srv.delay_s = 1.0  # the download takes a while: the others must wait, not download too
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(root), srv.url], env=child_env(), stdout=subprocess.PIPE, text=True
            )
            for _ in range(3)
        ]
        results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
        assert all(p.returncode == 0 for p in procs)
        assert srv.requests.count("/c.tar") == 1
    assert sorted(r["source"] for r in results) == ["disk", "disk", "store"]
    assert len({r["path"] for r in results}) == 1
    assert max(r["wait"] for r in results) > 0.5
    assert_clean(cache.ModelCache(root, 10 * MiB))


def test_checksum_mismatch_is_clear_and_leaves_cache_clean(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    (store / "a.tar.sha256").write_text("0" * 64 + "  a.tar\n")
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    with pytest.raises(
        cache.ChecksumMismatchError, match=r"model 'a' .*sha256 mismatch \(expected 0000.*cache is unchanged"
    ):
        c.ensure("a", cache.LocalStore(store))
    assert c.models() == [] and c.get("a") is None
    assert_clean(c)


def test_expected_checksum_overrides_store(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    with pytest.raises(cache.ChecksumMismatchError):
        c.ensure("a", cache.LocalStore(store), expected_sha256="f" * 64)
    assert_clean(c)


def test_partial_download_is_discarded(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    with storeserver.serve(store) as srv:
        srv.truncate_to = 100_000
        with pytest.raises(cache.CacheError, match="model 'b'"):
            c.ensure("b", cache.store_from_uri(srv.url))
        assert c.models() == []
        assert_clean(c)
        srv.truncate_to = None  # the store recovers: the next attempt succeeds
        assert c.ensure("b", cache.store_from_uri(srv.url)).cold


def test_a_chunked_download_cut_off_is_a_store_error(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    """A store or proxy that dies mid-way through a chunked body: the store is unreachable
    (exit 4), not an unhandled IncompleteRead (exit 1, "a bug")."""
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    with storeserver.serve(store) as srv:
        srv.chunked_cut_to = 100_000
        with pytest.raises(cache.StoreUnreachableError, match="model 'b': download from .* broke off"):
            c.ensure("b", cache.store_from_uri(srv.url, timeout_s=5))
    assert c.models() == []
    assert_clean(c)


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("http://127.0.0.1:{port}", id="http-connection-refused"),
        pytest.param("{tmp}/no-such-mount", id="missing-mount"),
    ],
)
def test_store_unreachable_is_clear(tmp_path: pathlib.Path, uri: str) -> None:
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    store = cache.store_from_uri(uri.format(port=free_port(), tmp=tmp_path), timeout_s=5)
    with pytest.raises(cache.StoreUnreachableError, match="is not reachable"):
        c.ensure("a", store)
    assert_clean(c)


def test_model_not_in_store(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    with pytest.raises(cache.ModelNotFoundError, match="'nope' is not in the store"):
        c.ensure("nope", cache.LocalStore(store))
    with storeserver.serve(store) as srv, pytest.raises(cache.ModelNotFoundError, match="HTTP 404"):
        c.ensure("nope", cache.store_from_uri(srv.url))


def test_damaged_cached_model_is_fetched_again(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    s = cache.LocalStore(store)
    path = c.ensure("a", s).path
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"truncated")
    again = c.ensure("a", s)
    assert again.cold
    assert weights.stat().st_size == MiB


def repack(tmp_path: pathlib.Path, store: pathlib.Path, name: str) -> str:
    """A new version of ``name`` in the store (other weights); its archive's sha256."""
    cache.pack(make_model(tmp_path / "v2", name, MiB, fill=b"2"), store, name)
    return (store / f"{name}.tar.sha256").read_text().split()[0]


def test_a_cached_copy_of_another_archive_is_fetched_again(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    """EAT_INFER_EXPECTED_SHA256 names the archive to run: a cached copy of another one
    (an older version of the model) is a miss, replaced by the store's."""
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    s = cache.LocalStore(store)
    old = c.ensure("a", s)
    new_sha = repack(tmp_path, store, "a")
    with c.in_use("a"):  # as the runner asks: its own hold does not keep the old copy
        fetched = c.ensure("a", s, expected_sha256=new_sha.upper())
    assert fetched.cold and fetched.path == old.path
    assert (fetched.path / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == b"2" * MiB
    assert c.get("a").sha256 == new_sha  # type: ignore[union-attr]
    assert c.ensure("a", None, expected_sha256=new_sha).source == "disk"
    assert_clean(c)


def test_a_cached_copy_of_another_archive_that_is_being_read_is_not_replaced(tmp_path: pathlib.Path,
                                                                              store: pathlib.Path) -> None:
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    s = cache.LocalStore(store)
    c.ensure("a", s)
    old_sha = c.get("a").sha256  # type: ignore[union-attr]
    new_sha = repack(tmp_path, store, "a")
    other_pod = cache.ModelCache(c.root, 10 * MiB)  # another open file of the use lock: another reader
    with other_pod.in_use("a"), pytest.raises(cache.CacheError, match=f"sha256 {old_sha}, not the expected "
                                                                      f"{new_sha}, and another process is reading it"):
        c.ensure("a", s, expected_sha256=new_sha)
    assert c.get("a").sha256 == old_sha  # type: ignore[union-attr]
    assert_clean(c)
    assert c.ensure("a", s, expected_sha256=new_sha).cold  # once it is no longer read


def test_a_malformed_expected_sha256_is_refused_even_on_a_hit(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    c.ensure("a", cache.LocalStore(store))
    with pytest.raises(cache.CacheError, match="expected sha256 does not hold a sha256 digest"):
        c.ensure("a", None, expected_sha256="not-a-digest")


def test_leftovers_of_crashed_fetches_are_cleaned(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    """Before a fetch: this model's leftovers and other models' whose fetch is not in progress
    (its lock is free), not a download another process is making ("a.v2" is not "a")."""
    import filelock

    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    hex32 = "0123456789abcdef" * 2
    crashed = ("a.tar", f"a.{hex32}", f"a.evicted.{hex32}", "b.tar", f"c.{hex32}")  # download, unpacking, eviction
    in_progress = ("a.v2.tar", f"a.v2.{hex32}", f"x.evicted.{hex32}")  # the last: x's eviction or x.evicted's unpacking
    for name in crashed + in_progress:
        (c.root / "tmp" / name).write_bytes(b"half")
    (c.root / "tmp" / "notes.txt").write_text("not a fetch's")
    (c.root / "models" / "a").mkdir()  # no marker: never completed
    assert c.get("a") is None
    fetching = [filelock.FileLock(str(c.root / "locks" / f"{key}.lock")) for key in ("a.v2", "x.evicted")]
    with fetching[0], fetching[1]:
        assert c.ensure("a", cache.LocalStore(store)).cold
    assert sorted(p.name for p in (c.root / "tmp").iterdir()) == sorted((*in_progress, "notes.txt"))
    assert c.ensure("b", cache.LocalStore(store)).cold  # nothing holds a.v2's or x.evicted's lock now
    assert sorted(p.name for p in (c.root / "tmp").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("name", ["../etc", "/abs", "a b", "", "x" * 200, "org--model"])
def test_bad_model_names_are_refused(tmp_path: pathlib.Path, name: str) -> None:
    c = cache.ModelCache(tmp_path / "cache", MiB)
    with pytest.raises(cache.CacheError, match="invalid model name"):
        c.ensure(name, None)


def test_namespaced_model_name(tmp_path: pathlib.Path) -> None:
    s = tmp_path / "store"
    cache.pack(make_model(tmp_path, "sd", MiB // 4), s, "stabilityai/sd-2")
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    fetched = c.ensure("stabilityai/sd-2", cache.LocalStore(s))
    assert fetched.path.name == "stabilityai--sd-2"
    assert [m.name for m in c.models()] == ["stabilityai/sd-2"]


def test_record_load_feeds_the_agent(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    c.ensure("a", cache.LocalStore(store))
    c.record_load("a", 1.25)
    m = c.get("a")
    assert m is not None and m.last_load_s == 1.25 and m.bytes > MiB
    assert 0 < c.free_bytes() <= 10 * MiB - m.bytes


def test_a_load_recorded_after_eviction_leaves_nothing(tmp_path: pathlib.Path, store: pathlib.Path) -> None:
    """A load timed just before its model was evicted must not leave metadata that the next
    fetch of that model would inherit as its own load time."""
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB)
    c.ensure("a", cache.LocalStore(store))
    c.record_load("a", 99.0)
    assert c.evict("a")
    c.record_load("a", 1.25)  # the runner's report, after the eviction
    assert not (c.root / "meta" / "a.json").exists()
    c.ensure("a", cache.LocalStore(store))
    m = c.get("a")
    assert m is not None and m.last_load_s is None


def test_a_model_named_cache_does_not_take_the_cache_wide_lock(tmp_path: pathlib.Path) -> None:
    s = tmp_path / "store"
    cache.pack(make_model(tmp_path, "cache", MiB // 4), s, "cache")
    c = cache.ModelCache(tmp_path / "cache", 10 * MiB, lock_timeout_s=2)
    assert c.ensure("cache", cache.LocalStore(s)).cold  # placing it takes the cache-wide lock inside its own
