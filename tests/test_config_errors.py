"""A configuration that cannot work fails where it is made, never silently on a request.

An explicit ``configure()`` raises ConfigError for a bad value; settings that come only from the
environment are checked when ``@traced_handler`` decorates, so a bad ``GPULEDGER_*`` fails the
deploy at import; a ledger whose disk fails later is said loudly, and again while it lasts.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import gpuledger
from gpuledger import ConfigError


def _without_override(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` so that file modes bind it. Root ignores them through CAP_DAC_OVERRIDE: under
    root, drop it (and CAP_DAC_READ_SEARCH) from the capability bounding set, so the process can
    still read root's own files (a checkout in a private folder) but not write a 0555 one."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("running as root without setpriv (util-linux): file modes cannot bind")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPULEDGER_")}
    return subprocess.run(
        [*prefix, *argv],
        cwd=cwd,
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_environment_fails_at_decoration(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPULEDGER_GPU_COUNT=two: the decorator raises, naming the setting and the variable."""
    monkeypatch.setenv("GPULEDGER_GPU_COUNT", "two")
    with pytest.raises(ConfigError, match="environment variable GPULEDGER_GPU_COUNT") as caught:

        @gpuledger.traced_handler
        def handler() -> None: ...

    assert caught.value.setting == "gpu_count"


def test_ledger_in_a_missing_directory_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The error says the value came from GPULEDGER_LEDGER, not "(from argument)"."""
    monkeypatch.setenv("GPULEDGER_LEDGER", str(tmp_path / "missing" / "ledger.db"))
    with pytest.raises(ConfigError, match=r"GPULEDGER_LEDGER\): directory .* does not exist"):
        gpuledger.traced_handler(lambda: None)
    with pytest.raises(ConfigError, match=r"GPULEDGER_LEDGER\): directory .* does not exist"):
        gpuledger.configure(exporters="none")


def test_explicit_configure_names_the_argument(tmp_path: Path) -> None:
    """A ledger under a regular file, given as an argument: a ConfigError from the argument."""
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"\(from argument\): .*file is not a directory"):
        gpuledger.configure(ledger=str(tmp_path / "file" / "ledger.db"), exporters="none")


def test_a_configured_agent_is_not_checked_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """After configure(), decorating does not look at the environment (arguments won)."""
    gpuledger.configure(ledger=str(tmp_path / "l.db"), exporters="none", gpu_count=2)
    monkeypatch.setenv("GPULEDGER_GPU_COUNT", "two")

    @gpuledger.traced_handler
    def handler() -> int:
        return 7

    assert handler() == 7


def test_ledger_in_a_read_only_directory_fails_at_import(
    tmp_path: Path,
) -> None:
    """A read-only folder: the decoration (at import) raises, saying the folder is not writable;
    before, the handler ran and 0 rows were written, with one log line."""
    folder = tmp_path / "ro"
    folder.mkdir()
    try:
        folder.chmod(0o555)
        script = (
            "import gpuledger\n"
            "try:\n"
            "    gpuledger.traced_handler(lambda: None)\n"
            "except gpuledger.ConfigError as error:\n"
            "    print('ConfigError:', error)\n"
        )
        done = _without_override(
            [sys.executable, "-c", script],
            cwd=Path("/"),
            env={"GPULEDGER_LEDGER": str(folder / "ledger.db")},
        )
        assert done.returncode == 0, done.stderr
        assert "ConfigError:" in done.stdout
        assert "is not writable" in done.stdout
        assert "GPULEDGER_LEDGER" in done.stdout
    finally:
        folder.chmod(0o755)


def test_a_ledger_that_fails_later_is_said_loudly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The disk goes away after configuration: an error naming the ledger, the reason and how
    many invocations are held; when it comes back, they are written and that is said too."""
    folder = tmp_path / "ledgers"
    folder.mkdir()
    ledger = folder / "ledger.db"
    gpuledger.configure(ledger=str(ledger), exporters="none", platform="runpod", gpu="H100")
    folder.rmdir()
    folder.write_text("not a folder any more")

    @gpuledger.traced_handler
    def handler(value: int) -> int:
        return value

    assert [handler(1), handler(2)] == [1, 2]
    gpuledger.flush(5)
    err = capsys.readouterr().err
    assert "CANNOT WRITE ITS LEDGER" in err
    assert str(ledger) in err
    assert "held=2" in err

    folder.unlink()
    folder.mkdir()
    assert handler(3) == 3
    assert gpuledger.flush(5)
    assert "writable again" in capsys.readouterr().err
    with sqlite3.connect(ledger) as connection:
        assert connection.execute("SELECT count(*) FROM invocations").fetchone() == (3,)


