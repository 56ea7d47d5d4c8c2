"""Process-wide state: the one agent, the worker state, and the hooks that flush at exit.

structlog's ``_config`` is the model: ``configure`` replaces the agent, ``current_agent`` reads
it, ``reset_for_tests`` forgets everything. The platform adapters reach the agent only through
the functions here (``ensure_agent``, ``current_agent``, ``get_agent``, ``now_ns``,
``install_exit_hooks``), never its private names; ``tests/test_layering.py`` keeps it so.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from gpuledger import _guard
from gpuledger._agent import Agent
from gpuledger._build import pseudonym
from gpuledger._location import check_ledger_location
from gpuledger._settings import resolve_settings, set_outside_arguments
from gpuledger._sinks import Sink
from gpuledger._worker import WorkerState

__all__ = [
    "check_environment",
    "configure",
    "current_agent",
    "ensure_agent",
    "flush",
    "forget_worker_state",
    "get_agent",
    "install_exit_hooks",
    "now_ns",
    "reset_for_tests",
    "shutdown",
    "worker_for",
    "worker_state",
]

_agent: Agent | None = None
_agent_lock = threading.RLock()
_worker_state: WorkerState | None = None
_hooks_installed = False
_sigterm_installed = False
_previous_sigterm: Any = None


def worker_for(prewarm_threshold_s: float, clock: Any) -> WorkerState:
    """The process's worker state: one per process, kept across re-configuration."""
    global _worker_state
    with _agent_lock:
        if _worker_state is None:
            _worker_state = WorkerState(prewarm_threshold_s)
        else:
            _worker_state.prewarm_threshold_ns = int(prewarm_threshold_s * 1e9)
        # A test clock may say when "the process" started, to make cold starts exact.
        process_start = getattr(clock, "process_start_ns", None)
        if process_start is not None:
            _worker_state.process_start_ns = process_start()
            _worker_state.process_start_source = "clock"
        return _worker_state


def worker_state() -> WorkerState:
    """The worker state, created before configuration if phases or handlers need it."""
    global _worker_state
    with _agent_lock:
        if _worker_state is None:
            _worker_state = WorkerState(10.0)
        return _worker_state


def forget_worker_state() -> None:
    """Start the next configuration as a new worker process would (the demo's simulation)."""
    global _worker_state
    with _agent_lock:
        _worker_state = None


def configure(*, sinks: Sequence[Sink] | None = None, **settings: Any) -> Agent:
    """Configure gpuledger for this process (see the README's table for every setting).

    Arguments win over ``GPULEDGER_*``/``OTEL_*`` environment variables, which win over the
    defaults. An unknown keyword or a bad value raises ConfigError. Calling it again replaces
    the configuration: the previous agent is flushed and shut down first. ``sinks`` replaces
    where records go (default: the ledger, or the sidecar with the ledger as its fallback):
    see ``gpuledger._sinks``.
    """
    global _agent
    resolved = resolve_settings(settings)
    with _agent_lock:
        new_agent = Agent(
            resolved, worker_for(resolved.prewarm_threshold_s, resolved.clock), sinks=sinks
        )
        old, _agent = _agent, new_agent
        install_exit_hooks()
    if old is not None:
        old.shutdown()
    return new_agent


def check_environment() -> None:
    """Check the settings the environment gives, as the first invocation would use them.

    ``@traced_handler`` calls it at decoration when nothing is configured yet, so that a bad
    ``GPULEDGER_*`` value fails at import (the deploy), never on a request. Raises ConfigError.
    """
    resolved = resolve_settings({})
    if resolved.sidecar is None:
        check_ledger_location(resolved.ledger, resolved.sources.get("ledger", "default"))
    if "otlp" in resolved.resolved_exporters() and (resolved.tracing or resolved.metrics):
        from gpuledger.exporters import otlp_protocol  # noqa: PLC0415

        for signal in ("TRACES", "METRICS"):
            otlp_protocol(signal)


def get_agent() -> Agent | None:
    """The agent, configured from the environment on first use; None if that failed (logged)."""
    agent = _agent
    return agent if agent is not None else ensure_agent()


def ensure_agent(**defaults: Any) -> Agent | None:
    """The agent; on first use configured from the environment, with ``defaults`` for the
    settings the environment leaves unset (a platform adapter's own: Potassium's platform, Cog's
    flush policy). A configuration that fails is contained, counted and logged: the handler runs
    untraced, and None is returned. The platform adapters' one way in (no private names)."""
    agent = _agent
    if agent is not None:
        return agent
    with _agent_lock:
        if _agent is not None:
            return _agent
        overrides = {
            name: value for name, value in defaults.items() if not set_outside_arguments(name)
        }
        try:
            return configure(**overrides)
        except Exception as error:
            # A bad environment must not break the handler: it runs, untraced, and we say why.
            _guard.record_failure("configure", error)
            return None


def now_ns() -> int:
    """Wall time, Unix ns, on the configured agent's clock (a test's, the demo's), else the
    system's."""
    agent = _agent
    return agent.now_ns() if agent is not None else time.time_ns()


def current_agent() -> Agent | None:
    """The agent if one is configured; never configures."""
    return _agent


def flush(timeout: float | None = None) -> bool:
    """Write and export everything finished so far, waiting at most ``timeout`` seconds.

    Returns False if the wait timed out. Does nothing (and returns True) before configuration.
    """
    agent = _agent
    return True if agent is None else agent.flush(timeout)


def shutdown(timeout: float | None = None) -> bool:
    """Flush and stop gpuledger in this process; the next invocation configures it anew."""
    global _agent
    with _agent_lock:
        agent, _agent = _agent, None
    return True if agent is None else agent.shutdown(timeout)


def reset_for_tests() -> None:
    """Shut down and forget all process-wide state (the test suite's fixture calls it)."""
    global _worker_state
    shutdown(timeout=5.0)
    with _agent_lock:
        _worker_state = None
    _guard.reset()
    _guard.set_strict(False)
    pseudonym.cache_clear()


def install_exit_hooks() -> None:
    """At exit and on SIGTERM, flush; after fork, start afresh in the child. Idempotent.

    Called by ``configure()`` and, in the main thread, by ``@traced_handler`` when it decorates:
    a signal handler can only be set from the main thread, and some platforms configure
    elsewhere (Potassium runs ``@app.init`` in a thread of its own), so decoration at import is
    where the SIGTERM handler is set for them. It costs no thread and does no I/O.
    """
    global _hooks_installed, _sigterm_installed, _previous_sigterm
    if not _hooks_installed:
        _hooks_installed = True
        atexit.register(_at_exit)
        os.register_at_fork(after_in_child=_after_fork_in_child)
    # Platforms stop workers with SIGTERM, whose default action skips atexit. Only when nobody
    # else handles it: flush, then let the default action run as if we were not here.
    if not _sigterm_installed and threading.current_thread() is threading.main_thread():
        _sigterm_installed = True
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)


def _at_exit() -> None:
    global _agent
    with _agent_lock:
        agent, _agent = _agent, None
    if agent is not None:
        with contextlib.suppress(Exception):  # nothing may fail at exit
            agent.shutdown(at_exit=True)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _at_exit()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    # The writer thread and locks did not survive the fork; the child is a new worker.
    global _agent, _worker_state, _agent_lock
    _agent_lock = threading.RLock()
    _worker_state = None
    parent, _agent = _agent, None
    if parent is not None:
        _agent = Agent(
            parent.settings, worker_for(parent.settings.prewarm_threshold_s, parent.settings.clock)
        )
