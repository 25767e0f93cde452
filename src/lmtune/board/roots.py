"""The folders the board may read: the runs root and the data roots, and nothing outside them.

Every path a request names goes through `inside()`: relative only, no `..`, and after resolving
symlinks still under its root. A request can therefore never read `/etc/passwd`, a sibling
folder, or a file a symlink in a run directory points out to.
"""

from __future__ import annotations

import contextlib
from pathlib import Path, PurePosixPath


class PathRefused(Exception):
    """A path outside the configured roots (HTTP 403) or one that does not exist there (404)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def inside(root: Path, relative: str, *, must_exist: bool = True) -> Path:
    """`relative` resolved under `root`; PathRefused when it would leave the root."""
    if not relative or "\x00" in relative or "\\" in relative:
        raise PathRefused(f"invalid path {relative!r}", 400)
    parts = PurePosixPath(relative).parts
    if PurePosixPath(relative).is_absolute() or ".." in parts:
        raise PathRefused(f"path {relative!r} must be relative to the root, without '..'", 403)
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and not target.is_relative_to(base):
        raise PathRefused(f"path {relative!r} leads outside the root", 403)
    if must_exist and not target.exists():
        raise PathRefused(f"no such file or folder: {relative}", 404)
    return target


def relative_to_root(root: Path, path: Path) -> str:
    """The POSIX path of `path` inside `root` (what the API names runs by)."""
    return path.resolve().relative_to(root.resolve()).as_posix()


def within_any(roots: list[Path], path: str) -> Path:
    """A data file inside one of `roots`: an absolute path (picked in the form), or a path relative
    to a data root (e.g. a rerun's config written where the data root was the working folder)."""
    candidate = Path(path)
    if not candidate.is_absolute():
        for root in roots:
            with contextlib.suppress(PathRefused):
                found = inside(root, path)
                if found.is_file():
                    return found
        raise PathRefused(
            f"data file {path} is not in a data root ({', '.join(map(str, roots)) or 'none'})", 403
        )
    resolved = candidate.resolve()
    for root in roots:
        if resolved.is_relative_to(root.resolve()):
            if not resolved.is_file():
                raise PathRefused(f"no such data file: {path}", 404)
            return resolved
    raise PathRefused(f"data file {path} is outside the data roots", 403)
