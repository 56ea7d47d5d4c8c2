"""In-process sidecars for tests: started on 127.0.0.1:0 with a spool and a ledger in a test's
folder, quick retries, and stopped at the end (:func:`in_process_sidecars`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gpuledger.sidecar._server import Sidecar


@contextlib.contextmanager
def in_process_sidecars(folder: Path, **defaults: Any) -> Iterator[Callable[..., Sidecar]]:
    """A factory of started sidecars (``make(**options)``; options over ``defaults`` over the
    ones here: no watcher thread unless asked, retries from 20 ms, a 0.5 s export timeout),
    each stopped when the block ends."""
    started: list[Sidecar] = []

    def make(**options: Any) -> Sidecar:
        settings = {
            "listen": "127.0.0.1:0",
            "spool": str(folder / "spool.db"),
            "ledger": str(folder / "ledger.db"),
            "backoff_s": (0.02, 0.1),
            "export_timeout_s": 0.5,
            "watch_interval_s": None,
            **defaults,
            **options,
        }
        sidecar = Sidecar(**settings).start()
        started.append(sidecar)
        return sidecar

    try:
        yield make
    finally:
        for sidecar in started:
            sidecar.stop(1.0)
