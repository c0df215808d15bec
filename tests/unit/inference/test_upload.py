"""Rank 0's upload to the job's ``outputLocation``: the object is the one the status names,
and a store or credentials endpoint that does not answer fails the upload in bounded time."""

from __future__ import annotations

import contextlib
import pathlib
import socket
import threading
from collections.abc import Iterator

import pydantic
import pytest

pytest.importorskip("minio")

from eat_inference import settings, upload

from .conftest import S3Store


@pytest.mark.parametrize("uri,bucket,key", [
    pytest.param("s3://eat-images/ns/castle.png", "eat-images", "ns/castle.png", id="plain"),
    pytest.param("s3://eat-images/renders/cat?v=2.png", "eat-images", "renders/cat?v=2.png", id="question-mark"),
    pytest.param("s3://eat-images/a#1.png", "eat-images", "a#1.png", id="hash"),
    pytest.param("s3://eat-images//lead.png", "eat-images", "/lead.png", id="leading-slash"),
    pytest.param("s3://eat-images/?x", "eat-images", "?x", id="only-a-query"),
])
def test_the_key_is_the_rest_of_the_uri_as_written(uri: str, bucket: str, key: str) -> None:
    """The operator reports outputLocation unchanged: every character after the bucket is the key."""
    cfg = settings.InferSettings(output_uri=uri)  # the settings accept it: the upload must too
    assert upload.split_s3_uri(cfg.output_uri) == (bucket, key)  # type: ignore[arg-type]


@pytest.mark.parametrize("uri", ["s3://eat-images/", "s3:///key.png", "s3://eat-images", "http://eat-images/k"])
def test_an_output_uri_without_bucket_or_key_is_refused_when_settings_are_read(uri: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="output_uri"):
        settings.InferSettings(output_uri=uri)
    with pytest.raises(ValueError, match="is not s3://<bucket>/<key>"):
        upload.split_s3_uri(uri)


def test_uris_that_differ_after_a_question_mark_or_hash_are_different_objects(
    tmp_path: pathlib.Path, s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two jobs whose locations differ only after '?' or '#' must not overwrite each other."""
    for name, value in s3_store.env().items():
        monkeypatch.setenv(name, value)
    s3 = s3_store.client()
    s3.make_bucket(bucket_name="eat-keys")
    keys = ["renders/cat", "renders/cat?v=2.png", "renders/cat#1.png"]
    for key in keys:
        image = tmp_path / "image.png"
        image.write_bytes(key.encode())
        upload.put_image(settings.InferSettings(output_uri=f"s3://eat-keys/{key}"), image)
    for key in keys:
        obj = s3.get_object(bucket_name="eat-keys", object_name=key)
        try:
            assert obj.read() == key.encode()
        finally:
            obj.close()
            obj.release_conn()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint that accepts connections and never answers."""
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept_forever() -> None:
        with contextlib.suppress(OSError):  # until the listening socket is shut down
            while True:
                held.append(srv.accept()[0])

    threading.Thread(target=accept_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/credentials"
    srv.shutdown(socket.SHUT_RDWR)
    srv.close()
    for conn in held:
        conn.close()


def test_a_credentials_endpoint_that_never_answers_fails_the_upload_in_bounded_time(
    tmp_path: pathlib.Path, silent_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No AWS_* keys: credentials come from the pod's role. An endpoint that hangs must give
    up within the store's timeout (and a retry), an output error, not block rank 0 forever."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", silent_endpoint)
    image = tmp_path / "image.png"
    image.write_bytes(b"png")
    cfg = settings.InferSettings(output_uri="s3://eat-images/k.png", s3_endpoint="http://127.0.0.1:9", s3_timeout_s=1)
    outcome: list[BaseException | None] = []

    def put() -> None:
        try:
            upload.put_image(cfg, image)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - reported to the test's thread
            outcome.append(e)

    worker = threading.Thread(target=put, daemon=True)
    worker.start()
    worker.join(timeout=15)
    assert outcome, "put_image still blocked on the credentials endpoint after 15 s"
    assert isinstance(outcome[0], upload.OutputError) and "/credentials" in str(outcome[0]), outcome[0]
