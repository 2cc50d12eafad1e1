"""Durable file writes shared by the engine's checkpoint cache and the runtime's output files.

A base module like `halo.errors`: both layers write a temporary file, fsync it and rename it over
the target; what makes the rename itself survive a machine crash is an fsync of the folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def sync_directory(folder: Path) -> None:
    """fsync `folder` so a rename into it survives a crash (best effort: some filesystems refuse it;
    the rename is atomic either way)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
