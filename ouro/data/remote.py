"""Shard folders on object storage (``s3://``, ``gs://``, ``az://``), through litdata's own clients.

Training streams chunks with litdata's ``StreamingDataset`` (remote URL + a local cache folder); this module
only moves the small files around it (``manifest.json``, ``tokenizer.json``, the prepare's unit records) and
uploads what ``ouro prepare`` writes, with litdata's ``FsProvider`` for the URL's scheme. Credentials and
endpoints come from where the providers' SDKs look: for S3 boto3's chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws/``, instance roles) and ``AWS_ENDPOINT_URL`` for an
S3-compatible server; for GCS Application Default Credentials; for Azure the ``AZURE_STORAGE_*`` variables.
Nothing here prints or stores a credential; errors name the URL and what to check.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from ouro.data import cache as ouro_cache
from ouro.errors import DataError

REMOTE_SCHEMES = ("s3://", "gs://", "az://", "azure://")
#: Schemes litdata can write to (``litdata.constants._SUPPORTED_PROVIDERS``).
WRITABLE_SCHEMES = ("s3://", "gs://")


def is_remote(path: str | Path) -> bool:
    """Whether ``path`` is an object-storage URL."""
    return str(path).startswith(REMOTE_SCHEMES)


def litdata_url(url: str) -> str:
    """The URL as litdata spells it (``az://`` is litdata's ``azure://``), without a trailing slash."""
    url = str(url).rstrip("/")
    return "azure://" + url[len("az://") :] if url.startswith("az://") else url


def join(url: str, name: str) -> str:
    return f"{litdata_url(url)}/{name}"


def cache_dir(url: str, root: str | Path | None = None) -> Path:
    """The local folder that caches a remote shard folder's chunks (one per URL).

    Default root: ``$OURO_CACHE/chunks`` (``~/.cache/ouro/chunks``), never the system temp dir.
    """
    base = Path(root).expanduser() if root else ouro_cache.cache_dir() / "chunks"
    digest = hashlib.sha256(litdata_url(url).encode()).hexdigest()[:16]
    return base / f"{Path(litdata_url(url)).name}-{digest}"


def _small_file_options(url: str) -> dict[str, Any]:
    """Few retries for the small files: a wrong endpoint fails in seconds, not after litdata's 1000 attempts."""
    if not litdata_url(url).startswith("s3://"):
        return {}
    import botocore.config  # optional dependency: boto3 comes with an S3 setup, not with ouro

    return {"config": botocore.config.Config(retries={"max_attempts": 3, "mode": "standard"})}


_PROVIDERS: dict[tuple[int, str, str], Any] = {}
#: What a client depends on: a change (a test, another profile) builds a new one.
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


def _provider(url: str):
    """litdata's FsProvider for the URL's scheme, one per process (building a boto3 client takes a while)."""
    # Start-up: litdata loads only when object storage is used (a local `ouro prepare` never needs it).
    from litdata.streaming.fs_provider import _get_fs_provider

    url = litdata_url(url)
    if not url.startswith(WRITABLE_SCHEMES):
        raise DataError(
            f"{url}: litdata reads but cannot write or list this storage; prepare into a local folder and copy "
            "it there with the provider's tool (e.g. azcopy), then train from the URL"
        )
    settings = [os.environ.get(k, "") for k in _CLIENT_ENV]
    key = (os.getpid(), url.split("://")[0], hashlib.sha256(repr(settings).encode()).hexdigest())
    if key not in _PROVIDERS:
        try:
            _PROVIDERS[key] = _get_fs_provider(url, _small_file_options(url))
        except Exception as err:
            raise DataError(explain(err, url)) from None
    return _PROVIDERS[key]


def allow_plain_http_endpoint() -> None:
    """Let litdata's chunk downloads reach an ``http://`` S3-compatible endpoint (MinIO, moto, a cluster gateway).

    litdata fetches chunks with obstore, which refuses plain HTTP unless its client options say ``allow_http``;
    litdata passes fixed options without it (botocore, used for everything else, has no such rule). Only an
    ``AWS_ENDPOINT_URL`` that starts with ``http://`` turns this on. Call before the loader workers start.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    if not endpoint.startswith("http://"):
        return
    from litdata.streaming import downloader  # start-up: see _provider

    # A private litdata setting that only some litdata versions have (optional library feature).
    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if isinstance(options, dict) and not options.get("allow_http"):
        downloader._OBSTORE_CLIENT_OPTIONS = {**options, "allow_http": True}


def explain(err: BaseException, url: str) -> str:
    """One line for a storage failure: which URL, what went wrong, what to check. Never a credential."""
    name = type(err).__name__
    code = ""
    response = getattr(err, "response", None)  # botocore's ClientError has one; other clients' errors do not
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    bucket = litdata_url(url).split("://", 1)[-1].split("/", 1)[0]
    where = _endpoint_note(url)
    if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError") or (
        "credential" in str(err).lower() and not code
    ):
        return (
            f"{url}: no credentials found for the storage; set them the provider's usual way (S3: "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials)"
        )
    if code in ("NoSuchBucket",) or name == "NoSuchBucket":
        return f"{url}: the bucket {bucket!r} does not exist{where}; check the URL (and AWS_ENDPOINT_URL)"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"):
        return f"{url}: access denied{where} ({code}); check the credentials and the bucket's permissions"
    if name in ("EndpointConnectionError", "ConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):
        return f"{url}: cannot reach the storage endpoint{where} ({name}); check AWS_ENDPOINT_URL and the network"
    return (
        f"{url}: storage request failed ({name}{': ' + code if code else ''}); check the URL and credentials"
    )


def _is_missing(err: BaseException) -> bool:
    response = getattr(err, "response", None)  # botocore's ClientError has one; other clients' errors do not
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    return code in ("404", "NoSuchKey", "NotFound") or isinstance(err, FileNotFoundError)


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of loaders that stream from object storage (a module-level function: it pickles)."""
    allow_plain_http_endpoint()


def check_bucket(url: str) -> None:
    """Raise the one-line error when the URL's bucket is missing or unreachable (S3; others pass)."""
    url = litdata_url(url)
    if not url.startswith("s3://"):
        return
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    try:
        _provider(url).client.client.head_bucket(Bucket=bucket)
    except DataError:
        raise
    except Exception as err:
        if _is_missing(err):
            raise DataError(
                f"{url}: the bucket {bucket!r} does not exist{_endpoint_note(url)}; check the URL (and "
                "AWS_ENDPOINT_URL)"
            ) from None
        raise DataError(explain(err, url)) from None


def _endpoint_note(url: str) -> str:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return f" at {endpoint}" if endpoint and litdata_url(url).startswith("s3://") else ""


def download(url: str, name: str, target: Path) -> Path | None:
    """Download ``url/name`` to ``target``; None when the object does not exist."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.part")
    try:
        _provider(url).download_file(join(url, name), str(partial))
    except DataError:
        raise
    except Exception as err:
        partial.unlink(missing_ok=True)
        if _is_missing(err):
            return None
        raise DataError(explain(err, url)) from None
    os.replace(partial, target)
    return target


def read_text(url: str, name: str, scratch: Path) -> str | None:
    """The text of ``url/name`` (None when missing), fetched through ``scratch``."""
    path = download(url, name, scratch / name.replace("/", "_"))
    if path is None:
        return None
    text = path.read_text()
    path.unlink()
    return text


def upload(local: Path, url: str, name: str) -> None:
    try:
        _provider(url).upload_file(str(local), join(url, name))
    except DataError:
        raise
    except Exception as err:
        raise DataError(explain(err, url)) from None


def list_names(url: str, prefix: str = "") -> list[str]:
    """Names (relative to ``url``) of the objects under ``url/prefix``."""
    provider = _provider(url)
    base = litdata_url(url).split("://", 1)[1]
    bucket, _, root = base.partition("/")
    key_prefix = f"{root}/{prefix}" if root else prefix
    names: list[str] = []
    try:
        if litdata_url(url).startswith("s3://"):
            paginator = provider.client.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=key_prefix):
                names += [obj["Key"] for obj in page.get("Contents", [])]
        else:
            names = [blob.name for blob in provider.client.bucket(bucket).list_blobs(prefix=key_prefix)]
    except Exception as err:
        raise DataError(explain(err, url)) from None
    strip = len(root) + 1 if root else 0
    return sorted(n[strip:] for n in names)


def delete(url: str, name: str) -> None:
    try:
        _provider(url).delete_file_or_directory(join(url, name))
    except DataError:
        raise
    except Exception as err:
        if not _is_missing(err):
            raise DataError(explain(err, url)) from None
