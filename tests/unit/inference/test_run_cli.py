"""``eat-infer run`` end to end on real processes: cache, rendezvous, image and report.

The first gang run on an empty cache is cold (every rank fetches from the store, under the
cache's lock: one download); the second is warm (disk hits). The report says so, with the
fetch, load, per-step and total times.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

pytest.importorskip("diffusers")

from PIL import Image

from .conftest import Finished, S3Store, eat_infer, launch


def run_gang(
    world: int, out: pathlib.Path, cache_dir: pathlib.Path, store: pathlib.Path, *extra: str
) -> dict[str, object]:
    args = eat_infer(
        "run", "--model", "tiny-sd", "--store", str(store), "--cache-dir", str(cache_dir), "--output", str(out),
        "--steps", "3", "--warmup-steps", "1", "--job", "ns/job-1", *extra,
    )  # fmt: skip
    done = launch(args, world)
    for f in done:
        assert f.returncode == 0, f"rank {f.rank} exited {f.returncode}:\n{f.stderr[-3000:]}"
    assert "image.png" in done[0].stdout
    return json.loads((out / "report.json").read_text())  # type: ignore[no-any-return]


def test_cold_then_warm_gang(tmp_path: pathlib.Path, tiny_store: pathlib.Path) -> None:
    cache_dir = tmp_path / "node-cache"  # both ranks on one "node": they share the cache
    cold = run_gang(2, tmp_path / "cold", cache_dir, tiny_store, "--mode", "displaced", "--save-array")
    assert cold["start"] == "cold" and cold["cache"] == "store"
    assert cold["mode"] == "displaced" and cold["world_size"] == 2 and cold["warmup_steps"] == 1
    assert cold["backend"] == "gloo" and cold["job"] == "ns/job-1"
    t = cold["timings_s"]
    assert isinstance(t, dict)
    assert t["fetch"] > 0 and t["load"] > 0 and len(t["steps"]) == 3 and t["total"] >= t["denoise"] > 0
    ranks = cold["ranks"]
    assert isinstance(ranks, list)
    # One download: one rank fetched, the other waited for it and then hit the disk.
    assert sorted(r["cache"] for r in ranks) == ["disk", "store"]
    assert cold["exchange_bytes_per_step"] > 0

    image = np.asarray(Image.open(tmp_path / "cold" / "image.png"))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert np.abs(np.load(tmp_path / "cold" / "image.npy") * 255 - image).max() <= 1.0

    warm = run_gang(2, tmp_path / "warm", cache_dir, tiny_store, "--mode", "displaced")
    assert warm["start"] == "warm" and warm["cache"] == "disk"
    assert warm["timings_s"]["fetch"] == 0.0  # type: ignore[index]
    assert [r["cache"] for r in warm["ranks"]] == ["disk", "disk"]  # type: ignore[union-attr]
    print(f"\ncold: fetch {t['fetch']:.3f} s, load {t['load']:.3f} s; warm: load {warm['timings_s']['load']:.3f} s")  # type: ignore[index]


def test_a_rank_that_cannot_get_the_model_fails_the_gang(tmp_path: pathlib.Path, tiny_store: pathlib.Path) -> None:
    """A checksum mismatch on one rank: it exits 4, the other exits 5 naming it, no hang."""
    bad_store = tmp_path / "bad-store"
    bad_store.mkdir()
    (bad_store / "tiny-sd.tar").write_bytes((tiny_store / "tiny-sd.tar").read_bytes())
    (bad_store / "tiny-sd.tar.sha256").write_text("0" * 64 + "\n")
    done = launch(
        eat_infer(
            "run", "--store", str(bad_store), "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "out")
        ),
        2,
        timeout_s=120,
    )
    codes = sorted(f.returncode for f in done)
    assert 4 in codes, [f.stderr[-2000:] for f in done]
    assert set(codes) <= {4, 5}
    assert all("sha256 mismatch" in f.stderr for f in done), [f.stderr[-2000:] for f in done]
    assert not (tmp_path / "out" / "image.png").exists()
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def run_one(tmp_path: pathlib.Path, store: pathlib.Path, *extra: str, **env: str) -> Finished:
    (done,) = launch(eat_infer("run", "--model", "tiny-sd", "--store", str(store), "--cache-dir",
                               str(tmp_path / "cache"), "--output", str(tmp_path / "out"), "--steps", "2", *extra),
                     1, **env)
    return done


def test_the_image_is_uploaded_to_the_jobs_s3_location(tmp_path: pathlib.Path, tiny_store: pathlib.Path,
                                                       s3_store: S3Store) -> None:
    s3 = s3_store.client()
    s3.make_bucket(bucket_name="eat-images")
    done = run_one(tmp_path, tiny_store, "--output-uri", "s3://eat-images/ns/castle.png", **s3_store.env())
    assert done.returncode == 0, done.stderr[-3000:]
    obj = s3.get_object(bucket_name="eat-images", object_name="ns/castle.png")
    try:
        assert obj.read() == (tmp_path / "out" / "image.png").read_bytes()  # the same image, byte for byte
        assert obj.headers["Content-Type"] == "image/png"
    finally:
        obj.close()
        obj.release_conn()


@pytest.mark.parametrize("where,secret,reason", [
    pytest.param("s3://no-such-bucket/x.png", None, "NoSuchBucket", id="missing-bucket"),
    pytest.param("s3://eat-failures/x.png", "wrong-secret", "SignatureDoesNotMatch", id="bad-credentials"),
])
def test_an_image_that_cannot_be_uploaded_fails_the_job(tmp_path: pathlib.Path, tiny_store: pathlib.Path,
                                                        s3_store: S3Store, where: str, secret: str | None,
                                                        reason: str) -> None:
    if secret:
        s3_store.client().make_bucket(bucket_name="eat-failures")
    done = run_one(tmp_path, tiny_store, "--output-uri", where, **s3_store.env(secret))
    assert done.returncode == 6, done.stderr[-3000:]  # EXIT_OUTPUT: status must not name an empty location
    assert reason in done.stderr and where in done.stderr, done.stderr[-3000:]


def test_an_output_uri_that_is_not_s3_is_bad_input(tmp_path: pathlib.Path, tiny_store: pathlib.Path) -> None:
    done = run_one(tmp_path, tiny_store, "--output-uri", "file:///tmp/x.png")
    assert done.returncode == 2 and "output_uri" in done.stderr, done.stderr[-3000:]


def test_another_pipeline_is_refused_as_bad_input_before_loading(tmp_path: pathlib.Path,
                                                                  tiny_model: pathlib.Path) -> None:
    """A pipeline whose inputs are not a text-to-image UNet's (here an SDXL refiner) cannot run:
    every rank says so and exits 2 (bad input) at once, instead of crashing in the first step
    with a TypeError (exit 1) and a retry."""
    import shutil

    from eat_inference import cache

    refiner = tmp_path / "tiny-refiner"
    shutil.copytree(tiny_model, refiner)
    index = json.loads((refiner / "model_index.json").read_text())
    (refiner / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionXLImg2ImgPipeline"}))
    cache.pack(refiner, tmp_path / "store", "tiny-refiner")
    done = launch(eat_infer("run", "--model", "tiny-refiner", "--store", str(tmp_path / "store"), "--cache-dir",
                            str(tmp_path / "cache"), "--output", str(tmp_path / "out")), 2, timeout_s=120)
    assert sorted(f.returncode for f in done)[0] == 2 and {f.returncode for f in done} <= {2, 5}
    assert all("holds a StableDiffusionXLImg2ImgPipeline; this runner runs StableDiffusionPipeline, "
               "StableDiffusionXLPipeline only" in f.stderr for f in done if f.returncode == 2)


def test_an_sdxl_gang_runs_end_to_end(tmp_path: pathlib.Path, tiny_xl_model: pathlib.Path) -> None:
    """SDXL through the whole runner: store, cache, rendezvous, two displaced row patches, image."""
    from eat_inference import cache

    cache.pack(tiny_xl_model, tmp_path / "store", "tiny-xl")
    args = eat_infer(
        "run", "--model", "tiny-xl", "--store", str(tmp_path / "store"), "--cache-dir", str(tmp_path / "cache"),
        "--output", str(tmp_path / "out"), "--steps", "3", "--warmup-steps", "1", "--mode", "displaced",
    )  # fmt: skip
    done = launch(args, 2)
    assert [f.returncode for f in done] == [0, 0], done[0].stderr[-3000:] + done[1].stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["world_size"] == 2 and report["mode"] == "displaced" and report["exchange_bytes_per_step"] > 0
    image = np.asarray(Image.open(tmp_path / "out" / "image.png"))
    assert image.shape == (64, 64, 3) and image.std() > 1.0  # an image, not a constant (NaN decodes to black)


def test_a_model_that_does_not_load_is_a_model_error_and_leaves_the_cache(tmp_path: pathlib.Path,
                                                                          tiny_model: pathlib.Path) -> None:
    """An archive missing the UNet's weights unpacks (it has model_index.json) but does not load:
    exit 4 (model unavailable, not a bug), and the copy is evicted so that the node agent stops
    reporting the node warm for it and the next attempt fetches it again."""
    import shutil

    from eat_inference import cache

    broken = tmp_path / "tiny-broken"
    shutil.copytree(tiny_model, broken)
    for weights in (broken / "unet").glob("diffusion_pytorch_model.*"):
        weights.unlink()
    cache.pack(broken, tmp_path / "store", "tiny-broken")
    (done,) = launch(eat_infer("run", "--model", "tiny-broken", "--store", str(tmp_path / "store"), "--cache-dir",
                               str(tmp_path / "cache"), "--output", str(tmp_path / "out")), 1, timeout_s=120)
    assert done.returncode == 4, done.stderr[-2000:]
    assert "model tiny-broken does not load from" in done.stderr
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_an_output_folder_that_cannot_be_written_is_an_output_error(tmp_path: pathlib.Path,
                                                                     tiny_store: pathlib.Path) -> None:
    """A read-only (or full) output volume: exit 6 with the reason, not exit 1 and a traceback."""
    (tmp_path / "out").write_text("a file where the output folder should be")
    done = run_one(tmp_path, tiny_store)
    assert done.returncode == 6, done.stderr[-2000:]
    assert "cannot write the image to" in done.stderr and "Traceback" not in done.stderr
