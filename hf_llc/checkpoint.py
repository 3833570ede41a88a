"""Checkpoints of an ``estimate_llc`` run, resume, and termination signals.

With ``output_dir`` every chain's state is written there periodically, so a run that is
stopped (Ctrl-C, SIGTERM from a scheduler, a crash) continues with ``resume=True`` and ends
with exactly (bit for bit) the result of an uninterrupted run:

- ``manifest.json``: the sampler settings, the hf_llc version and a fingerprint of the model
  and data (parameter count, sample count, nβ, L_n(w*), SHA-256 of w* and of the data
  columns). A resume with other settings, weights or data is refused.
- ``chain_{c}.safetensors``: chain c's tensors and, in the safetensors metadata, its plain
  values. A running chain holds its :class:`~hf_llc.sampling.ChainState` (parameters w_t,
  generator state, minibatch permutation and position, step counter, step size and its
  adaptation history, power-iteration vector, preconditioner state, trace so far, retries);
  a finished chain holds its :class:`~hf_llc.sampling.ChainResult`. This one file is the
  authority, written atomically (temporary file, fsync, rename), so a chain's state is never
  half-written. ``chain_{c}.json`` is a human-readable copy of its status.
- ``result.json``: the final result; ``partial_result.json``: the result over the chains
  finished when a run was interrupted.
- ``calibration.json``: with ``step_size="auto"``, the step-size sweep and its choice, so a
  resume (even of a finished run) does not run the pilots again.
- ``.hf_llc.lock``: the lock of the run using the folder (see below).

One run at a time: the run holds ``.hf_llc.lock`` (created atomically, with
``O_CREAT | O_EXCL``; it names the process id, host and start time) from its first look at the
folder until it returns, raises or is interrupted; a second run on the folder is refused at
once with :class:`OutputDirLocked`, naming the holder. A lock left by a process that no longer
exists (same host, process id not running: e.g. after ``kill -9`` or a crash) is stale: it is
taken over with a logged warning that says so, which is what a ``--resume`` after a crash needs. A
lock from another host cannot be checked and is never taken over (remove it by hand once that
run is gone). Each process of a multi-process run locks its own file (``.hf_llc.lock.<rank>``
beyond the main one). When the main process opens the folder, temporary files orphaned by a
killed run (``.NAME.XXXX.tmp`` and ``NAME.tmp*`` names) are removed.

Every process of a multi-process run writes its own chains' files (chain c runs on process
c mod P); the main process writes the manifest and the results. A checkpoint only copies the
state, so the result does not depend on when checkpoints were written, nor on how many
processes ran before and after the interruption.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import math
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ._logging import get_logger
from .sampling import ChainResult, ChainState
from .sampling.config import LATER_SETTINGS
from .serialization import atomic_write, describe_os_error, to_plain, write_json

logger = get_logger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RESULT = "result.json"
PARTIAL_RESULT = "partial_result.json"
CALIBRATION = "calibration.json"
LOCK = ".hf_llc.lock"
# What a killed run can leave behind: temporary files (".NAME.XXXX.tmp" of atomic_write, and
# "NAME.tmp" / "NAME.tmp<pid>") and a lock moved aside during a takeover.
_ORPHAN = re.compile(r"^(\..+\.tmp|.+\.tmp\d*|\.hf_llc\.lock.*\.stale-\d+)$")
_META_KEY = "hf_llc_chain"
_SIGNALS = ("SIGINT", "SIGTERM")


class EstimateInterrupted(KeyboardInterrupt):
    """``estimate_llc`` stopped on SIGINT/SIGTERM after saving its checkpoint.

    A ``KeyboardInterrupt``, so code that does not expect it stops as on Ctrl-C.

    Attributes:
        signum: the signal received (``signal.SIGINT`` or ``signal.SIGTERM``).
        output_dir: the run's folder; pass it again with ``resume=True`` to continue.
        finished_chains: the chains whose results are complete (nothing of them is rerun).
        partial_result: the :class:`~hf_llc.LLCResult` over the finished chains (also in
            ``output_dir/partial_result.json``), or ``None`` on a non-main process.
    """

    def __init__(
        self,
        message: str,
        *,
        signum: int,
        output_dir: Path,
        finished_chains: list[int],
        partial_result: Any = None,
    ):
        super().__init__(message)
        self.signum = signum
        self.output_dir = output_dir
        self.finished_chains = finished_chains
        self.partial_result = partial_result

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by this signal: 128 + signal number."""
        return 128 + int(self.signum)