def test_report_reads_a_ledger_in_a_read_only_directory(
    tmp_path: Path,
) -> None:
    """`gpuledger report` on a ledger this process cannot write (WAL needs side files): read
    read-only; before, "unable to open database file" / "attempt to write a readonly database"."""
    folder = tmp_path / "ro"
    folder.mkdir()
    try:
        ledger = folder / "ledger.db"
        gpuledger.configure(ledger=str(ledger), exporters="none", platform="runpod", gpu="H100")
        handler = gpuledger.traced_handler(lambda: None)
        for _ in range(4):
            handler()
        gpuledger.shutdown()
        ledger.chmod(0o444)
        folder.chmod(0o555)
        gpuledger_cli = Path(sys.executable).with_name("gpuledger")
        done = _without_override(
            [str(gpuledger_cli), "report", "--ledger", str(ledger), "--format", "json"],
            cwd=Path("/"),
        )
        assert done.returncode == 0, done.stderr
        assert '"invocations": 4' in done.stdout
    finally:
        folder.chmod(0o755)


# --- the settings file -----------------------------------------------------------------------


def test_a_bad_value_in_the_file_fails_at_decoration_naming_file_and_key(tmp_path: Path) -> None:
    """gpu_count = "two" in ./gpuledger.toml: the decorator raises, naming the key and the file."""
    (tmp_path / "gpuledger.toml").write_text('gpu_count = "two"\n')
    with pytest.raises(ConfigError) as caught:
        gpuledger.traced_handler(lambda: None)
    assert caught.value.setting == "gpu_count"
    assert caught.value.source == f"file {tmp_path / 'gpuledger.toml'}"
    assert str(caught.value) == (
        f"setting 'gpu_count' = 'two' (from file {tmp_path / 'gpuledger.toml'}): "
        "expected a whole number"
    )


def test_a_bad_value_in_pyproject_names_the_table(tmp_path: Path) -> None:
    """In pyproject.toml, the message says the [tool.gpuledger] table as well as the file."""
    (tmp_path / "pyproject.toml").write_text("[tool.gpuledger]\ntracing = 'maybe'\n")
    with pytest.raises(ConfigError, match=r"\(from file .*pyproject\.toml \[tool\.gpuledger\]\)"):
        gpuledger.configure(exporters="none")


@pytest.mark.parametrize(
    ("toml", "setting", "message"),
    [
        ("gpu_cont = 2\n", "gpu_cont", "unknown setting; did you mean 'gpu_count'?"),
        ("tracer_provider = 'x'\n", "tracer_provider", "only an argument to configure()"),
        ("ledger = \n", "config", "not valid TOML: Invalid value (at line 1, column 10)"),
        ("gpu = 100\n", "gpu", "expected text, got int"),
        ("ledger = ''\n", "ledger", "must not be empty"),
    ],
)
def test_what_the_file_gets_wrong_is_named(
    tmp_path: Path, toml: str, setting: str, message: str
) -> None:
    """An unknown key, an object's key, broken TOML, a value of the wrong type or an empty one:
    each a ConfigError naming the file (and the key, where there is one)."""
    path = tmp_path / "gpuledger.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        gpuledger.configure(exporters="none")
    assert caught.value.setting == setting
    assert message in caught.value.reason
    assert f"(from file {path})" in str(caught.value)


def test_a_missing_named_file_is_an_error_a_missing_local_one_is_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """GPULEDGER_CONFIG names a file the user asked for: missing, it is an error naming the
    variable. No ./gpuledger.toml is the ordinary case."""
    gpuledger.configure(exporters="none", ledger=str(tmp_path / "l.db"))
    monkeypatch.setenv("GPULEDGER_CONFIG", str(tmp_path / "nope.toml"))
    expected = (
        f"setting 'config' = '{tmp_path / 'nope.toml'}' "
        "(from environment variable GPULEDGER_CONFIG): no such file"
    )
    with pytest.raises(ConfigError) as caught:
        gpuledger.configure(exporters="none", ledger=str(tmp_path / "l.db"))
    assert str(caught.value) == expected


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    """A gpuledger.toml that is a folder cannot be read: said, with its path."""
    (tmp_path / "gpuledger.toml").mkdir()
    with pytest.raises(ConfigError, match=r"gpuledger\.toml\): cannot be read: Is a directory"):
        gpuledger.configure(exporters="none")
