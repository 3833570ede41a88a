"""Plain values for JSON/YAML, and safe output files.

Every file hf_llc writes for the user (``--output`` JSON, results, plots, model cards) and
every checkpoint file goes through :func:`atomic_write`: the bytes are written to a hidden
temporary file next to the target (``.NAME.XXXX.tmp``, a unique name), flushed to disk and
renamed over the target, and the folder is flushed, so a reader never sees half a file. What
the target is decides what happens:

- a symbolic link is followed: its final target is written, the link stays a link;
- a FIFO or a character device (``/dev/null``, ``/dev/stdout``) is written in place, as a
  shell redirection would (it is never replaced by a regular file);
- a directory, a socket or a block device is refused (``OSError``), as is a regular file
  without write permission (a read-only file is not silently replaced, even by root).

:func:`check_output_path` makes the same checks before any work, so a run is refused before
sampling rather than after it; errors name the flag or argument, the path and the fix.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

#: Suffix of the temporary files of :func:`atomic_write` (``.NAME.XXXX.tmp``).
TEMP_SUFFIX = ".tmp"

_FULL = {errno.ENOSPC: "disk full", errno.EFBIG: "file too large", errno.EDQUOT: "disk quota"}


def to_plain(value: Any) -> Any:
    """JSON/YAML-safe Python values: numpy/torch → float/int/list, non-finite → None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays and scalars, torch tensors
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    return str(value)


#: Version of the result files' layout (``"format_version"``); bumped when a reader of this
#: version could misread a newer file.
FORMAT_VERSION = 1
#: The kinds of result file, by the ``"format"`` key they carry.
FORMAT_KINDS = {
    "llc_result": "hf_llc.llc_result",
    "calibration_result": "hf_llc.calibration_result",
    "validation_report": "hf_llc.validation_report",
    "trajectory": "hf_llc.trajectory",
}


def format_header(kind: str) -> dict:
    """``{"format": "hf_llc.<kind>", "format_version": FORMAT_VERSION}``: the first keys of a
    result file of ``kind`` (``"llc_result"``, ``"calibration_result"``,
    ``"validation_report"``, ``"trajectory"``), so that a reader knows what it holds and which
    layout."""
    return {"format": _format_name(kind), "format_version": FORMAT_VERSION}


def check_format(data: Any, kind: str, source: str | os.PathLike | None = None) -> None:
    """Check that ``data`` (a loaded result file) is a ``kind`` file this hf_llc can read.

    A file without a ``"format"`` key (written before the key existed) passes; so does one of
    this kind at ``FORMAT_VERSION`` or older. ``source`` names the file in the errors.

    Raises:
        ValueError: ``data`` is not a mapping, is another kind of file (the error names the
            kind and how to load it), or was written by a newer hf_llc (upgrade).
    """
    where = f"{source}: " if source is not None else ""
    expected = _format_name(kind)
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}expected a JSON object ({expected}), got {type(data).__name__}.")
    found = data.get("format")
    if found is None:
        return
    if found != expected:
        raise ValueError(
            f"{where}this is a {found!r} file, not {expected!r}"
            + (f" ({_LOADERS[found]} reads it)." if found in _LOADERS else ".")
        )
    version = data.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{where}format_version {version!r} is not an integer.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{where}{expected} format_version {version} was written by a newer hf_llc; this "
            f"one reads up to version {FORMAT_VERSION}: upgrade hf_llc (pip install -U hf-llc)."
        )


_LOADERS = {
    "hf_llc.llc_result": "hf_llc.LLCResult.load",
    "hf_llc.calibration_result": "hf_llc.CalibrationResult.load",
    "hf_llc.validation_report": "json.load",
    "hf_llc.trajectory": "hf_llc.trajectory.load_trajectory",
}


def _format_name(kind: str) -> str:
    if kind in FORMAT_KINDS:
        return FORMAT_KINDS[kind]
    if kind in FORMAT_KINDS.values():
        return kind
    raise ValueError(f"unknown result kind {kind!r}; one of {', '.join(FORMAT_KINDS)}.")


