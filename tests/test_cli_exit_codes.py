"""One exit-code convention across every ``gpuledger`` command, table-driven.

0: success, and a bare command group (which prints its help). 2: a usage error: the command
line itself is wrong (a value that cannot be read, a name the catalogue does not know, options
that conflict); click prints "Invalid value for '--OPTION'". 1: a well-formed request that
failed: a missing or corrupt ledger or pricing file, a GPU the catalogue has no price for, a
failed check.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuledger import InvocationRecord
from gpuledger.cli._main import main
from gpuledger.ledger import open_ledger

PROFILE = ("--profile", "steady", "--rate", "10/h")
BROKEN_PRICING = "[platforms.runpod.gpus.H100]\nper_gpu_secnd_usd = 0.0003\n"


@pytest.mark.parametrize("group", [[], ["pricing"]], ids=["gpuledger", "pricing"])
def test_a_bare_group_prints_its_help_and_exits_0(group: list[str]) -> None:
    """`gpuledger` and `gpuledger pricing` alone print their help and exit 0."""
    result = CliRunner().invoke(main, group)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    assert "Commands:" in result.output


# (command line, the option the message must name): every one a usage error, exit 2.
USAGE_ERRORS = [
    # A duration that is not above zero.
    (["compare", *PROFILE, "--duration", "0s"], "--duration"),
    (["breakeven", "--duration", "0s"], "--duration"),
    (["compare", *PROFILE, "--slo-p95", "0s"], "--slo-p95"),
    (["sidecar", "--drain-timeout", "-1"], "--drain-timeout"),
    # A value that cannot be read.
    (["compare", *PROFILE, "--slo-p95", "soon"], "--slo-p95"),
    (["compare", "--profile", "steady", "--rate", "fast"], "--rate"),
    (["breakeven", "--rate", "fast"], "--rate"),
    (["compare", *PROFILE, "--service", "gamma"], "--service"),
    (["report", "--since", "last tuesday"], "--since"),
    (["compare", "--since", "last tuesday"], "--since"),
    (["sidecar", "--listen", "nowhere"], "--listen"),
    (["proxy", "--upstream", "127.0.0.1:5000", "--listen", "nowhere"], "--listen"),
    # A name the catalogue does not know.
    (["compare", *PROFILE, "--platforms", "lambda"], "--platforms"),
    (["compare", *PROFILE, "--overflow", "lambda"], "--overflow"),
    (["breakeven", "--platform", "lambda"], "--platform"),
    (["demo", "--platform", "lambda"], "--platform"),
    (["proxy", "--upstream", "127.0.0.1:5000", "--platform", "lambda"], "--platform"),
    # A choice not among the choices, a number out of range.
    (["report", "--format", "yaml"], "--format"),
    (["pricing", "show", "--format", "yaml"], "--format"),
    (["compare", *PROFILE, "--format", "yaml"], "--format"),
    (["breakeven", "--format", "yaml"], "--format"),
    (["demo", "--requests", "0"], "--requests"),
    (["pricing", "diff", "seed-2026-03", "published-2026-12", "--format", "yaml"], "--format"),
    (["pricing", "editions", "--format", "yaml"], "--format"),
    (["reconcile", "--usage", "usage.json", "--format", "yaml"], "--format"),
    # Options that conflict.
    (["compare", *PROFILE, "--overflow", "modal", "--platforms", "runpod"], "--overflow"),
    (["proxy", "--upstream", "127.0.0.1:5000", "--listen", "192.0.2.1:8080"], "--listen"),
]


@pytest.mark.parametrize(
    ("args", "option"), USAGE_ERRORS, ids=[" ".join(args) for args, _ in USAGE_ERRORS]
)
def test_a_bad_option_value_is_a_usage_error_naming_the_option(
    args: list[str], option: str
) -> None:
    """The same mistake exits 2 in every command, with a message that names the option."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert f"'{option}'" in result.output
    assert "Traceback" not in result.output
    assert not Path("gpuledger.db").exists()  # nothing was served or recorded


def _foreign_ledger(path: Path) -> Path:
    with open_ledger(str(path)) as ledger:
        ledger.write(
            [
                InvocationRecord(
                    record_id="r1",
                    invocation_id="job-1",
                    handler="predict",
                    service_name="production",
                    platform="runpod",
                    start_ns=1_772_323_200_000_000_000,
                    end_ns=1_772_323_201_000_000_000,
                    duration_s=1.0,
                )
            ]
        )
    return path


# (command line, a fragment of the message): every one a failed run or check, exit 1.
FAILED_RUNS = [
    (["report", "--ledger", "missing.db"], "no ledger at missing.db"),
    (["compare", "--ledger", "missing.db"], "no ledger at missing.db"),
    (["pricing", "show", "--pricing", "missing.toml"], "missing.toml"),
    (["breakeven", "--pricing", "missing.toml"], "missing.toml"),
    (["compare", *PROFILE, "--pricing", "missing.toml"], "missing.toml"),
    (["pricing", "validate", "broken.toml"], "unknown key"),
    (["breakeven", "--gpu", "Z100"], "no reserved price for GPU 'Z100'"),
    (["compare", *PROFILE, "--gpu", "Z100"], "prices no platform for GPU 'Z100'"),
    (["demo", "--ledger", "production.db"], "1 row(s) not written by the demo"),
    (["pricing", "show", "--pricing", "published-2099-01"], "no such edition or file"),
    (["pricing", "diff", "seed-2026-03", "nope"], "no such edition or file"),
    (["report", "--ledger", "production.db", "--pricing", "nope"], "no such edition or file"),
    (["reconcile", "--usage", "missing.json"], "missing.json"),
]


@pytest.mark.parametrize(
    ("args", "message"), FAILED_RUNS, ids=[" ".join(args) for args, _ in FAILED_RUNS]
)
def test_a_failed_run_or_check_exits_1(args: list[str], message: str, tmp_path: Path) -> None:
    """A well-formed request that fails (missing file, no price, failed check) exits 1."""
    (tmp_path / "broken.toml").write_text(BROKEN_PRICING, encoding="utf-8")
    _foreign_ledger(tmp_path / "production.db")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert "Traceback" not in result.output
