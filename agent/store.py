"""Shards on disk: content-addressed by sha256, written atomically, verified, under a quota.

Layout: STATE/shards/<sha256>.tflite. An upload is written to a temp file in the same
directory, its digest checked, fsynced and renamed into place, so a crash or a bad upload
never leaves a shard file that is not exactly what its name says. Files are verified again
on load; a corrupt one is deleted and reported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from layerfleet.agent import files, names
from layerfleet.agent.errors import DataLoss, InvalidArgument, NotFound, ResourceExhausted

log = logging.getLogger(__name__)
DEFAULT_QUOTA = 1 << 30


class DigestMismatch(DataLoss):
    """Bytes that are not what their digest says."""


class QuotaExceeded(ResourceExhausted):
    """A shard that does not fit the store's quota."""


class UnknownShard(NotFound):
    """A shard this agent does not hold."""


class BadRequest(InvalidArgument):
    """An upload that cannot be a shard."""


def check_digest(sha256: str) -> str:
    return names.check_digest(sha256)


class ShardStore:
    def __init__(self, root: Path, quota_bytes: int = DEFAULT_QUOTA) -> None:
        self.root = files.private_dir(Path(root) / "shards")
        self.quota_bytes = quota_bytes
        for stale in self.root.glob(".upload-*"):  # a crash mid-upload
            stale.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / f"{check_digest(sha256)}.tflite"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def digests(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.tflite"))

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.tflite"))

    def reserve(self, sha256: str, size: int) -> None:
        """Refuse early, before any byte is received, when the shard cannot fit."""
        check_digest(sha256)
        if size <= 0:
            raise BadRequest(f"shard size {size} must be positive")
        if self.has(sha256):
            return
        free = self.quota_bytes - self.used_bytes()
        if size > free:
            raise QuotaExceeded(f"shard of {size} bytes does not fit: {free} of "
                                f"{self.quota_bytes} quota bytes free (--quota-bytes)")

    def put(self, sha256: str, size: int, chunks: list[bytes]) -> Path:
        """Write the received chunks as shard `sha256` if they are exactly it."""
        upload = self.upload(sha256, size)
        try:
            for chunk in chunks:
                upload.write(chunk)
            return upload.commit()
        finally:
            upload.discard()

    def upload(self, sha256: str, size: int) -> Upload:
        """A shard arriving in pieces, written to disk as they come (an upload holds no
        memory however big the shard is); refused before any byte when it cannot fit."""
        self.reserve(sha256, size)
        return Upload(self, sha256, size)

    def load(self, sha256: str) -> bytes:
        """The shard's bytes, verified; a corrupt file is removed and reported."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UnknownShard(f"shard {sha256[:12]} is not on this agent; upload it "
                               f"first") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            path.unlink(missing_ok=True)
            log.error("shard %s was corrupt on disk and has been removed", sha256[:12])
            raise DigestMismatch(f"shard {sha256[:12]} was corrupt on disk and was removed; "
                                 f"upload it again")
        return data

    def remove(self, sha256: str) -> None:
        path = self.path(sha256)
        if not path.exists():
            raise UnknownShard(f"shard {sha256[:12]} is not on this agent")
        path.unlink()


class Upload:
    """One shard being received: a temp file in the store's directory, hashed as it grows,
    renamed into place only if it is exactly the declared bytes (`commit`); `discard`
    removes whatever is left (always call it, in a finally)."""

    def __init__(self, store: ShardStore, sha256: str, size: int) -> None:
        self.store = store
        self.sha256 = sha256
        self.size = size
        self.received = 0
        self._digest = hashlib.sha256()
        fd, self._tmp = tempfile.mkstemp(prefix=".upload-", dir=store.root)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.received > self.size:
            raise DigestMismatch(f"upload longer than the declared {self.size} bytes; nothing "
                                 f"stored")
        self._digest.update(chunk)
        self._file.write(chunk)

    def commit(self) -> Path:
        if self.received != self.size:
            raise DigestMismatch(f"upload truncated: {self.received} of {self.size} bytes "
                                 f"arrived; nothing stored")
        if self._digest.hexdigest() != self.sha256:
            raise DigestMismatch(f"upload corrupt: content hashes to "
                                 f"{self._digest.hexdigest()[:12]}..., declared "
                                 f"{self.sha256[:12]}...; nothing stored")
        target = self.store.path(self.sha256)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if not target.exists():
            os.replace(self._tmp, target)
        return target

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        Path(self._tmp).unlink(missing_ok=True)
