"""One stamp for every watched file (the settings file, the API key file, the web config).

A file counts as changed when its modification time, inode or size changes: a Kubernetes Secret or
ConfigMap update swaps a symlink (a new inode, perhaps the same mtime), an editor may rewrite in
place within the clock's resolution (the same mtime, another size).
"""

from __future__ import annotations

from pathlib import Path

FileStamp = tuple[int, int, int]


def file_stamp(path: Path | None) -> FileStamp | None:
    """(mtime_ns, inode, size) of the file, or None when there is none or it cannot be read."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_ino, stat.st_size)
