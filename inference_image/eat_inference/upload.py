"""The image to the job's ``outputLocation``: ``s3://<bucket>/<key>`` on any S3-compatible store.

Rank 0 always writes ``image.png`` to the output volume first; with an output URI it then
puts the same file to the object store through the MinIO client (AWS S3, MinIO, Ceph RGW, any
store that speaks S3). Credentials come from the standard ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``) variables, else from the pod's IAM role.
A failed upload is an :class:`OutputError` (exit code 6): the job's status must never name a
location that holds no image.
"""

from __future__ import annotations

import logging
import pathlib
import time
import urllib.parse

import urllib3
from minio import Minio
from minio.credentials import ChainedProvider, EnvAWSProvider, IamAwsProvider
from minio.error import MinioException

from eat_inference import settings

log = logging.getLogger(__name__)


class OutputError(Exception):
    """The image could not be stored where the job asked."""


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key.png`` → ``("bucket", "some/key.png")``.

    Split literally, not as a URL: the key is everything after the bucket's ``/``, ``?``,
    ``#`` and further ``/`` included, so that the object is the one the job's status names.
    """
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        raise ValueError(f"output URI {uri!r} is not s3://<bucket>/<key>")
    return bucket, key


def put_image(cfg: settings.InferSettings, image: pathlib.Path) -> None:
    """Upload ``image`` to ``cfg.output_uri``; :class:`OutputError` with the store's reason if not."""
    assert cfg.output_uri is not None
    bucket, key = split_s3_uri(cfg.output_uri)
    t0 = time.perf_counter()
    try:
        _client(cfg).fput_object(bucket_name=bucket, object_name=key, file_path=str(image), content_type="image/png")
    except MinioException as e:
        raise OutputError(f"uploading the image to {cfg.output_uri} via {cfg.s3_endpoint}: {e}") from e
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:  # unreachable store, no credentials
        raise OutputError(f"uploading the image to {cfg.output_uri}: {cfg.s3_endpoint} "
                          f"could not be used: {type(e).__name__}: {e}") from e
    log.info("uploaded %s to %s in %.2f s", image.name, cfg.output_uri, time.perf_counter() - t0)


def _client(cfg: settings.InferSettings) -> Minio:
    endpoint = urllib.parse.urlsplit(cfg.s3_endpoint)
    # The IAM role's metadata endpoint gets the store's timeout too: minio's default client
    # has none, and an endpoint that accepts but never answers would block rank 0 forever.
    iam = IamAwsProvider(http_client=_http_client(cfg, retries=1))
    return Minio(endpoint=endpoint.netloc, secure=endpoint.scheme == "https", region=cfg.s3_region,
                 credentials=ChainedProvider([EnvAWSProvider(), iam]), http_client=_http_client(cfg, retries=3))


def _http_client(cfg: settings.InferSettings, retries: int) -> urllib3.PoolManager:
    timeout = urllib3.Timeout(connect=cfg.s3_timeout_s, read=cfg.s3_timeout_s)
    retry = urllib3.Retry(total=retries, backoff_factor=0.5, status_forcelist=(500, 502, 503, 504))
    return urllib3.PoolManager(timeout=timeout, retries=retry)
