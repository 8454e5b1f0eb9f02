"""What `pip install .` installs: a wheel built from this tree (without the compiled extension,
which other tests cover) holds every package, the Triton kernels as attngan.kernels and the YAML
presets as attngan.configs, so that `attngan demo` and `--config <preset>` work outside a
clone."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["setup.py", "pyproject.toml", "README.md", "LICENSE", "attngan", "kernels", "configs",
           "csrc"]


def test_wheel_holds_the_kernels_and_the_presets(tmp_path):
    # A copy of the sources: a build in the tree itself would reuse its build/ folder.
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
         "--no-cache-dir", "-q", "-w", str(tmp_path / "wheel"), str(source)],
        env={**os.environ, "ATTNGAN_NO_EXTENSION": "1"},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheel").glob("attngan-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"attngan/configs/{path.name}" for path in (ROOT / "configs").glob("*.yaml")}
    expected |= {f"attngan/kernels/{path.name}" for path in (ROOT / "kernels").glob("*.py")}
    expected |= {f"attngan/{path.relative_to(ROOT / 'attngan')}"
                 for path in (ROOT / "attngan").rglob("*.py")}
    assert len(expected) > 40 and not expected - names, sorted(expected - names)