class OutputDirLocked(ValueError):
    """Another run holds the output folder's lock (see the module docstring).

    Attributes:
        output_dir: the folder.
        holder: what the lock file says about its holder (``pid``, ``host``, ``started``).
    """

    def __init__(self, message: str, *, output_dir: Path, holder: Mapping[str, Any]):
        super().__init__(message)
        self.output_dir = output_dir
        self.holder = dict(holder)


# The locks taken inside the current releases_run_locks call (None outside one).
_HELD_LOCKS: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "hf_llc_held_locks", default=None
)


def releases_run_locks(fn: Callable) -> Callable:
    """Decorator: every output-folder lock taken by a :class:`RunCheckpoint` during the call is
    released when it returns, raises or is interrupted (``EstimateInterrupted``, Ctrl-C)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        token = _HELD_LOCKS.set([])
        try:
            return fn(*args, **kwargs)
        finally:
            held = _HELD_LOCKS.get() or []
            _HELD_LOCKS.reset(token)
            for run in reversed(held):
                run.release()

    return wrapper


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return True  # cannot tell: assume it runs
    return True


def _describe_holder(holder: Mapping[str, Any]) -> str:
    return (
        f"process {holder.get('pid')} on host {holder.get('host')!r}, started "
        f"{holder.get('started')}"
    )


class ChainStopped(Exception):
    """Raised inside a chain (after its state is saved) when a stop signal arrived."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def tensor_sha256(*tensors: Tensor, chunk: int = 1 << 24) -> str:
    """SHA-256 over the dtypes, shapes and bytes of ``tensors`` (copied to the CPU in chunks)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        flat = t.detach().reshape(-1)
        for start in range(0, flat.numel(), chunk):
            piece = flat[start : start + chunk].cpu().contiguous()
            h.update(piece.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Chain files: a dataclass ⇄ (tensors, plain metadata) in one safetensors file.


def _split(obj: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors of a dataclass (and of its dict fields, as ``field.key``) and the rest."""
    tensors: dict[str, Tensor] = {}
    plain: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Tensor):
            tensors[f.name] = value.detach().cpu().contiguous().clone()
        elif isinstance(value, dict) and any(isinstance(v, Tensor) for v in value.values()):
            inner = {}
            for key, v in value.items():
                if isinstance(v, Tensor):
                    tensors[f"{f.name}.{key}"] = v.detach().cpu().contiguous().clone()
                else:
                    inner[key] = v
            plain[f.name] = {"__tensors__": True, **inner}
        else:
            plain[f.name] = value
    return tensors, plain


