"""What ships with the package besides code: a wheel built from the tree contains the
playground page and the trained tiny-shapes weights."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = "app/api/static/playground.html"


def test_the_wheel_contains_the_playground_and_the_shipped_model(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    skip = shutil.ignore_patterns("__pycache__")
    for package in ("app", "worker", "ldm_client"):
        shutil.copytree(ROOT / package, source / package, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", str(source), "-w", str(tmp_path / "dist")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert PAGE in archive.namelist(), (
            'pyproject.toml needs "app.api" = ["static/*.html"] in [tool.setuptools.package-data]'
        )
        assert archive.read(PAGE) == (ROOT / PAGE).read_bytes()
        weights = ROOT / "worker" / "weights" / "tiny-shapes"
        shipped = {str(p.relative_to(ROOT)) for p in weights.rglob("*") if p.is_file()}
        assert shipped and shipped <= set(archive.namelist()), "worker package-data: weights"
