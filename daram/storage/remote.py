"""Stores on object storage (any fsspec URL: s3://, gs://, an S3-compatible endpoint): opening, retries, and the
one write that must be atomic, create-if-absent.

- **Opening.** ``store.options`` (fsspec storage options, e.g. ``endpoint_url``, ``profile``) go to the file
  system; everything else comes from its usual environment (for S3: ``AWS_ENDPOINT_URL``,
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws``). Missing credentials are one
  line that names what to set.
- **Retries.** :class:`RetryingStore` retries transient errors (5xx, timeouts, resets) with jittered exponential
  backoff. A request that failed may still have happened (the answer was lost): plain writes are idempotent,
  and an exclusive create that then meets its own object counts as done (records carry a unique token).
- **Never torn.** An S3 or GCS object appears whole or not at all (a failed upload leaves nothing); locally
  :func:`create_exclusive` links a finished temporary file into place.
- **Exclusive create.** S3 ``PutObject`` with ``If-None-Match: *`` (a 412 when the key exists), ``O_EXCL``
  via ``link`` on local disk. A backend without such a primitive works for one writer; :class:`NoAtomicCreate`
  names it where a second writer appears.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import FsspecStore, LocalStore, MemoryStore, WrapperStore

from daram.errors import DaramError

RETRIES = 8  # attempts after the first: with the backoff below, about 10 s of trying before an error surfaces
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.05, 4.0
# Not transient: the answer is the answer (no such key, it exists already, not allowed, not a directory).
PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
CREDENTIALS_HINT = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or store.options.profile",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or store.options.token",
    "gcs": "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or store.options.token",
}


LISTING_CACHES = ("s3", "s3a", "gs", "gcs")  # file systems that cache directory listings unless told not to


class NoAtomicCreate(DaramError):
    """The store's backend cannot create a key only if it is absent: safe for one writer only."""


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: a timeout, a reset or refused connection, a server error (5xx, throttling)."""
    if isinstance(exc, PERMANENT):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError, asyncio.TimeoutError)):
        return True
    name = type(exc).__name__
    if name in ("ClientConnectorError", "ServerDisconnectedError", "ClientPayloadError", "ClientOSError",
                "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError"):
        return True
    if isinstance(exc, OSError):  # s3fs turns an HTTP error into an OSError with the service's message
        text = str(exc)
        return exc.errno in (errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET) or any(
            word in text for word in ("500", "502", "503", "504", "Internal", "SlowDown", "ServiceUnavailable", "Throttl")
        )
    return False


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (0-based): doubling from BACKOFF_FIRST_S, jittered so that many
    clients do not retry in step."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt) * random.uniform(0.5, 1.5)


class RetryingStore(WrapperStore[Store]):
    """Retries each request of the store underneath on transient errors; counts requests and bytes."""

    def __init__(self, store: Store, retries: int = RETRIES) -> None:
        super().__init__(store)
        self.retries = retries
        self.requests = 0
        self.bytes_read = 0
        self.bytes_written = 0
        self.retried = 0

    def _with_store(self, store: Store) -> "RetryingStore":
        return type(self)(store, self.retries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryingStore) and self._store == other._store

    def __hash__(self) -> int:
        return hash(self._store)

    async def _call(self, make, *args):
        for attempt in range(self.retries + 1):
            self.requests += 1
            try:
                return await make(*args)
            except Exception as exc:
                if attempt == self.retries or not is_transient(exc):
                    raise
                self.retried += 1
                await asyncio.sleep(backoff(attempt))

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        buf = await self._call(self._store.get, key, prototype, byte_range)
        self.bytes_read += 0 if buf is None else len(buf)
        return buf

    async def get_partial_values(self, prototype, key_ranges):
        return await self._call(self._store.get_partial_values, prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        return await self._call(self._store.exists, key)

    async def set(self, key: str, value: Buffer) -> None:
        self.bytes_written += len(value)
        await self._call(self._store.set, key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        try:
            await self.create_exclusive(key, value.to_bytes())
        except NoAtomicCreate:  # zarr's own (check, then write): what this backend offers
            await self._call(self._store.set_if_not_exists, key, value)

    async def delete(self, key: str) -> None:
        await self._call(self._store.delete, key)

    async def delete_dir(self, prefix: str) -> None:
        await self._call(self._store.delete_dir, prefix)

    async def getsize(self, key: str) -> int:
        return await self._call(self._store.getsize, key)

    async def _listed(self, lister, prefix: str) -> list[str]:
        async def collect() -> list[str]:
            return [k async for k in lister(prefix)]

        return await self._call(collect)

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in await self._listed(self._store.list_prefix, prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        for key in await self._listed(self._store.list_dir, prefix):
            yield key

    async def create_exclusive(self, key: str, value: bytes) -> bool:
        """Create ``key`` holding ``value`` only if it is absent; True when this call created it. ``value`` must be
        unique to this writer: after a failure that may have happened (the answer lost), the object found is
        compared with it to learn whether the earlier attempt was ours."""
        for attempt in range(self.retries + 1):
            self.requests += 1
            try:
                created = await create_exclusive(self._store, key, value)
            except Exception as exc:
                if attempt == self.retries or not is_transient(exc):
                    raise
                self.retried += 1
                await asyncio.sleep(backoff(attempt))
                continue
            if created or attempt == 0:
                self.bytes_written += len(value) if created else 0
                return created
            found = await self.get(key, default_buffer_prototype())  # an earlier attempt may have landed
            return found is not None and found.to_bytes() == value
        raise AssertionError("unreachable")


def innermost(store: Store) -> Store:
    while isinstance(store, WrapperStore):
        store = store._store
    return store


def backend_name(store: Store) -> str:
    inner = innermost(store)
    if isinstance(inner, FsspecStore):
        fs = getattr(inner.fs, "sync_fs", inner.fs)  # zarr wraps a synchronous file system to make it async
        protocol = fs.protocol
        return f"{type(fs).__name__} ({protocol if isinstance(protocol, str) else protocol[0]}://)"
    return type(inner).__name__


# fsspec file systems whose ``pipe_file(mode="create")`` is atomic: S3's PutObject with If-None-Match: *
# (answered 412 when the key exists), and memory:// (one process, one dict). gcsfs is not known to be.
ATOMIC_CREATE_PROTOCOLS = {"s3", "s3a", "memory"}


def has_atomic_create(store: Store) -> bool:
    inner = innermost(store)
    if isinstance(inner, (LocalStore, MemoryStore)):
        return True
    return isinstance(inner, FsspecStore) and _creates_atomically(inner)


def _creates_atomically(store: FsspecStore) -> bool:
    protocol = store.fs.protocol
    return bool(ATOMIC_CREATE_PROTOCOLS & set([protocol] if isinstance(protocol, str) else protocol))


async def create_exclusive(store: Store, key: str, value: bytes) -> bool:
    """The backend's own create-if-absent; True when this call created ``key``. Wrappers pass it down."""
    if hasattr(store, "create_exclusive"):
        return await store.create_exclusive(key, value)
    if isinstance(store, WrapperStore):
        return await create_exclusive(store._store, key, value)
    if isinstance(store, LocalStore):
        return _link_into_place(os.path.join(str(store.root), key), value)
    if isinstance(store, MemoryStore):  # one event loop: setdefault is atomic
        buf = default_buffer_prototype().buffer.from_bytes(value)
        await store.set_if_not_exists(key, buf)
        return (await store.get(key, default_buffer_prototype())) is buf
    if isinstance(store, FsspecStore) and _creates_atomically(store):
        try:
            await store.fs._pipe_file(f"{store.path}/{key}", value, mode="create")  # S3: If-None-Match: *
        except FileExistsError:  # S3: 412 Precondition Failed
            return False
        return True
    raise NoAtomicCreate(f"{backend_name(store)} cannot create a key only if it is absent")


