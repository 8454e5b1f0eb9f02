"""Auto's measured choice: per op, dtype and shape, the fastest implementation on this machine.

On a device type in backend.MEASURED_DEVICE_TYPES, the first eager call of an op with
impl="auto" runs each candidate (the reference among them) on synthetic inputs of the call's
shape and dtype, forward and, where the call's inputs need gradients, backward, timed in
interleaved rounds. The fastest is kept in memory and in a JSON file (`cache_path`) under this
machine's identity (GPU, driver, CUDA, torch, Triton, attngan and a fingerprint of its kernels),
so another machine or other software measures again. A fused kernel is taken only when it beats
the reference by REQUIRED_GAIN: auto is never slower than the reference beyond timing noise.

Keys round each size up to a power of two: under torch.compile with dynamic shapes the key is
still a constant (Dynamo guards each size to its bucket instead of specialising it), and one
measurement, at the first call's exact sizes, serves the sizes of its bucket. Nothing is
measured inside torch.compile tracing, CUDA-graph capture or torch.cuda's sync debug mode: there
an undecided key takes the reference (the baseline auto must not fall below, which Inductor can
fuse with its neighbours), with a warning; a decided key is a lookup.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from attngan import __version__, backend

CACHE_VARIABLE = "ATTNGAN_TUNE_CACHE"
CACHE_FORMAT = 1
# How much faster than the reference another implementation must measure to be taken: above
# the spread of repeated timings on a GPU (about 1-2 %).
REQUIRED_GAIN = 0.03
# The sizes in a key, per op, as its entry in the cache file names them.
SIZE_NAMES = {
    "damsm_word_similarity": ("images", "captions", "dim", "words", "regions"),
    "word_attention": ("batch", "channels", "words", "height", "width"),
}
# Timing: calls per candidate before timing (the first compiles), rounds over all candidates,
# and calls per timed block, enough for BLOCK_SECONDS up to MAX_BLOCK_CALLS.
WARMUP_CALLS, ROUNDS, BLOCK_SECONDS, MAX_BLOCK_CALLS = 3, 7, 0.005, 100

# A key: (op, dtype name, sizes rounded up to powers of two, flags, exact sizes or None inside
# torch.compile). A plain tuple of constants: Dynamo passes it to backend.choose as one.
Key = tuple
_caches: dict[Path, dict] = {}  # path -> {machine identity: {entry: record}}
# Whether auto measures a call: run once per traced graph, which keeps it as a constant (it
# reads the environment, which Dynamo would otherwise guard on or break the graph for).
_measures = torch.compiler.assume_constant_result(backend.measures)


def cache_path() -> Path:
    """ATTNGAN_TUNE_CACHE, else $XDG_CACHE_HOME/attngan/autotune.json (~/.cache by default)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "attngan" / "autotune.json"


# ---------------------------------------------------------------------------------- keys


def _power_of_two_above(size) -> int:
    """The least power of two >= size: comparisons only, so Dynamo guards rather than
    specialises a dynamic size."""
    bucket = 1
    while bucket < size:
        bucket *= 2
    return bucket


def _key(op: str, dtype: torch.dtype, sizes: tuple, flags: tuple) -> Key:
    return (
        op,
        str(dtype).removeprefix("torch."),
        tuple(_power_of_two_above(s) for s in sizes),
        flags,
        None if torch.compiler.is_compiling() else tuple(int(s) for s in sizes),
    )


def _needing_grad(**tensors: torch.Tensor) -> tuple:
    """The flag "grad:<name>" of each input the call differentiates (the measurement runs the
    backward for those)."""
    if not torch.is_grad_enabled():
        return ()
    return tuple(f"grad:{name}" for name, tensor in tensors.items() if tensor.requires_grad)


def damsm_key(
    words: torch.Tensor, regions: torch.Tensor, dtype: torch.dtype, impl: str
) -> Optional[Key]:
    """The key of a damsm_word_similarity call (regions `[B_img, D, R]`, computed in `dtype`),
    None where auto does not measure."""
    if not _measures(words.device, impl):
        return None
    sizes = (regions.shape[0], words.shape[0], words.shape[1], words.shape[2], regions.shape[2])
    return _key("damsm_word_similarity", dtype, sizes, _needing_grad(words=words, regions=regions))


