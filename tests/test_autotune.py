"""Auto's measured choice (attngan.autotune): the machinery on the CPU with a fake timer, and on
a GPU (marked) that auto's measured pick is never slower than the reference.

The CPU is not a measured device type (auto keeps the C++ kernel there); these tests make it
one, so that the same code that measures on a GPU chooses between "cpp" and "reference" here.
"""

import json
import warnings

import pytest
import torch

from attngan import autotune, backend, cli
from attngan.ops.damsm import damsm_word_similarity
from attngan.ops.reference import damsm_word_similarity_reference
from attngan.ops.word_attention import word_attention

CPU = torch.device("cpu")


class FakeTimer:
    """Stands in for autotune.time_candidates: runs each candidate once (so the workloads are
    exercised) and returns the seconds it is told to."""

    def __init__(self, seconds: dict):
        self.seconds, self.calls = seconds, []

    def __call__(self, runs, device):
        self.calls.append(sorted(runs))
        for run in runs.values():
            run()
        return {name: self.seconds[name] for name in runs}


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """Auto measures on the CPU, into a fresh cache file, with a fake timer (set its .seconds)."""
    if backend.unavailable_reason("damsm_word_similarity", "cpp", CPU) is not None:
        pytest.skip("needs the C++ kernels: the CPU's second candidate")
    monkeypatch.setenv(autotune.CACHE_VARIABLE, str(tmp_path / "autotune.json"))
    monkeypatch.delenv(backend.IMPL_VARIABLE, raising=False)
    monkeypatch.setattr(backend, "MEASURED_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(backend, "_warned", set())
    monkeypatch.setattr(autotune, "_caches", {})
    timer = FakeTimer({"cpp": 2.0, "reference": 1.0})
    monkeypatch.setattr(autotune, "time_candidates", timer)
    autotune.machine_identity.cache_clear()
    yield timer
    autotune.machine_identity.cache_clear()


@pytest.fixture
def chosen(monkeypatch):
    """The implementations auto chose, call by call (at trace time under torch.compile)."""
    picks, choose = [], backend.choose

    def spy(op, device, impl="auto", *args, **kwargs):
        result = choose(op, device, impl, *args, **kwargs)
        if impl == "auto":
            picks.append(result)
        return result

    monkeypatch.setattr(backend, "choose", spy)
    return picks


def _damsm_inputs(captions=3, words=5, images=2, regions=6, dim=8):
    return (
        torch.randn(captions, dim, words, requires_grad=True),
        torch.tensor([words] + [2] * (captions - 1)),
        torch.randn(images, dim, regions, requires_grad=True),
    )


def _damsm(words, lengths, regions, **kwargs):
    return damsm_word_similarity(words, lengths, regions, **kwargs)


def _word_attention(query, words, lengths, **kwargs):
    return word_attention(query, words, lengths, concat=True, **kwargs)


def _word_attention_inputs():
    return (
        torch.randn(2, 4, 3, 5, requires_grad=True),
        torch.randn(2, 4, 6, requires_grad=True),
        torch.tensor([6, 3]),
    )


def _cache_file() -> dict:
    return json.loads(autotune.cache_path().read_text())


@pytest.mark.parametrize(
    "seconds, winner",
    [
        ({"cpp": 2.0, "reference": 1.0}, "reference"),
        ({"cpp": 0.5, "reference": 1.0}, "cpp"),
        ({"cpp": 0.99, "reference": 1.0}, "reference"),  # within REQUIRED_GAIN: the reference
    ],
)
def test_the_fastest_measured_is_taken_and_written(tuning, chosen, seconds, winner):
    tuning.seconds = seconds
    words, lengths, regions = _damsm_inputs()
    damsm_word_similarity(words, lengths, regions).sum().backward()
    assert tuning.calls == [["cpp", "reference"]] and chosen == [winner]
    key = autotune.damsm_key(words, regions, torch.float32, "auto")
    record = _cache_file()["machines"][autotune.machine_identity(CPU)][autotune.entry_name(key)]
    assert record == {
        "impl": winner,
        "ms": {name: 1e3 * s for name, s in seconds.items()},
        "measured_at": dict(images=2, captions=3, dim=8, words=5, regions=6),
    }
    # Decided: later calls, and calls of other sizes in the same buckets, only look it up.
    damsm_word_similarity(words, lengths, regions)
    damsm_word_similarity(*_damsm_inputs(captions=4, words=7, regions=8))
    assert tuning.calls == [["cpp", "reference"]] and chosen == [winner] * 3


@pytest.mark.parametrize(
    "op, inputs", [(_damsm, _damsm_inputs), (_word_attention, _word_attention_inputs)]
)
def test_measuring_leaves_the_caller_untouched(tuning, op, inputs):
    """The measurement runs forward and backward on inputs of its own: the caller's random
    stream, gradients and result are those of a call of the chosen implementation."""
    args = inputs()
    rng = torch.random.get_rng_state()
    out = op(*args)
    assert tuning.calls == [["cpp", "reference"]]
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(arg.grad is None for arg in args)
    torch.testing.assert_close(out, op(*args, impl="reference"))


def test_the_key_buckets_sizes_and_names_what_the_call_differentiates(tuning):
    words, lengths, regions = _damsm_inputs(captions=3, words=18, images=5, regions=289, dim=256)
    key = autotune.damsm_key(words, regions, torch.bfloat16, "auto")
    assert autotune.entry_name(key) == (
        "damsm_word_similarity bfloat16 images<=8 captions<=4 "
        "dim<=256 words<=32 regions<=512 grad:words grad:regions"
    )
    assert key[4] == (5, 3, 256, 18, 289)  # measured at the call's own sizes
    with torch.no_grad():
        assert autotune.damsm_key(words, regions, torch.float32, "auto")[3] == ()
    query = torch.randn(2, 4, 3, 5)
    key = autotune.word_attention_key(
        query, torch.randn(2, 4, 6, requires_grad=True), "auto", True, True
    )
    assert autotune.entry_name(key) == (
        "word_attention float32 batch<=2 channels<=4 words<=8 "
        "height<=4 width<=8 grad:words attn concat"
    )


def test_forward_only_and_training_calls_are_measured_apart(tuning, chosen):
    """Inference (no gradient) and training calls of one shape have keys of their own: the
    backward can rank the implementations differently (it did on the H100)."""
    words, lengths, regions = _damsm_inputs()
    with torch.no_grad():
        damsm_word_similarity(words, lengths, regions)
    tuning.seconds = {"cpp": 0.5, "reference": 1.0}
    damsm_word_similarity(words, lengths, regions)
    assert len(tuning.calls) == 2 and chosen == ["reference", "cpp"]


def test_the_cache_file_is_read_back(tuning, chosen, monkeypatch):
    tuning.seconds = {"cpp": 0.5, "reference": 1.0}
    damsm_word_similarity(*_damsm_inputs())
    monkeypatch.setattr(autotune, "_caches", {})  # as a new process
    monkeypatch.setattr(autotune, "time_candidates", FakeTimer({}))  # would fail: no times
    damsm_word_similarity(*_damsm_inputs())
    assert chosen == ["cpp", "cpp"]


def _add_record(identity: str, entry: str, impl: str) -> None:
    """Another process's record in the cache file."""
    path = autotune.cache_path()
    data = json.loads(path.read_text()) if path.exists() else {"format": 1, "machines": {}}
    data["machines"][identity] = {entry: {"impl": impl, "ms": {impl: 1.0}}}
    path.write_text(json.dumps(data))


def test_another_machine_or_software_measures_again(tuning, chosen, monkeypatch):
    words, lengths, regions = _damsm_inputs()
    entry = autotune.entry_name(autotune.damsm_key(words, regions, torch.float32, "auto"))
    _add_record("Another GPU; driver 1; torch 0.1", entry, "cpp")  # not used here
    damsm_word_similarity(words, lengths, regions)
    assert chosen == ["reference"] and len(tuning.calls) == 1
    ours = autotune.machine_identity(CPU)
    assert f"torch {torch.__version__}" in ours and "triton " in ours and "attngan " in ours
    # The same machine with another torch measures again; the file keeps every record, those
    # another process wrote meanwhile too.
    _add_record("Yet another GPU", entry, "cpp")
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    autotune.machine_identity.cache_clear()
    tuning.seconds = {"cpp": 0.5, "reference": 1.0}
    damsm_word_similarity(words, lengths, regions)
    assert chosen[-1] == "cpp" and len(tuning.calls) == 2
    machines = _cache_file()["machines"]
    assert len(machines) == 4 and machines[ours][entry]["impl"] == "reference"


@pytest.mark.parametrize(
    "contents",
    [
        "{not json",
        '{"format": 1, "machines": []}',
        '{"format": 99, "machines": {}}',
        '{"format": 1, "machines": {"m": {"e": {"impl": 3}}}}',
    ],
)
def test_a_corrupt_cache_file_is_ignored_with_a_warning_then_rewritten(tuning, chosen, contents):
    autotune.cache_path().write_text(contents)
    with pytest.warns(
        RuntimeWarning, match="ignoring the tuning cache .*auto measures again and rewrites it"
    ):
        damsm_word_similarity(*_damsm_inputs())
    assert chosen == ["reference"] and len(tuning.calls) == 1
    assert list(_cache_file()["machines"]) == [autotune.machine_identity(CPU)]


def test_an_unwritable_cache_keeps_the_choice_in_memory(tuning, chosen, monkeypatch, tmp_path):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(autotune.CACHE_VARIABLE, str(tmp_path / "a_file" / "autotune.json"))
    with pytest.warns(RuntimeWarning, match="cannot write the tuning cache"):
        damsm_word_similarity(*_damsm_inputs())
    damsm_word_similarity(*_damsm_inputs())
    assert chosen == ["reference"] * 2 and len(tuning.calls) == 1


def test_the_environment_and_the_argument_override_auto(tuning, chosen, monkeypatch):
    words, lengths, regions = _damsm_inputs()
    damsm_word_similarity(words, lengths, regions, impl="cpp")
    assert autotune.damsm_key(words, regions, torch.float32, "cpp") is None
    monkeypatch.setenv(backend.IMPL_VARIABLE, "cpp")
    damsm_word_similarity(words, lengths, regions)
    assert autotune.damsm_key(words, regions, torch.float32, "auto") is None
    word_attention(*_word_attention_inputs())
    assert chosen == ["cpp", "cpp"] and tuning.calls == []
    assert not autotune.cache_path().exists()


def test_the_cpu_keeps_the_cpp_kernel_without_measuring(monkeypatch, chosen):
    """The default policy: nothing is measured on the CPU (no key), auto takes the C++ kernel."""
    if backend.unavailable_reason("word_attention", "cpp", CPU) is not None:
        pytest.skip("needs the C++ kernels")
    monkeypatch.delenv(backend.IMPL_VARIABLE, raising=False)
    monkeypatch.setattr(autotune, "time_candidates", FakeTimer({}))
    query, words, lengths = _word_attention_inputs()
    assert autotune.word_attention_key(query, words, "auto", False, True) is None
    word_attention(query, words, lengths)
    assert chosen == ["cpp"]


def _compiled_damsm():
    torch._dynamo.reset()
    return torch.compile(
        lambda w, n, r: damsm_word_similarity(w, n, r).logsumexp(1).sum(),
        fullgraph=True,
        backend="aot_eager",
    )


def test_under_compile_an_undecided_key_runs_the_reference_and_warns(tuning, chosen):
    words, lengths, regions = _damsm_inputs()
    with pytest.warns(
        RuntimeWarning, match="cannot measure inside torch.compile tracing: it runs the reference"
    ):
        value = _compiled_damsm()(words, lengths, regions)
    assert tuning.calls == [] and chosen == ["reference"]
    expected = damsm_word_similarity_reference(words, lengths, regions).logsumexp(1).sum()
    torch.testing.assert_close(value, expected)


def test_under_compile_a_decided_key_is_a_lookup_in_one_graph(tuning, chosen):
    tuning.seconds = {"cpp": 0.5, "reference": 1.0}
    words, lengths, regions = _damsm_inputs()
    damsm_word_similarity(words, lengths, regions)  # the eager first step decides
    compiled = _compiled_damsm()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = compiled(words, lengths, regions)
        value.backward()
        # Other sizes in the same buckets: a dynamic-shape graph, the same decision.
        compiled(*_damsm_inputs(captions=4, words=7, regions=8))
    assert not [w for w in caught if "auto" in str(w.message)]
    assert len(tuning.calls) == 1 and chosen == ["cpp", "cpp", "cpp"]
    torch.testing.assert_close(
        value, damsm_word_similarity(words, lengths, regions, impl="cpp").logsumexp(1).sum()
    )


def test_under_compile_word_attention_looks_its_decision_up(tuning, chosen):
    tuning.seconds = {"cpp": 0.5, "reference": 1.0}
    query, words, lengths = _word_attention_inputs()
    expected = _word_attention(query, words, lengths)  # decides
    torch._dynamo.reset()
    compiled = torch.compile(_word_attention, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(query, words, lengths), expected)
    assert len(tuning.calls) == 1 and chosen == ["cpp", "cpp"]


def test_no_measuring_during_cuda_graph_capture_or_sync_debugging(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 2)
    assert "sync debug mode" in autotune._why_not_measurable(cuda)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert autotune._why_not_measurable(cuda) == "during CUDA-graph capture"
    assert autotune._why_not_measurable(CPU) is None


def test_a_candidate_that_fails_is_left_out(tuning, chosen, monkeypatch):
    from attngan.ops import _library

    def broken(*args):
        raise RuntimeError("out of resources: shared memory")

    monkeypatch.setitem(_library.damsm_word_similarity_ops, "cpp", broken)
    with pytest.warns(
        RuntimeWarning,
        match="auto leaves out 'cpp': it failed on damsm_word_similarity .*out of resources",
    ):
        damsm_word_similarity(*_damsm_inputs())
    assert tuning.calls == [["reference"]] and chosen == ["reference"]


def test_tune_shows_and_clears_the_cache(tuning, capsys):
    tuning.seconds = {"cpp": 0.5, "reference": 1.0}
    damsm_word_similarity(*_damsm_inputs())
    assert cli.main(["tune"]) == 0
    shown = capsys.readouterr().out
    assert f"{autotune.machine_identity(CPU)} (this machine):" in shown
    assert (
        "damsm_word_similarity float32 images<=2 captions<=4 dim<=8 words<=8 regions<=8 "
        "grad:words grad:regions: cpp (cpp 500.000 ms, reference 1000.000 ms)"
    ) in shown
    assert str(autotune.cache_path()) in backend.describe()
    assert cli.main(["tune", "--clear"]) == 0
    assert "removed" in capsys.readouterr().out and not autotune.cache_path().exists()
    assert cli.main(["tune"]) == 0 and "no measurements" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- GPU


def _gpu_case(op: str):
    """(a call with `impl`, as training makes it, at the CUB size in bf16; the key of the call)"""
    cuda, generator = torch.device("cuda"), torch.Generator().manual_seed(0)
    if op == "damsm":  # the GAN step: the text encoder is frozen, regions need gradients
        words = torch.randn(20, 256, 18, generator=generator).to(cuda, torch.bfloat16) / 4
        regions = (torch.randn(20, 256, 289, generator=generator) / 4).to(cuda, torch.bfloat16)
        regions.requires_grad_()
        lengths = torch.randint(9, 19, (20,), generator=generator)
        grad = torch.randn(20, 20, device=cuda)

        def call(impl):
            out = damsm_word_similarity(words, lengths, regions, impl=impl)
            return torch.autograd.grad(out, regions, grad)

        return call, autotune.damsm_key(words, regions, torch.bfloat16, "auto")
    query = torch.randn(20, 32, 64, 64, generator=generator).to(cuda, torch.bfloat16)
    words = torch.randn(20, 32, 18, generator=generator).to(cuda, torch.bfloat16)
    query.requires_grad_()
    words.requires_grad_()
    lengths = torch.randint(9, 19, (20,), generator=generator)
    grad = torch.randn(20, 64, 64, 64, device=cuda, dtype=torch.bfloat16)

    def call(impl):
        out = word_attention(query, words, lengths, impl=impl, concat=True)
        return torch.autograd.grad(out, (query, words), grad)

    return call, autotune.word_attention_key(query, words, "auto", False, True)


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["damsm", "word_attention"])
def test_gpu_auto_is_measured_and_never_slower_than_the_reference(op, monkeypatch, tmp_path):
    monkeypatch.setenv(autotune.CACHE_VARIABLE, str(tmp_path / "autotune.json"))
    monkeypatch.delenv(backend.IMPL_VARIABLE, raising=False)
    monkeypatch.setattr(autotune, "_caches", {})
    call, key = _gpu_case(op)
    call("auto")
    record = autotune.lookup(torch.device("cuda"), key)
    assert record is not None and "reference" in record["ms"] and record["impl"] in record["ms"]
    print(f"{op}: auto took {record['impl']}, measured {record['ms']} ms")
    seconds = autotune.time_candidates(
        {"auto": lambda: call("auto"), "reference": lambda: call("reference")}, torch.device("cuda")
    )
    assert seconds["auto"] <= 1.10 * seconds["reference"], seconds  # 10 %: timing noise


