"""The CUDA sources compile, GPU or not: the kernels (csrc/cuda/*.cu) with nvcc for sm_90 (H100),
and their ATen launchers (csrc/cuda/*.cpp) against a CUDA-enabled torch's headers. The C++ CPU
kernels and the bindings, which a GPU machine's build compiles against its own torch, are
checked against those headers too (they use ATen internals such as at::native::cpublas).

The .cu files are pure CUDA (no torch headers), so they compile on any machine with nvcc; they
are compiled as C++17 and as C++20, since torch's BuildExtension picks the standard by torch
version. The launchers need the CUDA parts of torch's headers, which a CPU build of torch does
not ship: they are checked (g++ -fsyntax-only) against the installed torch's headers when that
torch has CUDA, else against the include directories listed in ATTNGAN_CUDA_TORCH_INCLUDE
(os.pathsep-separated: a CUDA torch's `include` and `include/torch/csrc/api/include`, and the
CUDA library headers they include, such as cusparse.h; .ci/run fills it from local wheels
when it finds them). Each check is skipped with its reason where its compiler or headers are
absent.
"""

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
LAUNCHER_FILES = sorted((ROOT / "csrc" / "cuda").glob("*.cpp"))
CPU_FILES = sorted((ROOT / "csrc" / "cpu").glob("*.cpp")) + sorted((ROOT / "csrc").glob("*.cpp"))


def _nvcc():
    home = os.environ.get("CUDA_HOME")
    candidate = Path(home) / "bin" / "nvcc" if home else None
    return str(candidate) if candidate and candidate.exists() else shutil.which("nvcc")


def _cuda_include():
    """The CUDA toolkit's include directory (cuda_runtime.h), or None."""
    nvcc = shutil.which("nvcc")
    homes = [
        os.environ.get("CUDA_HOME"),
        Path(nvcc).resolve().parents[1] if nvcc else None,
        "/usr/local/cuda",
    ]
    for home in filter(None, homes):
        if (Path(home) / "include" / "cuda_runtime.h").exists():
            return Path(home) / "include"
    return None


def _cuda_torch_includes():
    """Include directories with a CUDA torch's headers, or None."""
    listed = os.environ.get("ATTNGAN_CUDA_TORCH_INCLUDE")
    if listed:
        return [Path(p) for p in listed.split(os.pathsep) if p]
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        return None
    return [Path(p) for p in cpp_extension.include_paths()]


def test_cuda_sources_exist():
    assert CU_FILES and LAUNCHER_FILES, (
        "csrc/cuda must hold the .cu kernels and their .cpp launchers"
    )


@pytest.mark.parametrize("std", ["c++17", "c++20"])
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cu_file_compiles_for_sm90(source, std, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip(
            "nvcc not found (put it on PATH or set CUDA_HOME) - CUDA kernels not compile-checked"
        )
    # the flags setup.py gives nvcc, the standard BuildExtension adds, and the target GPU
    cmd = [
        nvcc,
        "-c",
        "-arch=sm_90",
        "-O3",
        f"-std={std}",
        "--use_fast_math",
        "-lineinfo",
        f"-I{ROOT / 'csrc'}",
        str(source),
        "-o",
        str(tmp_path / (source.stem + ".o")),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"nvcc failed on {source.name}:\n{result.stderr[-4000:]}"
    assert (tmp_path / (source.stem + ".o")).stat().st_size > 0


def _syntax_check_against_cuda_torch(source, extra_flags):
    """g++ -fsyntax-only of `source` against a CUDA torch's headers (skips where they, the CUDA
    toolkit's headers or the compiler are absent)."""
    includes = _cuda_torch_includes()
    if includes is None:
        pytest.skip(
            "this torch is a CPU build, without ATen's CUDA headers; set "
            "ATTNGAN_CUDA_TORCH_INCLUDE to a CUDA torch's include directories to check "
            "the sources against them"
        )
    if not any((path / "ATen" / "cuda" / "CUDAContext.h").exists() for path in includes):
        pytest.fail(
            f"no ATen/cuda/CUDAContext.h under {[str(p) for p in includes]}: "
            f"ATTNGAN_CUDA_TORCH_INCLUDE must name a CUDA torch's include directory"
        )
    cuda_include = _cuda_include()
    if cuda_include is None:
        pytest.skip("the CUDA toolkit's headers were not found (set CUDA_HOME)")
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ({compiler})")
    cmd = [
        compiler,
        "-std=c++20",
        "-fsyntax-only",
        "-Wall",
        "-Werror=return-type",
        *extra_flags,
        f"-I{ROOT / 'csrc'}",
        f"-I{cuda_include}",
        *[f"-I{path}" for path in includes],
        str(source),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{compiler} failed on {source.name}:\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("source", LAUNCHER_FILES, ids=lambda p: p.name)
def test_cuda_launcher_compiles_against_cuda_torch_headers(source):
    _syntax_check_against_cuda_torch(source, [])


@pytest.mark.parametrize("source", CPU_FILES, ids=lambda p: p.name)
def test_cpu_source_compiles_against_cuda_torch_headers(source):
    # the flags setup.py gives the C++ compiler, and Python's headers (torch/extension.h)
    _syntax_check_against_cuda_torch(
        source, ["-O3", "-fopenmp", f"-I{sysconfig.get_paths()['include']}"]
    )
