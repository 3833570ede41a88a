"""The small shared helpers: the atomic writer's guarantees, fmt, table_lines, settings_hash."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from hf_llc._text import fmt, table_lines
from hf_llc.serialization import atomic_write, settings_hash

# --------------------------------------------------------------------------- atomic_write


def test_atomic_write_uses_a_unique_temporary_file_in_the_target_folder(tmp_path):
    target = tmp_path / "out.json"
    seen = []

    def write(fh) -> None:
        seen.append(Path(fh.name))
        fh.write(b"new")

    atomic_write(target, write)
    atomic_write(target, write)
    assert target.read_bytes() == b"new"
    assert all(p.parent == tmp_path for p in seen)
    assert all(re.fullmatch(r"\.out\.json\..+\.tmp", p.name) for p in seen)
    assert seen[0] != seen[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_write_flushes_the_file_and_then_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        synced.append("folder" if stat.S_ISDIR(mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    atomic_write(tmp_path / "a.bin", b"x")
    assert synced == ["file", "folder"]
    synced.clear()
    atomic_write(tmp_path / "b.bin", b"x", fsync=False)
    assert synced == []


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_bytes(b"old")

    def failing(fh) -> None:
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=r"disk full"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_write_writes_dev_null_in_place():
    assert atomic_write("/dev/null", b"discarded") == Path("/dev/null")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_atomic_write_writes_a_fifo_in_place(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    atomic_write(fifo, b"through the pipe")
    reader.join(timeout=10)
    assert received == [b"through the pipe"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


# --------------------------------------------------------------------------- fmt


@pytest.mark.parametrize(
    "value, spec, missing, expected",
    [
        (0.123456, ".4g", "-", "0.1235"),
        (0.5, "+.2f", "-", "+0.50"),
        (0.25, ".1%", "-", "25.0%"),
        (3, ".3g", "-", "3"),
        (None, ".4g", "-", "-"),
        (float("nan"), ".4g", "-", "-"),
        (float("inf"), ".4g", "nan", "nan"),
        ("text", ".4g", "–", "–"),
    ],
)
def test_fmt(value, spec, missing, expected):
    assert fmt(value, spec, missing) == expected


# --------------------------------------------------------------------------- table_lines


def test_table_lines_pads_every_column_to_its_widest_cell():
    lines = table_lines(["a", "long head"], [["wide cell", "x"], ["b", "y"]])
    assert lines == [
        "a          long head",
        "wide cell  x        ",
        "b          y        ",
    ]


def test_table_lines_rule_and_no_rows():
    assert table_lines(["ab", "c"], [["x", "yyy"]], rule=True) == [
        "ab  c  ",
        "--  ---",
        "x   yyy",
    ]
    assert table_lines(["ab", "c"], []) == ["ab  c"]


# --------------------------------------------------------------------------- settings_hash


def test_settings_hash_is_canonical_json_sha256():
    a = {"num_chains": 4, "step_size": "curvature", "path": Path("x")}
    b = dict(reversed(list(a.items())))
    assert settings_hash(a) == settings_hash(b)
    assert len(settings_hash(a)) == 16 and len(settings_hash(a, length=12)) == 12
    assert settings_hash(a).startswith(settings_hash(a, length=12))
    assert settings_hash(a) != settings_hash({**a, "num_chains": 5})
    # the checkpoint manifests and model cards already on disk depend on these exact bytes
    text = json.dumps(a, sort_keys=True, default=str)
    assert settings_hash(a) == hashlib.sha256(text.encode()).hexdigest()[:16]