@pytest.mark.gpu
def test_gpu_capture_of_an_undecided_key_runs_the_reference(monkeypatch, tmp_path):
    monkeypatch.setenv(autotune.CACHE_VARIABLE, str(tmp_path / "autotune.json"))
    monkeypatch.delenv(backend.IMPL_VARIABLE, raising=False)
    monkeypatch.setattr(autotune, "_caches", {})
    monkeypatch.setattr(backend, "_warned", set())
    cuda = torch.device("cuda")
    if all(
        backend.unavailable_reason("damsm_word_similarity", impl, cuda)
        for impl in ("triton", "cuda")
    ):
        pytest.skip("auto has nothing to measure: neither Triton nor the CUDA kernels run here")
    words, regions = torch.randn(4, 32, 9, device=cuda), torch.randn(3, 32, 20, device=cuda)
    lengths = torch.tensor([9, 5, 1, 7], device=cuda)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture
        damsm_word_similarity(words, lengths, regions, impl="reference")
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with pytest.warns(RuntimeWarning, match="during CUDA-graph capture: it runs the reference"):
        with torch.cuda.graph(graph):
            captured = damsm_word_similarity(words, lengths, regions)
    graph.replay()
    torch.testing.assert_close(
        captured, damsm_word_similarity(words, lengths, regions, impl="reference")
    )
    assert autotune.recorded() == {}
