"""The errors gpuledger raises to its users.

Only the user's own mistakes raise; telemetry failures at run time never reach a handler
(see ``_guard``). The tree::

    GpuledgerError
    ├── ConfigError (also ValueError)       a setting with a bad value, an unknown keyword
    ├── PricingError (also ValueError)      a pricing file that cannot be used
    ├── LedgerError                         a ledger that is missing, corrupt or too new
    └── SidecarError                        a sidecar that cannot start (spool, address), or
                                            that did not take what a worker sent

    BudgetExceeded                          raised instead of running a handler whose tenant,
                                            user, endpoint or fleet is over an enforced budget
                                            (an outcome for the caller, not gpuledger's error)
"""

from __future__ import annotations

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "GpuledgerError",
    "LedgerError",
    "PricingError",
    "SidecarError",
]


class GpuledgerError(Exception):
    """Base class of every error gpuledger raises on purpose."""


class ConfigError(GpuledgerError, ValueError):
    """A setting was given a value gpuledger cannot use.

    ``setting`` is the keyword name (``config`` for the settings file itself), ``value`` what was
    given and ``source`` where it came from: ``"argument"``, ``"default"``, the environment
    variable's name, or ``"file PATH"`` for a settings file (``"file PATH [tool.gpuledger]"``
    for a ``pyproject.toml``).
    """

    def __init__(self, setting: str, value: object, reason: str, source: str = "argument") -> None:
        self.setting = setting
        self.value = value
        self.reason = reason
        self.source = source
        if source in ("argument", "default") or source.startswith("file "):
            where = source
        else:
            where = f"environment variable {source}"
        super().__init__(f"setting {setting!r} = {value!r} (from {where}): {reason}")


class PricingError(GpuledgerError, ValueError):
    """A pricing catalogue could not be loaded; ``problems`` lists every reason found."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"pricing file {path} has {len(problems)} problem(s):\n{lines}")


class LedgerError(GpuledgerError):
    """The ledger cannot be opened or read (missing, corrupt, or written by a newer version)."""


class SidecarError(GpuledgerError):
    """The sidecar cannot start (its spool cannot be used, or it cannot listen), or, on the
    worker's side, it did not take what was sent (unreachable, refused, or answered an error)."""


class BudgetExceeded(Exception):
    """The request was refused before its handler ran: an enforced budget is spent.

    ``scope`` (tenant, user, endpoint, total) and ``key`` say whose budget, ``window`` (``30d``)
    which one, ``limit_usd`` and ``spent_usd`` how far over, and ``retry_after_s`` how long until
    the oldest spend in the window leaves it (the earliest a retry could pass: a lower bound).
    Platform adapters turn it into their way of refusing (HTTP 429 with ``Retry-After``).
    """

    def __init__(
        self,
        scope: str,
        key: str,
        window: str,
        limit_usd: float,
        spent_usd: float,
        retry_after_s: int,
    ) -> None:
        self.scope = scope
        self.key = key
        self.window = window
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.retry_after_s = retry_after_s
        who = "the fleet" if scope == "total" else f"{scope} {key!r}"
        super().__init__(
            f"{who} is over its {window} budget: spent {spent_usd:.6g} of {limit_usd:.6g} USD; "
            f"retry after {retry_after_s} s"
        )
