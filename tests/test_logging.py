"""hf_llc's logging: one library logger and its verbosity, run-time events as log records (every
occurrence, not once per place like ``warnings``), and the stderr handler that only speaks when
nothing else would."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys

import pytest

import hf_llc
from hf_llc import SamplerConfig, estimate_llc, make_dln_problem
from hf_llc._logging import get_logger, verbosity
from hf_llc.cli import main


@pytest.fixture
def restore_verbosity():
    """Tests that change hf_llc's level put it back afterwards."""
    library = logging.getLogger("hf_llc")
    level = library.level
    yield
    library.setLevel(level)


def _fresh_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a new interpreter (logging not configured yet), ``env`` added."""
    full_env = {k: v for k, v in os.environ.items() if k != "HF_LLC_VERBOSITY"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_loggers_live_under_the_library_logger():
    assert get_logger().name == "hf_llc"
    assert get_logger("hf_llc").name == "hf_llc"
    assert get_logger("hf_llc.estimator").name == "hf_llc.estimator"
    assert get_logger("my_part").name == "hf_llc.my_part"
    assert get_logger("hf_llc.estimator").parent is logging.getLogger("hf_llc")


@pytest.mark.parametrize(
    "level, expected",
    [
        ("debug", logging.DEBUG),
        ("INFO", logging.INFO),
        ("Warning", logging.WARNING),
        ("error", logging.ERROR),
        ("critical", logging.CRITICAL),
        (logging.INFO, logging.INFO),
        (15, 15),
    ],
)
def test_set_verbosity_takes_names_and_ints(level, expected, restore_verbosity):
    hf_llc.set_verbosity(level)
    assert hf_llc.get_verbosity() == expected
    assert logging.getLogger("hf_llc").level == expected
    # Every module's logger follows the library's level.
    assert get_logger("hf_llc.estimator").getEffectiveLevel() == expected


@pytest.mark.parametrize("bad", ["loud", "", None, True, 2.5])
def test_set_verbosity_refuses_what_is_not_a_level(bad, restore_verbosity):
    before = hf_llc.get_verbosity()
    with pytest.raises(ValueError, match="debug.*critical"):
        hf_llc.set_verbosity(bad)
    assert hf_llc.get_verbosity() == before


def test_verbosity_block_restores_the_level(restore_verbosity):
    hf_llc.set_verbosity("error")
    with verbosity("debug"):
        assert hf_llc.get_verbosity() == logging.DEBUG
    assert hf_llc.get_verbosity() == logging.ERROR
    with verbosity(None):
        assert hf_llc.get_verbosity() == logging.ERROR
    with pytest.raises(RuntimeError), verbosity("info"):
        raise RuntimeError
    assert hf_llc.get_verbosity() == logging.ERROR


def test_default_level_from_the_environment_and_no_torch():
    code = (
        "import sys, hf_llc; print(hf_llc.get_verbosity()); "
        "hf_llc.set_verbosity('info'); print('torch' in sys.modules)"
    )
    default = _fresh_python(code)
    assert default.returncode == 0, default.stderr
    assert default.stdout.split() == [str(logging.WARNING), "False"]
    for name, level in [("debug", logging.DEBUG), ("ERROR", logging.ERROR)]:
        out = _fresh_python(code, HF_LLC_VERBOSITY=name)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[0] == str(level)
    bad = _fresh_python(code, HF_LLC_VERBOSITY="chatty")
    assert bad.returncode == 0, bad.stderr
    assert bad.stdout.split()[0] == str(logging.WARNING)
    assert "HF_LLC_VERBOSITY='chatty' is not a level" in bad.stderr


def test_own_handler_only_when_logging_is_not_configured():
    emit = (
        "from hf_llc._logging import get_logger; import hf_llc; hf_llc.set_verbosity('info'); "
        "get_logger('hf_llc.estimator').info('an info record'); "
        "get_logger('hf_llc.estimator').debug('a debug record')"
    )
    # Nothing configured: hf_llc's handler writes to stderr (at hf_llc's level, not the root's).
    bare = _fresh_python(emit)
    assert bare.returncode == 0, bare.stderr
    assert bare.stderr.count("an info record") == 1 and "debug record" not in bare.stderr
    assert "INFO:hf_llc.estimator: an info record" in bare.stderr
    # The application configured logging (before or after importing hf_llc): its handler shows
    # the record, once, in its own format; hf_llc adds nothing.
    for setup in ("import logging; logging.basicConfig(format='APP %(message)s'); ", ""):
        after = "" if setup else "; import logging; logging.basicConfig(format='APP %(message)s')"
        code = setup + emit.replace("import hf_llc;", "import hf_llc" + after + ";", 1)
        configured = _fresh_python(code)
        assert configured.returncode == 0, configured.stderr
        assert configured.stderr.count("an info record") == 1, configured.stderr
        assert "APP an info record" in configured.stderr


# A [2, 2] regression whose chains explode at this step size (≈ 10⁴ × a stable one).
DIVERGING = SamplerConfig(
    num_chains=2,
    num_burnin=5,
    num_draws=10,
    batch_size=32,
    step_size=1.0,
    preconditioner="identity",
    divergence_retries=0,
)


def test_every_diverging_estimate_is_logged(caplog):
    # warnings.warn shows a message once per code location, so a second diverging estimate
    # in the same process (a training run, a sweep) went unreported; log records do not.
    model, data, _ = make_dln_problem([2, 2], construction="full_rank", num_samples=64)
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        first = estimate_llc(model, data, DIVERGING, progress=False)
        second = estimate_llc(model, data, DIVERGING, progress=False)
    assert math.isnan(first.llc_mean) and math.isnan(second.llc_mean)
    every = [r for r in caplog.records if "every chain diverged" in r.getMessage()]
    assert len(every) == 2
    assert all(r.levelno == logging.WARNING and r.name == "hf_llc.estimator" for r in every)
    per_chain = [r for r in caplog.records if "diverged at step" in r.getMessage()]
    assert len(per_chain) == 2 * DIVERGING.num_chains


def test_error_verbosity_silences_divergence_records(caplog, restore_verbosity):
    model, data, _ = make_dln_problem([2, 2], construction="full_rank", num_samples=64)
    hf_llc.set_verbosity("error")
    with caplog.at_level(logging.DEBUG):  # the root's level: hf_llc's own level decides
        result = estimate_llc(model, data, DIVERGING, progress=False)
    assert math.isnan(result.llc_mean)
    assert not [r for r in caplog.records if r.name.startswith("hf_llc")]


@pytest.mark.parametrize("name, level", [("debug", logging.DEBUG), ("error", logging.ERROR)])
def test_cli_log_level_sets_the_verbosity(name, level, tmp_path, restore_verbosity, capsys):
    hf_llc.set_verbosity("warning")
    # A model path that does not exist: the command fails right after reading its options.
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(SystemExit) as exit_:
        main(["estimate", missing, "--dataset", missing, "--log-level", name])
    assert exit_.value.code == 2
    assert hf_llc.get_verbosity() == level
    assert "error:" in capsys.readouterr().err
