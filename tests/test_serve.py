"""`attngan serve` through FastAPI's test client (attngan/serve/): the page is self-contained, the
API draws what `attngan sample` draws with each word's maps, every bad request gets one clear
JSON error and the server goes on, a full queue answers 503 with Retry-After while generations
run one at a time, and the command's own errors are one line."""

import base64
import io
import os
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_gan_training import single_thread, train_tiny_gan  # noqa: F401 (autouse)

from attngan import serve as serve_package
from attngan.cli import main
from attngan.data.errors import DataError
from attngan.sampling import sample_captions, view_scale
from attngan.serve.app import MAX_BODY_BYTES, create_app
from attngan.serve.served import ServedRun

CAPTION = "a small red circle at the top left"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    gan, _ = train_tiny_gan(tmp_path_factory.mktemp("serve"))
    return gan


@pytest.fixture(scope="module")
def served(run_folder):
    return ServedRun(run_folder, device="cpu")


@pytest.fixture
def client(served):
    with TestClient(create_app(served, queue=2)) as client:
        yield client


def pixels(data_uri: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert data_uri.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(data_uri[len(prefix) :])))
    assert image.format == "PNG" and image.mode == "RGB"
    return np.asarray(image)


def test_the_page_is_one_self_contained_file(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    for element in (
        'id="caption"',
        'id="n"',
        'id="seed"',
        'id="random"',
        'id="generate"',
        'name="viewport"',
    ):
        assert element in page
    # nothing from elsewhere: no external script, style sheet, font or image
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not re.search(r"<script[^>]+src|<link[^>]+stylesheet|@import|url\(", page)


def test_info_health_and_openapi_docs(client, served, run_folder):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/api/info").json()
    assert info["run"] == str(run_folder / "checkpoints" / "gan_last.pt")
    assert info["image_sizes"] == [16, 32] and info["attention_stages"] == 1
    assert info["vocabulary_size"] == len(served.vocab) and info["device"] == "cpu"
    assert info["word_limit"] == 18 and info["max_images"] == 8 and info["queue"] == 2
    assert info["max_caption_chars"] == 2000 and info["overlay_alpha"] == 0.6
    assert info["dataset"] == "shapes" and info["random_captions"] is True
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/api/generate",
        "/api/info",
        "/api/tokenize",
        "/api/random-caption",
        "/healthz",
    } <= set(paths)
    assert client.get("/docs").status_code == 200


def test_generate_draws_what_sample_draws_with_each_words_maps(client, run_folder, tmp_path):
    answer = client.post(
        "/api/generate", json={"caption": CAPTION.replace("red", "red zebra"), "n": 3, "seed": 7}
    )
    assert answer.status_code == 200
    result = answer.json()
    assert result["tokens"] == CAPTION.split() and result["dropped"] == ["zebra"]
    assert (result["n"], result["seed"]) == (3, 7)
    assert set(result["seconds"]) == {"waiting", "generating", "encoding", "total"}
    first, second = result["stages"]
    assert (first["size"], second["size"]) == (16, 32)
    assert (first["shown_size"], second["shown_size"]) == (16 * view_scale(16), 128)
    assert first["attention"] is None  # the first stage has no attention
    assert len(second["attention"]) == 3 and all(
        len(maps) == len(CAPTION.split()) for maps in second["attention"]
    )
    assert all(pixels(heat).shape == (32, 32, 3) for maps in second["attention"] for heat in maps)
    # the same images as `attngan sample` with that caption, n and seed (its grid: 2 px gaps,
    # each image enlarged view_scale(size) times)
    sample_captions(run_folder, [CAPTION], n=3, out_dir=tmp_path, seed=7)
    for stage in (first, second):
        size, scale = stage["size"], view_scale(stage["size"])
        grid = np.asarray(Image.open(next(tmp_path.glob(f"00_*_stage{stage['stage']}_*.png"))))
        for index, image in enumerate(stage["images"]):
            left = 2 + index * (size * scale + 2)
            tile = grid[2 : 2 + size * scale : scale, left : left + size * scale : scale]
            np.testing.assert_array_equal(pixels(image), tile)
    again = client.post("/api/generate", json={"caption": CAPTION, "n": 3, "seed": 7}).json()
    assert again["stages"] == result["stages"]
    other = client.post("/api/generate", json={"caption": CAPTION, "n": 3, "seed": 8}).json()
    assert other["stages"][1]["images"] != result["stages"][1]["images"]