def settings_hash(settings: Mapping[str, Any], length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``settings`` as canonical JSON (keys
    sorted, anything not JSON-native by its ``str``): equal settings, equal hash."""
    text = json.dumps(dict(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _kind(mode: int) -> str | None:
    """What a non-regular file is (``None`` for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _written_in_place(mode: int) -> bool:
    """FIFOs and character devices are written like a shell redirection would."""
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _read_only(path: Path, mode: int) -> bool:
    """No write permission: by ``os.access``, or (as root, who may write anyway) by the
    permission bits, so a file a user made read-only is never replaced."""
    return not os.access(path, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def _resolve(path: Path) -> tuple[Path, os.stat_result | None]:
    """The file ``path`` writes to (symbolic links followed) and its status (``None`` if it
    does not exist yet); any other ``OSError`` propagates."""
    target = Path(os.path.realpath(path))
    try:
        return target, os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        return target, None


def check_output_path(path: str | os.PathLike, what: str = "--output") -> Path:
    """Check, before any work, that ``path`` can be written by :func:`atomic_write`.

    ``what`` names the flag or argument in the error. Returns the file that will be written
    (``path`` with symbolic links followed).

    Raises:
        ValueError: ``path`` is a directory, a socket, a block device or a read-only file, or
            its folder does not exist or is not a writable directory.
    """
    path = Path(path)
    try:
        target, st = _resolve(path)
    except OSError as err:
        raise ValueError(f"{what} {path}: cannot check it ({err.strerror or err}).") from err
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise ValueError(
                f"{what} {path} is a directory; give a file path like {path}/out.json."
            )
        if _written_in_place(st.st_mode):
            return target
        if _kind(st.st_mode) is not None:
            raise ValueError(
                f"{what} {path} is {_kind(st.st_mode)}, not a regular file; hf_llc does not "
                "replace it: pass the path of a regular file."
            )
        if _read_only(target, st.st_mode):
            raise ValueError(
                f"{what} {path} is read-only; make it writable (chmod u+w) or pass another path."
            )
    parent = target.parent
    if not parent.exists():
        raise ValueError(f"{what}: directory {path.parent} does not exist; create it first.")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"{what} {path}: {path.parent} is not a writable directory; pass a path in one that is."
        )
    return target


def describe_os_error(err: OSError) -> str:
    """``err``'s reason, with ENOSPC/EFBIG spelled out as "disk full" / "file too large"."""
    reason = err.strerror or str(err)
    if err.errno in _FULL:
        reason = f"{_FULL[err.errno]}: {reason}"
    return reason


def atomic_write(
    path: str | os.PathLike,
    data: bytes | Callable[[IO[bytes]], None],
    *,
    make_parents: bool = False,
    mode_like: str | os.PathLike | None = None,
    allow_read_only: bool = False,
    fsync: bool = True,
) -> Path:
    """Write ``data`` (bytes, or a function writing to a binary file) to ``path`` safely.

    Symbolic links are followed (the link's final target is written); FIFOs and character
    devices are written in place; anything else is written to a hidden temporary file in the
    same folder (a unique name), flushed (``fsync``) and renamed over the target, and the
    folder is flushed too, so the target is either the old or the new file, never half of one,
    even after a power loss. A new file gets the permissions of
    ``mode_like`` when that exists (else the usual ``0o666 & ~umask``); a replaced file keeps
    its own.

    Args:
        path: the file to write.
        data: the bytes, or ``data(fh)`` writing them to an open binary file (``fh.name`` is
            the path of the temporary file, for writers that need a path).
        make_parents: create missing parent folders.
        mode_like: a file whose permissions a new file gets.
        allow_read_only: replace a regular file even without write permission (checkpoint
            files that the folder's owner may have made read-only along with the manifest).
        fsync: flush the data to disk before the rename, and the folder after it.

    Returns:
        ``path``.

    Raises:
        OSError: the target is a directory, socket or block device, or read-only (the errno
            says which), or writing failed; the message names the path, ENOSPC/EFBIG as
            "disk full" / "file too large", and the fix. The temporary file is removed.
    """
    path = Path(path)
    target, st = _resolve(path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        if _written_in_place(st.st_mode):
            _write_to(target, data, "wb")
            return path
        code = errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL
        reason = os.strerror(code) if code == errno.EISDIR else _kind(st.st_mode)
        raise OSError(
            code,
            f"cannot write {path} ({reason}): pass a path in an existing, writable directory "
            "(hf_llc never replaces what is not a regular file).",
        )
    if st is not None and not allow_read_only and _read_only(target, st.st_mode):
        raise OSError(
            errno.EACCES,
            f"cannot write {path} (read-only file): make it writable (chmod u+w) or pass "
            "another path; it was left unchanged.",
        )
    mode = _mode_for(st, mode_like)
    tmp = None
    try:
        if make_parents:
            target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
        os.close(fd)
        with open(tmp, "wb") as fh:  # by name, so fh.name is the temporary file's path
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        tmp = None
        if fsync:
            _fsync_folder(target.parent)
    except OSError as err:
        raise OSError(
            err.errno,
            f"cannot write {path} ({describe_os_error(err)}): pass a path in an existing, "
            "writable directory" + (" with free space" if err.errno in _FULL else ""),
        ) from err
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def _mode_for(st: os.stat_result | None, mode_like: str | os.PathLike | None) -> int:
    """The permissions of the written file: the replaced file's, else ``mode_like``'s when it
    exists, else the usual ``0o666 & ~umask``."""
    if st is not None:
        return stat.S_IMODE(st.st_mode)
    if mode_like is not None and os.path.exists(mode_like):
        return stat.S_IMODE(os.stat(mode_like).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to disk, so that a rename into it survives a power loss.

    Best effort: where a folder cannot be opened or synced (Windows, some network file
    systems) the file itself is already on disk and the write stands.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_to(target: Path, data: bytes | Callable[[IO[bytes]], None], mode: str) -> None:
    """Write into an existing FIFO or character device (no temporary file, no rename)."""
    try:
        with open(target, mode) as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {target} ({describe_os_error(err)}).") from err


def write_json(path: str | Path, data: Any, *, make_parents: bool = False) -> Path:
    """Write ``to_plain(data)`` as JSON with :func:`atomic_write` (see there for links and
    special files).

    On failure nothing is left behind (the temporary file is removed) and the ``OSError``
    names the path and the fix.
    """
    text = json.dumps(to_plain(data), indent=1, allow_nan=False)
    return atomic_write(path, text.encode("utf-8"), make_parents=make_parents)
