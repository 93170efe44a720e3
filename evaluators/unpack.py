"""Unpack an artifact tar.gz written by untrusted code: regular files and folders only, inside, bounded."""

from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath

MB = 1024 * 1024
MAX_BYTES = 64 * MB
MAX_MEMBERS = 10_000
_HEADERS = 2 * 512 * MAX_MEMBERS  # tar headers and padding on top of the file bytes


class UnsafeArtifact(ValueError):
    """The archive is not something we extract: a path outside, a link, a device, too big, corrupt."""


def unpack_artifact(data: bytes, dest: Path, *, max_bytes: int = MAX_BYTES) -> list[str]:
    """Extract into dest (which must exist); returns the file names. Every entry is checked before
    anything is written, so a refused archive leaves dest as it was."""
    tar_bytes = _gunzip(data, max_bytes + _HEADERS)
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            members = tar.getmembers()
            _check(members, max_bytes)
            files = []
            for member in members:
                target = dest.joinpath(*PurePosixPath(member.name).parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, open(target, "wb") as out:
                    out.write(source.read())
                files.append(member.name)
            return files
    except (tarfile.TarError, OSError) as exc:
        raise UnsafeArtifact(f"unreadable artifact archive: {exc}") from None


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress at most `limit` bytes: a small archive must not expand into gigabytes."""
    inflate = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        out = inflate.decompress(data, limit + 1)
    except zlib.error as exc:
        raise UnsafeArtifact(f"artifact is not a gzip archive: {exc}") from None
    if len(out) > limit:
        raise UnsafeArtifact(f"artifact expands past {limit // MB} MB")
    if not inflate.eof:
        raise UnsafeArtifact("artifact archive is truncated")
    return out


def _check(members: list[tarfile.TarInfo], max_bytes: int) -> None:
    if len(members) > MAX_MEMBERS:
        raise UnsafeArtifact(f"artifact has {len(members)} entries, more than {MAX_MEMBERS}")
    total = 0
    for member in members:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or "\\" in member.name:
            raise UnsafeArtifact(f"artifact entry {member.name!r} points outside the artifact")
        if not (member.isfile() or member.isdir()):
            raise UnsafeArtifact(f"artifact entry {member.name!r} is a link or device, not a plain file")
        if member.isfile() and not path.parts:
            raise UnsafeArtifact(f"artifact entry {member.name!r} has no file name")
        total += member.size
        if total > max_bytes:
            raise UnsafeArtifact(f"artifact holds more than {max_bytes // MB} MB")
