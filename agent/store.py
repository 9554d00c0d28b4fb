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

log = logging.getLogger(__name__)
DEFAULT_QUOTA = 1 << 30


class StoreError(Exception):
    """Base: `kind` maps to a gRPC status in the servicer."""

    kind = "internal"


class DigestMismatch(StoreError):
    kind = "data_loss"


class QuotaExceeded(StoreError):
    kind = "resource_exhausted"


class UnknownShard(StoreError):
    kind = "not_found"


class BadRequest(StoreError):
    kind = "invalid_argument"


def check_digest(sha256: str) -> str:
    try:
        return names.check_digest(sha256)
    except names.InvalidName as exc:
        raise BadRequest(str(exc)) from None


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
        self.reserve(sha256, size)
        target = self.path(sha256)
        received = sum(len(c) for c in chunks)
        if received != size:
            raise DigestMismatch(f"upload truncated: {received} of {size} bytes arrived; "
                                 f"nothing stored")
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise DigestMismatch(f"upload corrupt: content hashes to "
                                 f"{digest.hexdigest()[:12]}..., declared {sha256[:12]}...; "
                                 f"nothing stored")
        if target.exists():
            return target
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

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
