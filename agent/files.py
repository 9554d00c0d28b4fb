"""Files the daemons keep: private state directories and atomic writes.

A state directory holds keys, tokens' hashes, shards and the registry: it is made 0700
whatever the umask, and files written here are 0600 (mkstemp's mode), written to a temp
file in the same directory, fsynced and renamed, so a crash leaves the old file or the
new one, never half of either.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Make `path` (and missing parents) and keep it to its owner: 0700."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty if missing; either way leave it 0600."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    os.close(fd)
    os.chmod(path, PRIVATE_FILE)
    return path


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` (0600) in one rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