def _link_into_place(path: str, value: bytes) -> bool:
    """O_EXCL semantics without a torn file: write a temporary file whole, then link it to its name (fails if
    the name exists)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{uuid.uuid4().hex}.partial"
    with open(temporary, "wb") as f:
        f.write(value)
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)


def open_remote(url: str, read_only: bool, options: Mapping[str, Any] | None = None) -> RetryingStore:
    """A zarr store on any fsspec URL, with retries; one line naming the package or credentials it lacks."""
    scheme = url.split("://", 1)[0]
    # a cached listing would hide what other machines wrote since (claims, completion records): list afresh
    defaults = {"use_listings_cache": False} if scheme in LISTING_CACHES else {}
    try:
        inner = FsspecStore.from_url(url, storage_options={**defaults, **(options or {})}, read_only=read_only)
    except ImportError as exc:
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(scheme)
        hint = f"pip install 'daram[{extra}]'" if extra else f"install the fsspec filesystem for {scheme}://"
        raise DaramError(f"{url}: {scheme}:// stores need a package that is not installed ({exc}); {hint}") from None
    return RetryingStore(inner)


def explain_access_error(url: str, exc: BaseException) -> DaramError | None:
    """One line for a failure a user fixes outside daram (credentials, a missing bucket); None for others."""
    scheme = url.split("://", 1)[0]
    name, text = type(exc).__name__, str(exc)
    if name in ("NoCredentialsError", "PartialCredentialsError") or "Unable to locate credentials" in text:
        hint = CREDENTIALS_HINT.get(scheme, "configure the file system's credentials")
        return DaramError(f"{url}: no credentials for {scheme}://; {hint}")
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        hint = CREDENTIALS_HINT.get(scheme, "check the file system's credentials")
        return DaramError(f"{url}: access denied ({text.splitlines()[0][:200]}); {hint}")
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return DaramError(f"{url}: the bucket does not exist; create it first (daram does not create buckets)")
    return None
