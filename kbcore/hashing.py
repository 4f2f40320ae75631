"""sha256 of a file, read in blocks: the one helper behind content hashes (ingest), converted-model checks
(embedding) and kernel-library checks (engine)."""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO


def stream_sha256(fh: BinaryIO, block: int = 1 << 20) -> str:
    """The hex sha256 of what is left to read from ``fh``."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: fh.read(block), b""):
        digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of the file at ``path``.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     (pathlib.Path(d) / "x").write_bytes(b"abc") and file_sha256(pathlib.Path(d) / "x")[:12]
    'ba7816bf8f01'
    """
    with open(path, "rb") as fh:
        return stream_sha256(fh)