def _join(cls: type, tensors: Mapping[str, Tensor], plain: Mapping[str, Any]) -> Any:
    """Inverse of :func:`_split`."""
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in tensors:
            values[f.name] = tensors[f.name]
        elif isinstance(plain.get(f.name), dict) and plain[f.name].get("__tensors__"):
            inner = {k: v for k, v in plain[f.name].items() if k != "__tensors__"}
            prefix = f.name + "."
            inner.update({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            values[f.name] = inner
        elif f.name in plain:
            values[f.name] = plain[f.name]
    if "step_size_history" in values:
        values["step_size_history"] = [tuple(h) for h in values["step_size_history"]]
    return cls(**values)


def _save_safetensors_atomic(
    path: Path, tensors: dict[str, Tensor], metadata: dict, mode_like: Path | None = None
) -> None:
    """Write a safetensors file with :func:`~hf_llc.serialization.atomic_write` (temporary
    file, fsync, rename); a new file gets ``mode_like``'s permissions (the folder's usual
    ones, not mkstemp's 0600)."""
    from safetensors.torch import save_file

    def write(fh) -> None:
        # save_file streams to a path (no copy of the state in memory): the temporary file's.
        save_file(tensors, fh.name, metadata=metadata)

    atomic_write(path, write, mode_like=mode_like, allow_read_only=True)


class RunCheckpoint:
    """The checkpoint folder of one ``estimate_llc`` run, as seen by one process.

    It is also the :class:`~hf_llc.sampling.ChainCheckpoint` that running chains report to:
    a snapshot is due every ``checkpoint_every`` steps of a chain, every
    ``checkpoint_seconds`` of wall time, and at once when a stop signal has arrived (after
    saving it, :meth:`save` raises :class:`ChainStopped`).

    Args:
        output_dir: the folder (created if missing).
        checkpoint_every: snapshot a running chain every this many steps (``None``: never by
            step count).
        checkpoint_seconds: snapshot at least this often in wall-clock seconds (``None``:
            never by time).
        is_main: whether this process writes the manifest and the results.
        process_index: this process's rank (its lock file; 0 for a single process).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        checkpoint_every: int | None = None,
        checkpoint_seconds: float | None = 300.0,
        is_main: bool = True,
        process_index: int = 0,
    ):
        if checkpoint_every is not None and (
            not isinstance(checkpoint_every, int)
            or isinstance(checkpoint_every, bool)
            or checkpoint_every < 1
        ):
            raise ValueError(
                f"checkpoint_every must be an integer ≥ 1 (steps) or None, got "
                f"{checkpoint_every!r}."
            )
        if checkpoint_seconds is not None and not (
            isinstance(checkpoint_seconds, (int, float))
            and not isinstance(checkpoint_seconds, bool)
            and math.isfinite(checkpoint_seconds)
            and checkpoint_seconds > 0
        ):
            raise ValueError(
                f"checkpoint_seconds must be a number > 0 or None, got {checkpoint_seconds!r}."
            )
        self.dir = Path(output_dir)
        if self.dir.exists() and not self.dir.is_dir():
            raise ValueError(f"output_dir={str(self.dir)!r} is a file; pass a folder.")
        self.every = checkpoint_every
        self.seconds = checkpoint_seconds
        self.is_main = is_main
        self.process_index = int(process_index)
        self._lock_token: str | None = None
        self._created_dir = False
        self.requested_signal: int | None = None
        self.config_hash: str | None = None
        self._last_save = time.monotonic()

    # -- the lock -------------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        name = LOCK if self.process_index == 0 else f"{LOCK}.{self.process_index}"
        return self.dir / name

    def acquire(self) -> None:
        """Take the folder's lock (creating the folder if needed); see the module docstring.

        Inside :func:`releases_run_locks` the lock is released when that call ends; otherwise
        call :meth:`release`.

        Raises:
            OutputDirLocked: another live run holds it (or a lock that cannot be checked).
            ValueError: the folder cannot be created or written.
        """
        if self._lock_token is not None:
            return
        if not self.dir.exists():
            try:
                self.dir.mkdir(parents=True)
                self._created_dir = True
            except FileExistsError:
                pass
            except OSError as err:
                raise ValueError(
                    f"output_dir={str(self.dir)!r} (--output-dir): cannot create it "
                    f"({describe_os_error(err)}); pass a folder in a writable directory."
                ) from err
        token = uuid.uuid4().hex
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "token": token,
        }
        for _ in range(5):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_stale_lock()
                continue
            except OSError as err:
                raise ValueError(
                    f"output_dir={str(self.dir)!r} (--output-dir): cannot create its lock file "
                    f"{self.lock_path.name} ({describe_os_error(err)}); pass a writable folder."
                ) from err
            with os.fdopen(fd, "w") as fh:
                json.dump(record, fh)
            self._lock_token = token
            held = _HELD_LOCKS.get()
            if held is not None:
                held.append(self)
            return
        raise OutputDirLocked(
            f"output_dir={str(self.dir)!r} (--output-dir): could not take its lock "
            f"{self.lock_path} (other runs keep taking it); retry when they are done.",
            output_dir=self.dir,
            holder={},
        )

    def _read_lock(self, path: Path) -> dict | None:
        try:
            holder = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _take_over_stale_lock(self) -> None:
        """The lock exists: refuse if its holder may be alive, else move it aside (once)."""
        holder = self._read_lock(self.lock_path)
        if holder is None:
            return  # released meanwhile: try again
        remove = f"remove {self.lock_path} by hand"
        if not holder or not isinstance(holder.get("pid"), int):
            raise OutputDirLocked(
                f"output_dir={str(self.dir)!r} (--output-dir) is locked by another run "
                f"({self.lock_path} is unreadable, perhaps being written). If no run uses the "
                f"folder, {remove} and start again.",
                output_dir=self.dir,
                holder=holder,
            )
        here = holder.get("host") == socket.gethostname()
        if not here or _pid_alive(holder["pid"]):
            where = "" if here else " (on another host, so hf_llc cannot check it)"
            raise OutputDirLocked(
                f"output_dir={str(self.dir)!r} (--output-dir) is in use by another run: "
                f"{_describe_holder(holder)}{where}. Wait for it to finish, or pass another "
                f"output_dir; if that run is gone, {remove}.",
                output_dir=self.dir,
                holder=holder,
            )
        # Stale: move it aside atomically; only one of several runs doing this succeeds.
        aside = self.lock_path.with_name(f"{self.lock_path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.lock_path, aside)
        except FileNotFoundError:
            return
        if self._read_lock(aside) != holder:  # a new lock was taken in between: put it back
            try:
                os.link(aside, self.lock_path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        logger.warning(
            "output_dir=%r: took over a stale lock left by %s, which no longer runs (killed or "
            "crashed); its checkpoints are kept.",
            str(self.dir),
            _describe_holder(holder),
        )

    def release(self) -> None:
        """Remove the lock if this run holds it (and a folder it created that stayed empty)."""
        if self._lock_token is None:
            return
        token, self._lock_token = self._lock_token, None
        holder = self._read_lock(self.lock_path)
        if holder and holder.get("token") == token:
            try:
                self.lock_path.unlink()
            except OSError:
                pass
        if self._created_dir:
            try:
                self.dir.rmdir()  # only if empty: a run refused before it wrote anything
            except OSError:
                pass

    def remove_orphans(self) -> list[Path]:
        """Remove temporary files a killed run left in the folder; return their paths."""
        removed = []
        for path in self.dir.iterdir() if self.dir.is_dir() else []:
            if _ORPHAN.match(path.name) and path.is_file() and not path.is_symlink():
                try:
                    path.unlink()
                    removed.append(path)
                except OSError:
                    pass
        return removed

    # -- the step-size calibration --------------------------------------------------------

    @property
    def calibration_path(self) -> Path:
        return self.dir / CALIBRATION

    def save_calibration(self, calibration: Any, options: Mapping[str, Any]) -> None:
        """Keep a ``step_size="auto"`` sweep (main process) for a resume to reuse."""
        if not self.is_main:
            return
        record = {
            "config_hash": self.config_hash,
            "options": to_plain(dict(options)),
            "calibration": calibration.to_dict(),
        }
        write_json(self.calibration_path, record)

    def load_calibration(self, options: Mapping[str, Any]) -> dict | None:
        """The saved sweep (``CalibrationResult.to_dict()``) of this run with these calibration
        options, else ``None``."""
        try:
            record = json.loads(self.calibration_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        same = record.get("config_hash") == self.config_hash and record.get("options") == to_plain(
            dict(options)
        )
        return record.get("calibration") if same else None

    def interrupted_in_calibration(self, signum: int) -> EstimateInterrupted:
        """The exception for a stop signal during the pilots (the run's manifest is saved)."""
        name = signal.Signals(signum).name
        return EstimateInterrupted(
            f"{name} received during the step-size calibration (step_size='auto'): the run is "
            f"saved in {self.dir} (no chain started; the calibration starts over on resume). "
            f"Continue it with estimate_llc(..., output_dir={str(self.dir)!r}, resume=True) or "
            f"`hf-llc estimate ... --output-dir {self.dir} --resume`.",
            signum=signum,
            output_dir=self.dir,
            finished_chains=[],
        )

    def stop_on_signal(self) -> StopOnSignal:
        """A chain checkpoint for the calibration pilots: stops them on a signal."""
        return StopOnSignal(self)

    # -- the run's manifest ---------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    def check_start(self, resume: bool) -> None:
        """Take the folder's lock, clean orphaned temporary files (main process), then refuse
        early (before any work) to overwrite a run, or to resume a missing one."""
        self.acquire()
        if self.is_main:
            self.remove_orphans()
        exists = self.manifest_path.exists()
        if resume and not exists:
            raise ValueError(
                f"resume=True (--resume), but output_dir={str(self.dir)!r} holds no run (no "
                f"{MANIFEST}); drop resume to start a new run there."
            )
        if not resume and exists:
            raise ValueError(
                f"output_dir={str(self.dir)!r} already holds a run ({MANIFEST}); pass "
                "resume=True (--resume) to continue it, or choose another output_dir "
                "(--output-dir) to start a new one."
            )

    def open(self, manifest: dict, *, resume: bool) -> None:
        """Write ``manifest`` (new run, main process) or check it against the saved one."""
        manifest = json.loads(json.dumps(to_plain(manifest)))  # as it reads back from disk
        self.config_hash = manifest["config_hash"]
        if resume:
            saved = json.loads(self.manifest_path.read_text())
            problems = _manifest_differences(saved, manifest)
            if problems:
                raise ValueError(
                    f"cannot resume the run in output_dir={str(self.dir)!r}: "
                    + "; ".join(problems)
                    + ". Resume with the same model, data and settings, or pass another "
                    "output_dir (--output-dir) to start a new run."
                )
            if saved.get("hf_llc_version") != manifest.get("hf_llc_version"):
                logger.warning(
                    "the run in %s was started with hf_llc %s, this is %s: the resumed result "
                    "may differ from an uninterrupted run.",
                    self.dir,
                    saved.get("hf_llc_version"),
                    manifest.get("hf_llc_version"),
                )
        elif self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(self.manifest_path, manifest)

    # -- chain files ----------------------------------------------------------------------

    def chain_path(self, chain: int) -> Path:
        return self.dir / f"chain_{chain}.safetensors"

    def _write_chain(self, chain: int, status: str, obj: Any, summary: dict) -> None:
        tensors, plain = _split(obj)
        meta = {
            "format": FORMAT_VERSION,
            "status": status,
            "config_hash": self.config_hash,
            "state": plain,
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        # json keeps NaN/inf here (read back only by json.loads); floats round-trip exactly.
        _save_safetensors_atomic(
            self.chain_path(chain),
            tensors,
            {_META_KEY: json.dumps(meta)},
            mode_like=self.manifest_path,
        )
        readable = {"chain": chain, "status": status, "config_hash": self.config_hash, **summary}
        write_json(self.dir / f"chain_{chain}.json", readable)
        self._last_save = time.monotonic()

    def save_finished(self, result: ChainResult) -> None:
        """Record a finished chain: it is loaded, never rerun, on resume."""
        self._write_chain(
            result.chain,
            "finished",
            result,
            {"diverged": result.diverged, "step_size": result.step_size},
        )

    def load_chain(self, chain: int) -> ChainResult | ChainState | None:
        """Chain ``chain``'s saved result (finished) or state (running), else ``None``."""
        path = self.chain_path(chain)
        if not path.exists():
            return None
        from safetensors import safe_open

        tensors = {}
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})[_META_KEY])
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{path} has checkpoint format {meta.get('format')}, this hf_llc reads "
                f"{FORMAT_VERSION}; resume with the hf_llc version that wrote it."
            )
        if meta.get("config_hash") != self.config_hash:
            raise ValueError(
                f"{path} belongs to a run with other settings (config hash "
                f"{meta.get('config_hash')}, this run {self.config_hash}); remove it or pass "
                "another output_dir (--output-dir)."
            )
        cls = ChainResult if meta["status"] == "finished" else ChainState
        return _join(cls, tensors, meta["state"])

    def finished_results(self, num_chains: int) -> list[ChainResult]:
        """Every chain finished on disk (by any process), in chain order."""
        out = []
        for c in range(num_chains):
            try:
                saved = self.load_chain(c)
            except (OSError, ValueError, KeyError):
                continue  # another process may be writing it this very moment
            if isinstance(saved, ChainResult):
                out.append(saved)
        return out

    # -- the ChainCheckpoint protocol ---------------------------------------------------

    def due(self, chain: int, step: int) -> bool:
        """Whether a running chain should snapshot now (after ``step`` steps)."""
        if self.requested_signal is not None:
            return True
        if self.every is not None and step % self.every == 0:
            return True
        return self.seconds is not None and time.monotonic() - self._last_save >= self.seconds

    def save(self, state: ChainState) -> None:
        """Write a running chain's snapshot; then stop it if a signal asked for that."""
        self._write_chain(
            state.chain,
            "running",
            state,
            {"attempt": state.attempt, "step": state.step, "step_size": state.step_size},
        )
        self.stop_if_requested()

    def stop_if_requested(self) -> None:
        """Raise :class:`ChainStopped` if SIGINT/SIGTERM arrived."""
        if self.requested_signal is not None:
            raise ChainStopped(self.requested_signal)

    # -- signals --------------------------------------------------------------------------

    @contextmanager
    def catch_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM ask the running chain to save and stop (a second one stops at
        once). Previous handlers are restored on exit. Outside the main thread, where Python
        cannot install handlers, nothing is caught (periodic checkpoints still happen)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self.requested_signal is not None:
                raise KeyboardInterrupt(
                    f"second {signal.Signals(signum).name}: stopped without waiting for the "
                    "checkpoint (the last complete one in the output folder is kept)"
                )
            self.requested_signal = signum

        previous = {}
        try:
            for name in _SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    previous[sig] = signal.signal(sig, handler)
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)

    # -- results --------------------------------------------------------------------------

    def write_result(self, result: Any) -> None:
        """The final result (main process); a stale partial result is removed."""
        if not self.is_main:
            return
        result.save(self.dir / RESULT)
        (self.dir / PARTIAL_RESULT).unlink(missing_ok=True)

    def write_partial(self, result: Any) -> Path | None:
        if not self.is_main:
            return None
        return result.save(self.dir / PARTIAL_RESULT)