EXAMPLE = 'send an object such as {"caption": "a small red circle at the top left", "n": 4'


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b'{"caption": "a red circle", "n": 2', 400, "the request body is not valid JSON"),
        (b"not json", 400, "the request body is not valid JSON"),
        (
            b'{"caption": ""}',
            422,
            "the caption has no words (after lowercasing and dropping "
            "punctuation and non-ASCII); write a few words",
        ),
        (b'{"caption": " ?! ..."}', 422, "the caption has no words"),
        (
            b'{"caption": "zebra circl"}',
            422,
            "no word of the caption is in the vocabulary (30 words "
            "of the run's training data): 'zebra', 'circl' (did "
            "you mean 'circle'?); rephrase with known words",
        ),
        (
            ('{"caption": "%s"}' % " ".join(["red"] * 19)).encode(),
            422,
            "the caption has 19 known words, and this run reads at most 18 "
            "(data.eval_words_num, else data.words_num, of its config); leave out 1",
        ),
        (b'{"caption": "red", "n": 0}', 422, "n=0: Input should be greater than or equal to 1"),
        (b'{"caption": "red", "n": 9}', 422, "n=9: Input should be less than or equal to 8"),
        (b'{"caption": "red", "n": "four"}', 422, "n='four': Input should be a valid integer"),
        (b'{"caption": "red", "seed": -1}', 422, "seed=-1: Input should be greater than or equal"),
        (b'{"caption": "red", "count": 2}', 422, "count=2: Extra inputs are not permitted"),
        (b'{"n": 2}', 422, "caption is missing; " + EXAMPLE),
        (b"", 422, "the body is missing; " + EXAMPLE),
        (b'["a red circle"]', 422, "the body is not a JSON object"),
        (
            ('{"caption": "%s"}' % ("a" * 2001)).encode(),
            422,
            f"caption='{'a' * 35}...': String should have at most 2000 characters; " + EXAMPLE,
        ),
    ],
)
def test_a_bad_request_is_one_clear_json_error_and_the_server_goes_on(
    client, body, status, message
):
    answer = client.post(
        "/api/generate", content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == status
    assert set(answer.json()) == {"error"} and message in answer.json()["error"]
    assert client.post("/api/generate", json={"caption": "a red circle"}).status_code == 200


def test_a_huge_body_is_refused_before_it_is_read(client):
    limit = f"the request body is over {MAX_BODY_BYTES:,} bytes; send a caption of at most 2,000"
    caption = "red " * MAX_BODY_BYTES
    answer = client.post("/api/generate", json={"caption": caption})  # Content-Length
    assert answer.status_code == 413 and limit in answer.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"caption": "'
        for _ in range(MAX_BODY_BYTES // 1000 + 1):
            yield b"red " * 250
        yield b'"}'

    answer = client.post(
        "/api/generate", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 413 and limit in answer.json()["error"]
    assert client.post("/api/generate", json={"caption": "a red circle"}).status_code == 200


def test_unknown_paths_and_methods_are_json_errors(client):
    answer = client.get("/api/nothing")
    assert answer.status_code == 404 and answer.json() == {
        "error": "there is no /api/nothing; the page is /, the API under /api (see /docs)"
    }
    answer = client.get("/api/generate")
    assert answer.status_code == 405 and answer.json() == {
        "error": "GET is not allowed on /api/generate (see /docs)"
    }


def test_tokenize_marks_unknown_words_before_generating(client):
    reading = client.post("/api/tokenize", json={"caption": "A red circl, at the zebra!"}).json()
    assert reading["tokens"] == [
        {"word": "a", "known": True, "suggestion": None},
        {"word": "red", "known": True, "suggestion": None},
        {"word": "circl", "known": False, "suggestion": "circle"},
        {"word": "at", "known": True, "suggestion": None},
        {"word": "the", "known": True, "suggestion": None},
        {"word": "zebra", "known": False, "suggestion": None},
    ]
    assert reading["used"] == ["a", "red", "at", "the"] and reading["dropped"] == ["circl", "zebra"]
    assert reading["word_limit"] == 18 and reading["problem"] is None
    assert (
        "no word of the caption"
        in client.post("/api/tokenize", json={"caption": "zebra"}).json()["problem"]
    )


def test_random_captions_come_from_the_test_split_when_it_is_there(client, served, run_folder):
    test_split = served.test_split
    texts = {
        " ".join(text.split())
        for index in range(len(test_split))
        for text in test_split.texts(index)
    }
    assert client.get("/api/random-caption").json()["caption"] in texts
    data = served.config.data.root
    with pytest.raises(DataError):  # a --data-root named must be there
        ServedRun(run_folder, device="cpu", data_root=f"{data}-elsewhere")
    moved = f"{data}-moved"
    os.rename(data, moved)
    try:
        without = ServedRun(run_folder, device="cpu")
    finally:
        os.rename(moved, data)
    assert without.info()["random_captions"] is False
    with TestClient(create_app(without)) as other:
        answer = other.get("/api/random-caption")
        assert answer.status_code == 404
        assert answer.json()["error"].startswith(
            "no random captions: the run's test split is not at hand ("
        )
        assert answer.json()["error"].endswith("pass --data-root with where its data set is now")
        assert other.post("/api/generate", json={"caption": "a red circle"}).status_code == 200
    named = ServedRun(run_folder, device="cpu", data_root=data)
    assert named.info()["random_captions"] is True


def wait_until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_full_queue_answers_503_and_generations_run_one_at_a_time(served, monkeypatch):
    """queue=1: one generation runs, one waits, the third request is refused at once with
    Retry-After; the two admitted are answered once the device is free."""
    release, running, most = threading.Event(), [], []
    draw = served.draw

    def slow_draw(words, n, seed):
        running.append(seed)
        most.append(len(running))
        release.wait(30)
        running.remove(seed)
        return draw(words, n, seed)

    monkeypatch.setattr(served, "draw", slow_draw)
    with TestClient(create_app(served, queue=1)) as client:
        queue = client.app.state.device_queue
        answers = {}

        def ask(seed):
            answers[seed] = client.post("/api/generate", json={"caption": CAPTION, "seed": seed})

        threads = [threading.Thread(target=ask, args=(seed,)) for seed in (1, 2)]
        threads[0].start()
        wait_until(lambda: running == [1])
        threads[1].start()
        wait_until(lambda: queue.admitted == 2)
        refused = client.post("/api/generate", json={"caption": CAPTION, "seed": 3})
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"] == (
            f"the server is busy: 2 requests are generating or waiting, the most it takes (one "
            f"and attngan serve --queue 1); retry in {refused.headers['Retry-After']} s"
        )
        release.set()
        for thread in threads:
            thread.join(30)
        assert [answers[seed].status_code for seed in (1, 2)] == [200, 200]
        assert max(most) == 1 and queue.admitted == 0
        assert client.post("/api/generate", json={"caption": CAPTION}).status_code == 200


def test_a_failed_generation_is_a_json_500_and_the_server_goes_on(served, monkeypatch):
    draw = served.draw
    failures = iter([RuntimeError("out of memory")])

    def failing_draw(words, n, seed):
        for failure in failures:
            raise failure
        return draw(words, n, seed)

    monkeypatch.setattr(served, "draw", failing_draw)
    with TestClient(create_app(served), raise_server_exceptions=False) as client:
        answer = client.post("/api/generate", json={"caption": CAPTION})
        assert answer.status_code == 500 and answer.json() == {
            "error": "the server failed (RuntimeError: out of memory); it goes on serving, and "
            "its log has the traceback"
        }
        assert client.post("/api/generate", json={"caption": CAPTION}).status_code == 200
        assert client.app.state.device_queue.admitted == 0


def test_the_command_s_own_errors_are_one_line(run_folder, monkeypatch, capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        assert main(["serve", "--ckpt", str(run_folder), "--port", str(port)]) == 2
    finally:
        taken.close()
    assert capsys.readouterr().err == (
        f"attngan serve: error: cannot listen on 127.0.0.1:{port} "
        "(Address already in use); choose another --port, or "
        "stop what uses that one\n"
    )
    assert main(["serve", "--ckpt", str(run_folder / "nothing"), "--port", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err
    for argument, message in (
        ("--port", "70000 is not a port from 0 to 65535"),
        ("--queue", "-1 is not a number of requests from 0"),
    ):
        with pytest.raises(SystemExit):
            main(["serve", "--ckpt", str(run_folder), argument, message.split()[0]])
        assert message in capsys.readouterr().err
    real_find_spec = serve_package.importlib.util.find_spec
    monkeypatch.setattr(
        serve_package.importlib.util,
        "find_spec",
        lambda name, package=None: None if name == "uvicorn" else real_find_spec(name, package),
    )
    assert main(["serve", "--ckpt", str(run_folder)]) == 2
    assert capsys.readouterr().err == (
        "attngan serve: error: attngan serve needs uvicorn, not "
        "installed here; install the extra: pip install "
        "'attngan[serve]'\n"
    )


def test_the_command_line_starts_without_the_web_framework():
    """The core install does not need FastAPI: the CLI imports it only to serve."""
    code = (
        "import sys, attngan.cli; attngan.cli.build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'uvicorn', 'starlette', 'pydantic'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