def word_attention_key(
    query: torch.Tensor, words: torch.Tensor, impl: str, return_attn: bool, concat: bool
) -> Optional[Key]:
    """The key of a word_attention call, None where auto does not measure."""
    if not _measures(query.device, impl):
        return None
    flags = (
        _needing_grad(query=query, words=words)
        + (("attn",) if return_attn else ())
        + (("concat",) if concat else ())
    )
    return _key(
        "word_attention", query.dtype, (*query.shape[:2], words.shape[2], *query.shape[2:]), flags
    )


def entry_name(key: Key) -> str:
    """The key as its cache file names it, e.g. "word_attention bfloat16 batch<=32 ... concat"."""
    op, dtype, buckets, flags, _ = key
    return " ".join(
        [op, dtype, *(f"{name}<={bucket}" for name, bucket in zip(SIZE_NAMES[op], buckets)), *flags]
    )


# ------------------------------------------------------------------------ the machine


def _driver_version() -> str:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return "unknown"
    match = re.search(r"Kernel Module(?: for \S+)?\s+(\d[\d.]*)", text)
    return match.group(1) if match else "unknown"


def cpu_model() -> str:
    """The CPU's model name (the machine's processor type where the system does not say)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def _kernels_fingerprint() -> str:
    """8 hex digits that change with the kernels: the Triton sources, and the compiled
    extension's size and time (a rebuild)."""
    digest = hashlib.sha256()
    kernels = importlib.util.find_spec("attngan.kernels")
    if kernels is not None and kernels.origin:
        for source in sorted(Path(kernels.origin).parent.glob("*.py")):
            digest.update(source.read_bytes())
    extension = backend.compiled_extension()
    if extension is not None:
        stat = os.stat(extension.__file__)
        digest.update(f"{stat.st_size} {stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:8]


def _triton_version() -> str:
    for distribution in ("triton", "pytorch-triton"):  # the second: PyTorch's nightly builds
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return "none"


@functools.lru_cache(maxsize=None)
def machine_identity(device: torch.device) -> str:
    """What a measurement holds for: the device, its driver, and the software that ran it."""
    if device.type == "cuda":
        where = [
            torch.cuda.get_device_name(device),
            f"driver {_driver_version()}",
            f"CUDA {torch.version.cuda}",
        ]
    else:
        where = [cpu_model()]
    return "; ".join(
        [
            *where,
            f"torch {torch.__version__}",
            f"triton {_triton_version()}",
            f"attngan {__version__} (kernels {_kernels_fingerprint()})",
        ]
    )


# ------------------------------------------------------------------------ the cache file


def _valid_record(record) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("impl"), str)
        and isinstance(record.get("ms"), dict)
        and all(isinstance(ms, (int, float)) for ms in record["ms"].values())
    )


def _read(path: Path) -> dict:
    """The file's {machine identity: {entry: record}}; {} when it is missing, and with a warning
    (once) when it cannot be read or is not a tuning cache: the next measurement rewrites it."""
    try:
        data = json.loads(path.read_text())
        machines = data.get("machines") if isinstance(data, dict) else None
        if (
            not isinstance(data, dict)
            or data.get("format") != CACHE_FORMAT
            or not isinstance(machines, dict)
            or not all(
                isinstance(entries, dict) and all(map(_valid_record, entries.values()))
                for entries in machines.values()
            )
        ):
            raise ValueError(f"not a tuning cache of format {CACHE_FORMAT}")
        return machines
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as error:  # json.JSONDecodeError and UnicodeError included
        backend.warn_once(
            "autotune",
            f"ignoring the tuning cache {path} ({error}); auto measures again and rewrites it",
            stacklevel=4,
        )
        return {}


def _recorded(path: Path) -> dict:
    if path not in _caches:
        _caches[path] = _read(path)
    return _caches[path]


