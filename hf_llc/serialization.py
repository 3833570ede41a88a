"""Plain values for JSON/YAML, and atomic JSON files."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


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


def write_json(path: str | Path, data: Any, *, make_parents: bool = False) -> Path:
    """Write ``to_plain(data)`` as JSON atomically (a temporary file renamed into place).

    On failure nothing is left behind (the temporary file is removed) and the ``OSError``
    names the path and the fix.
    """
    path = Path(path)
    text = json.dumps(to_plain(data), indent=1, allow_nan=False)
    tmp = path.with_name(path.name + ".tmp")
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as err:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise OSError(
            err.errno,
            f"cannot write {path} ({err.strerror or err}): pass a path in an existing, "
            "writable directory",
        ) from err
    return path
