"""Object-store options of the batch's URIs, against a local S3-compatible server (moto's), without Ray.

:func:`moto_s3` is also what ``tests/test_ray_batch.py`` runs its S3 job against.
"""

from __future__ import annotations

import io
import logging
import pickle
import socket
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from osediff.batch import BatchConfig, BatchConfigError, validate
from osediff.batch.storage import Folder, Secret, collect_any, parse_storage_options, read_bytes, strip_query
from osediff.cli import main

BUCKET = "photos"
KEY_ENV, SECRET_ENV = "OSEDIFF_TEST_S3_KEY", "OSEDIFF_TEST_S3_SECRET"
CREDENTIALS = {"access_key": Secret("test-key"), "secret_key": Secret("test-secret")}  # moto takes any


@dataclass
class S3:
    endpoint: str  # http://127.0.0.1:PORT
    client: object  # boto3's, for setting up and checking objects

    def put(self, key: str, data: bytes, **kwargs) -> str:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=data, **kwargs)
        return f"s3://{BUCKET}/{key}"

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def keys(self, prefix: str) -> list[str]:
        listing = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))


@contextmanager
def moto_s3():
    """moto's S3 server on a free loopback port, with one empty bucket; any credentials are accepted."""
    pytest.importorskip("moto.server", reason="needs moto[server] (the test extra: pip install -e '.[test]')")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="test-key", aws_secret_access_key="test-secret")
        client.create_bucket(Bucket=BUCKET)
        yield S3(endpoint, client)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as server:
        yield server


def png(size=(12, 8), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_uri_query_is_a_set_of_storage_options_kept_on_every_file_found(s3):
    """``s3://bucket/lr/?endpoint_override=...`` is a folder on that server (the query once read as a
    glob and lost); the files found carry the query, so a worker reading one reaches the same store."""
    for name in ("b.png", "a.png", "notes.txt"):
        s3.put(f"query/lr/{name}", png() if name.endswith(".png") else b"text")
    query = f"?endpoint_override={s3.endpoint}&request_timeout=5"
    found = collect_any([f"s3://{BUCKET}/query/lr/{query}"], CREDENTIALS)
    assert found == [f"s3://{BUCKET}/query/lr/{name}{query}" for name in ("a.png", "b.png")]
    assert [strip_query(uri) for uri in found] == [f"s3://{BUCKET}/query/lr/a.png", f"s3://{BUCKET}/query/lr/b.png"]
    assert read_bytes(found[0], CREDENTIALS) == s3.get("query/lr/a.png")
    # a glob and a query together; a '?' without KEY=VALUE stays a glob character
    assert collect_any([f"s3://{BUCKET}/query/lr/?.png{query}"], CREDENTIALS) == found
    out = Folder(f"s3://{BUCKET}/query/sr/{query}", CREDENTIALS)
    assert out.write_text("x.txt", "hi\n") == f"s3://{BUCKET}/query/sr/x.txt" and s3.get("query/sr/x.txt") == b"hi\n"
    # what its manifest is written with
    assert out.options == {**CREDENTIALS, "endpoint_override": s3.endpoint, "request_timeout": 5.0}
    with pytest.raises(BatchConfigError, match="'endpoint_overide' is not an option of s3:// URIs"):
        collect_any([f"s3://{BUCKET}/query/lr/?endpoint_overide={s3.endpoint}"])
    with pytest.raises(BatchConfigError, match="secret_key cannot be given in a URI"):
        collect_any([f"s3://{BUCKET}/query/lr/?secret_key=hunter2"])


def test_job_options_open_the_store_with_credentials_read_from_the_environment(s3):
    s3.put("job/lr/a.png", png())
    environ = {KEY_ENV: "test-key", SECRET_ENV: "test-secret"}
    options = parse_storage_options([f"endpoint_override={s3.endpoint}", f"access_key_env={KEY_ENV}",
                                     f"secret_key_env={SECRET_ENV}", "request_timeout=5", "retry_attempts=1"],
                                    environ)
    assert options["access_key"] == "test-key" and isinstance(options["secret_key"], Secret)
    assert options["request_timeout"] == 5.0 and options["retry_attempts"] == 1
    assert "test-secret" not in repr(options)
    assert "test-secret" not in repr(BatchConfig([], "o", storage_options=options))
    options = pickle.loads(pickle.dumps(options))  # as the config travels to every replica
    assert options["secret_key"] == "test-secret"
    [uri] = collect_any([f"s3://{BUCKET}/job/lr/"], options)
    assert uri == f"s3://{BUCKET}/job/lr/a.png" and read_bytes(uri, options) == s3.get("job/lr/a.png")
    Folder(f"s3://{BUCKET}/job/sr", options).write_bytes("a.png", b"done")
    assert s3.get("job/sr/a.png") == b"done"


@pytest.mark.parametrize(("words", "message"), [
    (["endpoint_override"], "--storage-option expected KEY=VALUE, got 'endpoint_override'"),
    (["endpoint=http://x"], "--storage-option 'endpoint' is not a storage option; choose from"),
    (["anonymous=maybe"], "--storage-option anonymous must be true or false, got 'maybe'"),
    (["connect_timeout=soon"], "--storage-option connect_timeout must be a number, got 'soon'"),
    (["secret_key=hunter2"], "--storage-option secret_key: give the name of the environment variable that holds "
                             "it, as secret_key_env=NAME"),
    ([f"access_key_env={KEY_ENV}"], f"--storage-option access_key_env={KEY_ENV}: the environment variable "
                                    f"{KEY_ENV} is not set"),
])
def test_bad_storage_options_fail_in_one_line_naming_the_flag(words, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    flags = [arg for word in words for arg in ("--storage-option", word)]
    assert main(["upscale", f"s3://{BUCKET}/lr/", "-o", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and len(err.splitlines()) == 1, err


def test_storage_options_need_a_uri_of_their_store(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    local = BatchConfig([str(tmp_path / "a.png")], tmp_path / "out", storage_options={"region": "eu-west-1"})
    with pytest.raises(BatchConfigError, match="is for the s3:// and gs:// URIs that only the Ray engine reads"):
        validate(local)
    with pytest.raises(BatchConfigError, match="applies to s3:// and gs:// URIs, and no input or output is one"):
        validate(local, remote_ok=True)
    gcs = BatchConfig(["gs://b/lr/"], "gs://b/sr", storage_options={"region": "eu-west-1"})
    with pytest.raises(BatchConfigError, match="'region' is not an option of gs:// URIs"):
        validate(gcs, remote_ok=True)
    validate(BatchConfig(["s3://b/lr/"], "gs://b/sr", storage_options={"region": "eu-west-1"}), remote_ok=True)
