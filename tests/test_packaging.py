"""What `pip install .` installs: a wheel built from this tree (without the compiled extension,
which other tests cover) holds every package, the Triton kernels as attngan.kernels, the YAML
presets as attngan.configs and the page of `attngan serve`, so that `attngan demo`, `--config
<preset>` and `attngan serve` work outside a clone; a source distribution holds every C++ and
CUDA source, whatever this machine builds."""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    "setup.py",
    "pyproject.toml",
    "MANIFEST.in",
    "README.md",
    "LICENSE",
    "attngan",
    "kernels",
    "configs",
    "csrc",
]


def _copy_of_the_sources(folder: Path) -> Path:
    """The sources in `folder` (a build in the tree itself would reuse its build/ folder), without
    what a build or an import left in them."""
    folder.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.so")
            )
        else:
            shutil.copy2(ROOT / name, folder / name)
    return folder


def test_wheel_holds_the_kernels_and_the_presets(tmp_path):
    source = _copy_of_the_sources(tmp_path / "source")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "--no-cache-dir",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
            str(source),
        ],
        env={**os.environ, "ATTNGAN_NO_EXTENSION": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheel").glob("attngan-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"attngan/configs/{path.name}" for path in (ROOT / "configs").glob("*.yaml")}
    expected |= {f"attngan/kernels/{path.name}" for path in (ROOT / "kernels").glob("*.py")}
    expected |= {
        f"attngan/{path.relative_to(ROOT / 'attngan')}" for path in (ROOT / "attngan").rglob("*.py")
    }
    expected.add("attngan/serve/page.html")
    assert len(expected) > 40 and not expected - names, sorted(expected - names)


def test_source_distribution_holds_every_extension_source(tmp_path):
    source = _copy_of_the_sources(tmp_path / "source")
    result = subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)],
        cwd=source,
        env={**os.environ, "ATTNGAN_NO_EXTENSION": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (archive,) = tmp_path.glob("attngan-*.tar.gz")
    names = {name.split("/", 1)[1] for name in tarfile.open(archive).getnames() if "/" in name}
    expected = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "csrc").rglob("*")
        if path.suffix in (".cpp", ".cu", ".h")
    }
    expected |= {f"configs/{path.name}" for path in (ROOT / "configs").glob("*.yaml")}
    expected.add("attngan/serve/page.html")
    assert any(name.endswith(".cu") for name in expected) and not expected - names, sorted(
        expected - names
    )
