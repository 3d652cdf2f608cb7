"""Shared fixtures: the real face sets beside the project, and a small real gallery built once."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from engine import Engine, EngineConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEV = SHARED / "faces" / "dev"
CALIB = SHARED / "faces" / "calib"


def dev_identities() -> dict[str, list[Path]]:
    """Identity name -> its photos, sorted by number."""
    out = {}
    for d in sorted(p for p in DEV.iterdir() if p.is_dir()):
        out[d.name] = sorted(d.glob("*.jpg"), key=lambda p: int(p.stem))
    return out


def make_config(data_dir: Path, **overrides: object) -> EngineConfig:
    """An engine configuration for tests: a temporary data dir, one worker thread per core."""
    return replace(EngineConfig(data_dir=data_dir, require_case=False), **overrides)  # type: ignore[arg-type]


async def build_gallery(data_dir: Path) -> None:
    """Enroll the first photo of every dev identity, labelled with the identity's name."""
    engine = await Engine.open(make_config(data_dir))
    try:
        for name, photos in dev_identities().items():
            await engine.enroll(
                photos[0].read_bytes(), source_url=f"https://gallery.example/{name}/1.jpg", subject=name, save=False
            )
    finally:
        await engine.close()


@pytest.fixture(scope="session")
def gallery_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the dev gallery (first photo of each of the 28 identities); do not modify it."""
    if not DEV.is_dir():
        pytest.fail(f"the shared face set is missing: {DEV} (it lives beside the project root)")
    path = tmp_path_factory.mktemp("gallery")
    asyncio.run(build_gallery(path))
    return path


@pytest.fixture
def gallery_copy(tmp_path: Path, gallery_dir: Path) -> Path:
    """A private copy of the dev gallery that a test may change."""
    dest = tmp_path / "data"
    shutil.copytree(gallery_dir, dest)
    return dest
