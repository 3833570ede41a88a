"""hf_llc's log records: one library logger, ``"hf_llc"``, and its verbosity.

Every module logs through ``get_logger(__name__)``, a child of ``"hf_llc"``, so one setting
governs the whole library::

    import hf_llc
    hf_llc.set_verbosity("info")      # or logging.INFO; hf_llc.get_verbosity() reads it

The starting level is ``HF_LLC_VERBOSITY`` (``debug``, ``info``, ``warning``, ``error`` or
``critical``) when set, else WARNING. Run-time events (diverged chains, restarts, a sequential
fallback, a lock taken over, fp16 run in fp32, …) are log records; ``warnings.warn`` is kept for
misuse of the API.

Records propagate to the root logger, so an application that configures :mod:`logging` (or
pytest's ``caplog``) receives them. Only when neither the ``"hf_llc"`` logger nor the root
logger has a handler does hf_llc add its own, which writes to stderr; it stays silent whenever
another handler would show the record, so nothing is printed twice.

This module imports nothing heavy (no torch): ``hf_llc.set_verbosity`` is cheap.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

LIBRARY_NAME = "hf_llc"
ENV_VAR = "HF_LLC_VERBOSITY"
DEFAULT_LEVEL = logging.WARNING

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_lock = threading.Lock()
_handler: logging.Handler | None = None
_configured = False


class _FallbackHandler(logging.StreamHandler):
    """A stderr handler that writes only while no other handler would receive the record:
    none on the root logger and none of its own on the ``"hf_llc"`` logger."""

    def __init__(self):
        super().__init__()  # stderr, looked up at each emit (pytest's capsys swaps it)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; sys.stderr is always used
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        if any(h is not self for h in logging.getLogger(LIBRARY_NAME).handlers):
            return
        super().emit(record)


def _level_from_env() -> tuple[int, str | None]:
    """(level, the bad value of ``HF_LLC_VERBOSITY`` or ``None``)."""
    value = os.environ.get(ENV_VAR)
    if not value:
        return DEFAULT_LEVEL, None
    level = LEVELS.get(value.strip().lower())
    if level is None:
        return DEFAULT_LEVEL, value
    return level, None


def _configure() -> None:
    """Set up the library logger once: the level from the environment and, where nothing
    else would show its records, the stderr handler."""
    global _configured, _handler
    if _configured:
        return
    with _lock:
        if _configured:
            return
        root = logging.getLogger(LIBRARY_NAME)
        level, bad = _level_from_env()
        root.setLevel(level)
        if not root.handlers and not logging.getLogger().handlers:
            _handler = _FallbackHandler()
            _handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s: %(message)s"))
            root.addHandler(_handler)
        _configured = True
    if bad is not None:
        root.warning(
            "%s=%r is not a level (use one of %s); logging at WARNING.",
            ENV_VAR,
            bad,
            ", ".join(LEVELS),
        )


def get_logger(name: str | None = None) -> logging.Logger:
    """The logger ``name`` under hf_llc's library logger (``"hf_llc"`` itself for ``None``).

    A module's ``__name__`` (``"hf_llc.estimator"``) is used as is; any other name is placed
    under ``"hf_llc."``.
    """
    _configure()
    if name is None or name == LIBRARY_NAME:
        return logging.getLogger(LIBRARY_NAME)
    if not name.startswith(LIBRARY_NAME + "."):
        name = f"{LIBRARY_NAME}.{name}"
    return logging.getLogger(name)


def _as_level(level: int | str) -> int:
    if isinstance(level, bool):
        raise ValueError(f"level={level!r}: pass a logging level (int) or one of {list(LEVELS)}.")
    if isinstance(level, int):
        return level
    if isinstance(level, str):
        name = level.strip().lower()
        if name in LEVELS:
            return LEVELS[name]
        if name.isdigit():
            return int(name)
    raise ValueError(f"level={level!r}: pass a logging level (int) or one of {list(LEVELS)}.")


def set_verbosity(level: int | str) -> None:
    """Set the level of hf_llc's log records, for every hf_llc module.

    Args:
        level: an int (``logging.INFO``, ``20``) or a name: ``"debug"``, ``"info"``,
            ``"warning"``, ``"error"`` or ``"critical"`` (any case).

    Raises:
        ValueError: for anything else.
    """
    get_logger().setLevel(_as_level(level))


def get_verbosity() -> int:
    """The level of hf_llc's log records, as an int (``logging.WARNING`` is 30)."""
    return get_logger().getEffectiveLevel()


@contextmanager
def verbosity(level: int | str | None) -> Iterator[None]:
    """Within the block, hf_llc logs at ``level``; afterwards the level is what it was.
    ``None`` leaves the level unchanged."""
    logger = get_logger()
    previous = logger.level
    if level is not None:
        logger.setLevel(_as_level(level))
    try:
        yield
    finally:
        logger.setLevel(previous)
