"""Small file helpers that several layers share."""

import hashlib

__all__ = ["file_sha256"]


def file_sha256(path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks (model files are large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