class StopOnSignal:
    """The :class:`~hf_llc.sampling.ChainCheckpoint` of chains whose state is not kept (the
    step-size pilots): no snapshots; after SIGINT/SIGTERM the next step raises
    :class:`ChainStopped`."""

    def __init__(self, run: RunCheckpoint):
        self.run = run

    def due(self, chain: int, step: int) -> bool:
        return self.run.requested_signal is not None

    def save(self, state: ChainState) -> None:
        self.run.stop_if_requested()


def _manifest_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Human-readable differences that make a resume invalid."""
    out = []
    for section in ("config", "fingerprint"):
        a, b = saved.get(section) or {}, now.get(section) or {}
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if key == "init_loss" and isinstance(x, float) and isinstance(y, float):
                # L_n(w*) is recomputed on resume; another device or thread count may change
                # its last bits, which the weight and data hashes already pin down.
                same = math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12)
            else:
                same = x == y
            if not same:
                what = "settings" if section == "config" else "model/data"
                out.append(f"{what} {key}: saved {_recorded(section, key, x, a)}, now {y!r}")
    return out


def _recorded(section: str, key: str, value: Any, saved: Mapping[str, Any]) -> str:
    """A saved setting as the run had it: a setting added later and left out of the record at
    its earlier value (``LATER_SETTINGS``) is named with that value, not as ``None``."""
    if section == "config" and key not in saved and key in LATER_SETTINGS:
        return f"{LATER_SETTINGS[key]!r} (the value before the setting was recorded)"
    return repr(value)