def _store(device: torch.device, key: Key, record: dict) -> None:
    """Keep `record` in memory and in the cache file, merged with what the file holds now
    (another process may have added entries), written atomically."""
    path = cache_path()
    merged = _read(path)
    for identity, entries in _recorded(path).items():
        merged.setdefault(identity, {}).update(entries)
    merged.setdefault(machine_identity(device), {})[entry_name(key)] = record
    _caches[path] = merged
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(
            json.dumps({"format": CACHE_FORMAT, "machines": merged}, indent=1, sort_keys=True)
            + "\n"
        )
        os.replace(partial, path)
    except OSError as error:
        if partial.is_file():
            partial.unlink()
        backend.warn_once(
            "autotune",
            f"cannot write the tuning cache {path} ({error}); this "
            f"process keeps its measurements in memory (set {CACHE_VARIABLE} to a "
            f"writable file)",
            stacklevel=5,
        )


def lookup(device: torch.device, key: Key) -> Optional[dict]:
    """The record of `key` on this machine: {"impl", "ms": {impl: ms}, "measured_at"}, or None."""
    return _recorded(cache_path()).get(machine_identity(device), {}).get(entry_name(key))


def measured_ms(device: torch.device, key: Optional[Key], impl: str) -> Optional[dict]:
    """{candidate: ms} of the measurement that chose `impl` for `key`, None if none did."""
    record = None if key is None else lookup(device, key)
    return record["ms"] if record is not None and record["impl"] == impl else None


def recorded() -> dict:
    """Every machine's records in the cache file, as it is now."""
    return _read(cache_path())


def clear() -> bool:
    """Delete the cache file and forget its records; False if there was none."""
    path = cache_path()
    _caches.pop(path, None)
    try:
        path.unlink()
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


# ------------------------------------------------------------------------ measuring


def _features(
    generator: torch.Generator,
    shape: tuple,
    scale: float,
    dtype: torch.dtype,
    device: torch.device,
    requires_grad: bool,
) -> torch.Tensor:
    values = torch.randn(shape, generator=generator) * scale
    return values.to(device, dtype).requires_grad_(requires_grad)


def _run_damsm(impl: str, device: torch.device, key: Key) -> tuple[Callable, list]:
    """(a call of damsm_word_similarity with `impl` on synthetic inputs of `key`, its leaves).
    Features N(0, D^-1/2): scores of unit spread; every caption has all L words, the fused
    kernels' most work (they skip padded words, the reference does not)."""
    from attngan.ops.damsm import damsm_word_similarity

    _, dtype, _, flags, (images, captions, dim, num_words, num_regions) = key
    dtype, generator = getattr(torch, dtype), torch.Generator().manual_seed(0)
    words = _features(
        generator, (captions, dim, num_words), dim**-0.25, dtype, device, "grad:words" in flags
    )
    regions = _features(
        generator, (images, dim, num_regions), dim**-0.25, dtype, device, "grad:regions" in flags
    )
    lengths = torch.full((captions,), num_words)
    return (lambda: damsm_word_similarity(words, lengths, regions, impl=impl)), [words, regions]


def _run_word_attention(impl: str, device: torch.device, key: Key) -> tuple[Callable, list]:
    """As _run_damsm, for word_attention (its first output: the map's gradient is not used)."""
    from attngan.ops.word_attention import word_attention

    _, dtype, _, flags, (batch, channels, num_words, height, width) = key
    dtype, generator = getattr(torch, dtype), torch.Generator().manual_seed(0)
    query = _features(
        generator,
        (batch, channels, height, width),
        channels**-0.25,
        dtype,
        device,
        "grad:query" in flags,
    )
    words = _features(
        generator,
        (batch, channels, num_words),
        channels**-0.25,
        dtype,
        device,
        "grad:words" in flags,
    )
    lengths = torch.full((batch,), num_words)

    def call():
        out = word_attention(
            query, words, lengths, impl=impl, return_attn="attn" in flags, concat="concat" in flags
        )
        return out[0] if "attn" in flags else out

    return call, [query, words]


