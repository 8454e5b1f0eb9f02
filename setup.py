"""Build script for attngan: the Python package plus one optional compiled extension.

`attngan._C` is compiled from `csrc/` with torch's cpp_extension and ninja:
- the C++ CPU kernels (`csrc/cpu/*.cpp`) and the binding file are always attempted;
- the CUDA kernels (`csrc/cuda/*.cu`) only when the installed torch has CUDA and nvcc is found.
The install never fails because a compiler or nvcc is missing or a kernel does not build: it
prints what it skipped and the package falls back to its pure-PyTorch implementations. An
extension linked with its own copy of libstdc++ is refused the same way (it would crash at its
first error message).
Set ATTNGAN_NO_EXTENSION=1 to skip the extension entirely.

Install with torch already present and without build isolation, so pip never fetches torch:
    pip install --no-build-isolation -e .
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _say(message: str) -> None:
    print(f"[attngan setup] {message}", file=sys.stderr, flush=True)


def _libstdcxx_linked_statically(library: str) -> bool:
    """True when the shared library does not load libstdc++ but carries its own copy.

    A torch extension must share the process's libstdc++: with a private one it has its own
    iostreams and locale, and the first error message it formats crashes the process (seen with
    a compiler that links libstdc++ statically by default, /opt/gcc/bin/g++ of a GPU image). Read
    with readelf; False where readelf is missing (nothing to tell)."""
    import shutil
    import subprocess

    if shutil.which("readelf") is None:
        return False
    dynamic = subprocess.run(["readelf", "-d", library], capture_output=True, text=True).stdout
    return "libstdc++" not in dynamic


def _extension_and_cmdclass():
    """Return (ext_modules, cmdclass) for attngan._C, or ([], {}) when it cannot be built."""
    if os.environ.get("ATTNGAN_NO_EXTENSION") == "1":
        _say("ATTNGAN_NO_EXTENSION=1: skipping the compiled extension attngan._C")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _say(
            "torch is not importable at build time: skipping attngan._C "
            "(install torch first, then this package with --no-build-isolation)"
        )
        return [], {}

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    define_macros = []
    # No -std flag: BuildExtension adds the C++ standard the installed torch's headers need
    # (C++20 for torch 2.14, whose ATen.h refuses C++17).
    extra = {"cxx": ["-O3", "-fopenmp"]}
    with_cuda = (
        bool(cuda_sources)
        and torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
    )
    if with_cuda:
        define_macros.append(("ATTNGAN_WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "--use_fast_math", "-lineinfo"]
        extension_type = cpp_extension.CUDAExtension
        sources += cuda_sources
        _say(f"building attngan._C with CUDA kernels (nvcc from {cpp_extension.CUDA_HOME})")
    else:
        reason = (
            "this torch build has no CUDA"
            if torch.version.cuda is None
            else "nvcc was not found (set CUDA_HOME)"
        )
        _say(f"building attngan._C with CPU kernels only: {reason}; CUDA kernels skipped")
        extension_type = cpp_extension.CppExtension

    extension = extension_type(
        name="attngan._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )

    class OptionalBuildExtension(cpp_extension.BuildExtension):
        """Builds attngan._C if it can; on any compiler error, says so and carries on."""

        def run(self):
            try:
                super().run()
            except Exception as error:  # a missing compiler raises outside build_extension
                _say(
                    f"could not build attngan._C ({error}); "
                    "continuing with the pure-PyTorch implementations"
                )

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
                built = self.get_ext_fullpath(ext.name)
                if _libstdcxx_linked_statically(built):
                    os.remove(built)
                    raise RuntimeError(
                        f"the compiler {os.environ.get('CXX', 'c++')} linked libstdc++ statically "
                        "into it, which crashes the process at the extension's first error "
                        "message; set CXX to one that links it dynamically (e.g. CXX=/usr/bin/g++)"
                    )
            except Exception as error:
                _say(
                    f"could not build {ext.name} ({error}); "
                    "continuing with the pure-PyTorch implementations"
                )

    cmdclass = {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}
    return [extension], cmdclass


ext_modules, cmdclass = _extension_and_cmdclass()

setup(
    packages=[
        "attngan",
        "attngan.ops",
        "attngan.nn",
        "attngan.data",
        "attngan.train",
        "attngan.metrics",
        "attngan.serve",
        "attngan.kernels",
        "attngan.configs",
    ],
    package_dir={"attngan": "attngan", "attngan.kernels": "kernels", "attngan.configs": "configs"},
    package_data={"attngan.configs": ["*.yaml"], "attngan.serve": ["*.html"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
