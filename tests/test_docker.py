"""docker/ files, checked statically (no Docker engine here): what they copy exists."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "docker").glob("*.Dockerfile")))
def test_every_copy_source_exists(dockerfile: Path) -> None:
    """Each COPY source is a file or folder of the repository (the build context is its root)."""
    copies = 0
    for line in dockerfile.read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        words = shlex.split(line)
        sources = [word for word in words[1:-1] if not word.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
            copies += 1
    assert copies > 0
    assert "USER " in dockerfile.read_text(), "the image should not run as root"
