"""Compile every Triton kernel of attngan.kernels for an H100 (sm_90) on a machine without a GPU.

Run as a script by any Python with torch and triton (tests/test_triton_compile.py starts it in a
subprocess, since the test session switches the Triton interpreter on and an interpreted kernel
cannot be compiled; the kernel files are loaded by path, so the project need not be installed
in that Python, e.g. one with the Triton version of the GPU machine):

    python tests/triton_sm90.py      # prints one JSON line per compiled launch

The real launchers (kernels/damsm.py, kernels/word_attention.py) are called on CPU tensors of
the project's sizes, with each kernel's `run` replaced by a recorder, so the tile sizes,
constexpr flags, num_warps and the JIT's specializations of the arguments (16-byte aligned
pointers, integers divisible by 16) are exactly what a GPU run would use; each recorded launch
is then compiled by triton.compile for GPUTarget("cuda", 90, 32) down to a cubin with the
ptxas Triton ships, and ptxas -v reports its registers and spilled bytes. This proves the
kernels pass Triton's front end, its GPU lowering (tl.dot shape and layout rules the
interpreter never checks) and ptxas, for the installed Triton. It does not run them:
numerical correctness on the hardware is for bench/gpu_check.sh.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit(
        "tests/triton_sm90.py: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)"
    )

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


def _load_kernels(name: str):
    """kernels/<name>.py as a module (it imports only torch and triton)."""
    path = Path(__file__).resolve().parents[1] / "kernels" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"attngan_kernels_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


damsm, word_attention = _load_kernels("damsm"), _load_kernels("word_attention")
H100 = GPUTarget("cuda", 90, 32)
_TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
}
_OPTIONS = ("num_warps", "num_stages")


def _signature(kernel, args, kwargs):
    """(signature, constexprs, attrs, options) of one launch, as triton.compile takes them. attrs
    are the specializations the JIT would make for these arguments: a pointer 16-byte aligned or
    an integer divisible by 16 is compiled as such (tt.divisibility), which decides whether the
    compiler may vectorize loads, so the registers reported are those of the kernel a GPU runs."""
    signature, constexprs, attrs = {}, {}, {}
    values = dict(
        zip(kernel.arg_names, args), **{k: v for k, v in kwargs.items() if k not in _OPTIONS}
    )
    for index, param in enumerate(kernel.params):
        value = values[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = value
            continue
        if isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _TYPES[value.dtype]
            aligned = value.data_ptr() % 16 == 0
        elif isinstance(value, bool):
            signature[param.name] = "i1"
            aligned = False
        elif isinstance(value, int):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            aligned = value % 16 == 0
        elif isinstance(value, float):
            signature[param.name] = "fp32"
            aligned = False
        else:
            raise TypeError(f"{kernel.__name__}: argument {param.name} of type {type(value)}")
        if aligned and not param.do_not_specialize:
            attrs[(index,)] = [["tt.divisibility", 16]]
    options = {k: kwargs[k] for k in _OPTIONS if k in kwargs}
    return signature, constexprs, attrs, options


def ptxas_usage(ptx: str) -> dict:
    """registers and spill_bytes (stores) of the kernel in `ptx`, from the ptxas Triton ships."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    arch = re.search(r"^\.target\s+(sm_\w+)", ptx, re.MULTILINE).group(1)
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        report = subprocess.run(
            [
                str(ptxas),
                "-v",
                f"-arch={arch}",
                str(source),
                "-o",
                str(Path(folder) / "kernel.cubin"),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    return dict(
        registers=int(re.search(r"Used (\d+) registers", report).group(1)),
        spill_bytes=int(re.search(r"(\d+) bytes spill stores", report).group(1)),
    )


def record_launches(kernels, call):
    """Run call() with every kernel in `kernels` recording instead of launching."""
    launches = []
    saved = {kernel: kernel.run for kernel in kernels}

    def recorder(kernel):
        def run(*args, grid, warmup, **kwargs):
            launches.append((kernel, _signature(kernel, args, kwargs)))

        return run

    try:
        for kernel in kernels:
            kernel.run = recorder(kernel)
        call()
    finally:
        for kernel, run in saved.items():
            kernel.run = run
    return launches


def _damsm_cases():
    kernels = [
        damsm._damsm_word_similarity_fwd_kernel,
        damsm._damsm_word_similarity_bwd_kernel,
        damsm._damsm_word_similarity_bwd_words_kernel,
    ]
    for dtype in (torch.float32, torch.bfloat16):
        for name, (caps, dim, words, regions) in {
            "cub": (48, 256, 18, 289),
            "small": (5, 40, 7, 37),
        }.items():
            w = torch.randn(caps, dim, words, dtype=dtype)
            r = torch.randn(caps + 1, dim, regions, dtype=dtype)
            n = torch.full((caps,), words)
            g = torch.randn(caps + 1, caps)
            yield (
                f"damsm {name} {_TYPES[dtype]}",
                kernels,
                lambda w=w, n=n, r=r, g=g: (
                    damsm.damsm_word_similarity_fwd(w, n, r, 4.0, 5.0),
                    damsm.damsm_word_similarity_bwd(g, w, n, r, 4.0, 5.0, True),
                ),
            )
    # several captions per program, which bench/tune_damsm_tiles.py tries on a GPU: they must
    # compile too (their spills are reported, not bounded)
    w, r = (
        torch.randn(48, 256, 18, dtype=torch.bfloat16),
        torch.randn(49, 256, 289, dtype=torch.bfloat16),
    )
    n, g = torch.full((48,), 18), torch.randn(49, 48)
    for group in (2, 4):

        def call(group=group):
            saved = dict(damsm.TILES)
            try:
                for kernel, (bf16, fp32) in saved.items():
                    damsm.TILES[kernel] = ((bf16[0], group, *bf16[2:]), fp32)
                damsm.damsm_word_similarity_bwd(g, w, n, r, 4.0, 5.0, True)
            finally:
                damsm.TILES.update(saved)

        yield f"damsm cub-group{group} bf16", kernels, call


def _word_attention_cases():
    kernels = [word_attention._word_attention_fwd_kernel, word_attention._word_attention_bwd_kernel]
    sizes = {"cub": (20, 32, 18, 64), "coco": (14, 48, 12, 17), "c128-l32": (3, 128, 32, 9)}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for name, (batch, channels, words, side) in sizes.items():
            q = torch.randn(batch, channels, side, side, dtype=dtype)
            w = torch.randn(batch, channels, words, dtype=dtype)
            n = torch.full((batch,), words)
            ga = torch.randn(batch, words, side, side, dtype=dtype)

            def call(q=q, w=w, n=n, ga=ga):
                for return_attn, concat in ((True, False), (False, False), (False, True)):
                    out, _ = word_attention.word_attention_fwd(q, w, n, return_attn, concat)
                    word_attention.word_attention_bwd(
                        out, ga if return_attn else None, q, w, n, concat
                    )

            yield f"word_attention {name} {_TYPES[dtype]}", kernels, call


def main() -> int:
    failures = 0
    for case, kernels, call in [*_damsm_cases(), *_word_attention_cases()]:
        for kernel, (signature, constexprs, attrs, options) in record_launches(kernels, call):
            flags = {k: v for k, v in constexprs.items() if not k.startswith("BLOCK_")}
            line = dict(
                case=case,
                kernel=kernel.__name__,
                flags=flags,
                options=options,
                blocks={k: v for k, v in constexprs.items() if k.startswith("BLOCK_")},
            )
            try:
                compiled = triton.compile(
                    ASTSource(kernel, signature, constexprs, attrs), target=H100, options=options
                )
                line.update(
                    ok=True,
                    cubin_bytes=len(compiled.asm["cubin"]),
                    shared_bytes=compiled.metadata.shared,
                    **ptxas_usage(compiled.asm["ptx"]),
                )
            except Exception as error:  # reported per launch, the run goes on
                failures += 1
                line.update(ok=False, error=f"{type(error).__name__}: {str(error)[-2000:]}")
            print(json.dumps(line), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    print(json.dumps(dict(triton=triton.__version__, target=str(H100))), flush=True)
    sys.exit(main())