_RUNS = {"damsm_word_similarity": _run_damsm, "word_attention": _run_word_attention}


def _workload(op: str, impl: str, device: torch.device, key: Key) -> Callable[[], None]:
    """One forward (and backward where the key's call differentiates) of `op` with `impl`, on
    its own inputs: the caller's tensors, autograd graph and random streams are not touched."""
    call, leaves = _RUNS[op](impl, device, key)
    leaves = [leaf for leaf in leaves if leaf.requires_grad]

    def run() -> None:
        with torch.autocast(device.type, enabled=False), torch.set_grad_enabled(bool(leaves)):
            out = call()
            if leaves:
                torch.autograd.grad(out, leaves, torch.ones_like(out))

    return run


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_candidates(runs: dict[str, Callable[[], None]], device: torch.device) -> dict[str, float]:
    """Seconds per call of each run: the median over ROUNDS rounds, each timing every run in
    turn (so all see the same clocks and load) over a block of back-to-back calls, the time
    between synchronisations. A host-bound call is charged its launch time, as in training."""
    for run in runs.values():
        for _ in range(WARMUP_CALLS):
            run()
    block = {}
    for name, run in runs.items():
        _synchronize(device)
        started = time.perf_counter()
        run()
        _synchronize(device)
        once = time.perf_counter() - started
        block[name] = max(1, min(MAX_BLOCK_CALLS, round(BLOCK_SECONDS / max(once, 1e-9))))
    samples = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, run in runs.items():
            _synchronize(device)
            started = time.perf_counter()
            for _ in range(block[name]):
                run()
            _synchronize(device)
            samples[name].append((time.perf_counter() - started) / block[name])
    return {name: statistics.median(times) for name, times in samples.items()}


def _measure(op: str, device: torch.device, key: Key, candidates: tuple) -> str:
    runs = {}
    for impl in candidates:
        run = _workload(op, impl, device, key)
        try:
            run()  # the first call compiles; a kernel that cannot run here is left out
        except Exception as error:  # noqa: BLE001 (a compiler's or a launcher's, of any type)
            if impl == "reference":
                raise
            backend.warn_once(
                op,
                f"auto leaves out '{impl}': it failed on {entry_name(key)} "
                f"({str(error).strip().splitlines()[0][:200]})",
                stacklevel=5,
            )
            continue
        runs[impl] = run
    seconds = time_candidates(runs, device)
    fastest = min(seconds, key=seconds.get)
    if "reference" in seconds and seconds[fastest] > (1 - REQUIRED_GAIN) * seconds["reference"]:
        fastest = "reference"
    _store(
        device,
        key,
        {
            "impl": fastest,
            "ms": {impl: round(1e3 * value, 4) for impl, value in seconds.items()},
            "measured_at": dict(zip(SIZE_NAMES[op], key[4])),
        },
    )
    return fastest


def _why_not_measurable(device: torch.device) -> Optional[str]:
    if torch.compiler.is_compiling():
        return "inside torch.compile tracing"
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return "during CUDA-graph capture"
    if device.type == "cuda" and torch.cuda.get_sync_debug_mode() != 0:
        return "under torch.cuda's sync debug mode (timing synchronises)"
    return None


def pick(op: str, device: torch.device, key: Key, candidates: tuple) -> str:
    """Auto's implementation for a call with `key` among `candidates` (the reference one of
    them): the one recorded for this machine, else the fastest measured now, or, where nothing
    can be measured, the reference (warned once)."""
    record = lookup(device, key)
    if record is not None and record["impl"] in candidates:
        return record["impl"]
    reason = _why_not_measurable(device)
    if reason is not None:
        backend.warn_once(
            op,
            f"auto has not measured {entry_name(key)} on this machine and "
            f"cannot measure {reason}: it runs the reference there. Make one "
            f"eager call first (one training step) or set impl or "
            f"{backend.IMPL_VARIABLE}",
            stacklevel=5,
        )
        return "reference"
    return _measure(op, device, key, candidates)
