"""On-disk cache of decoded datasets, keyed by source path, a cheap fingerprint and image size."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch

CACHE_FORMAT = 1  # bump when the cached content changes meaning


def cache_root() -> Path:
    """gradscope's cache folder: $GRADSCOPE_CACHE, else ~/.cache/gradscope."""
    configured = os.environ.get("GRADSCOPE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "gradscope"


def cache_path(source: Path, fingerprint: tuple, image_size: tuple[int, int] | None) -> Path:
    """The cache file for the decoded arrays of `source` in the state `fingerprint` describes."""
    key = json.dumps([CACHE_FORMAT, str(source.resolve()), list(fingerprint), image_size])
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", source.resolve().name) or "dataset"
    return cache_root() / "decoded" / f"{readable}-{digest}.pt"


def load_cached(path: Path) -> dict | None:
    """The arrays cached at `path`, or None if there is no cache file (or it is unreadable)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable file: say so, then decode again
        warnings.warn(
            f"ignoring unreadable cache file {path} ({error}); decoding again", stacklevel=2
        )
        return None


def save_cached(path: Path, arrays: dict) -> None:
    """Write `arrays` to `path` atomically (temp file + rename), so no broken cache can remain."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    except OSError as error:
        warnings.warn(
            f"cannot write the dataset cache {path} ({error}); next run decodes again", stacklevel=2
        )
        return
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(arrays, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except OSError as error:
        warnings.warn(
            f"cannot write the dataset cache {path} ({error}); next run decodes again", stacklevel=2
        )
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
