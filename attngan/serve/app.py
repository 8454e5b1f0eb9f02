"""The FastAPI application of `attngan serve`: the page, the JSON API, and what keeps one server
answering under load and bad input.

Routes: `GET /` the page (`page.html`: HTML, CSS and script in one file, nothing fetched from
elsewhere); `POST /api/generate`; `POST /api/tokenize` (how a caption will be read, for marking
unknown words before generating); `GET /api/random-caption`; `GET /api/info`; `GET /healthz`;
the framework's OpenAPI docs at `/docs`. Every error is JSON `{"error": one line naming the
problem and the fix}`: 400 for a body that is not JSON, 422 for a request that cannot be drawn,
404 for a path that is not there, 413 for a body over MAX_BODY_BYTES, 503 with Retry-After when
the queue is full.

Generations run one at a time on one worker thread (`DeviceQueue`), so the device holds one
batch at a time; requests beyond the running one and `queue` waiting ones are refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from attngan import __version__
from attngan.cli import MAX_SEED
from attngan.serve import DEFAULT_QUEUE
from attngan.serve.served import MAX_IMAGES, ServedRun

__all__ = ["create_app", "DeviceQueue", "ServeError", "MAX_BODY_BYTES", "MAX_CAPTION_CHARS"]

MAX_BODY_BYTES = 16 * 1024  # a request body: a caption and two numbers
MAX_CAPTION_CHARS = 2000
EXAMPLE_BODY = '{"caption": "a small red circle at the top left", "n": 4, "seed": 0}'


class ServeError(Exception):
    """An error answered as JSON `{"error": message}` with `status` (and `headers`)."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class DeviceQueue:
    """Runs jobs one at a time on one worker thread, with at most `waiting` more admitted to
    wait; past that `run` raises a 503 ServeError whose Retry-After is the expected wait (the
    recent jobs' time, a moving average, times those admitted; at least 1 s)."""

    def __init__(self, waiting: int):
        self.waiting = waiting
        self.admitted = 0  # running and waiting; read and written by
        self.seconds_per_job: Optional[float] = None  # the event loop's thread only
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attngan-device")

    def retry_after(self) -> int:
        return max(1, math.ceil((self.seconds_per_job or 1.0) * self.admitted))

    async def run(self, job: Callable[[], dict]) -> tuple[dict, float]:
        """(job's result, seconds it waited for the device)."""
        if self.admitted > self.waiting:
            after = self.retry_after()
            raise ServeError(
                503,
                f"the server is busy: {self.admitted} requests are generating "
                f"or waiting, the most it takes (one and attngan serve "
                f"--queue {self.waiting}); retry in {after} s",
                {"Retry-After": str(after)},
            )
        self.admitted += 1
        loop = asyncio.get_running_loop()
        submitted = time.perf_counter()

        def timed():
            started = time.perf_counter()
            result = job()
            return result, started - submitted, time.perf_counter() - started

        future = self._executor.submit(timed)
        # Released when the job is done (or cancelled before it started), not when a client
        # that went away stops waiting for it: the device is busy until then.
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        result, waited, took = await asyncio.wrap_future(future)
        last = self.seconds_per_job
        self.seconds_per_job = took if last is None else 0.8 * last + 0.2 * took
        return result, waited

    def _release(self) -> None:
        self.admitted -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 without being read
    whole (by its Content-Length, or while it arrives when it has none)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _message(self) -> str:
        return (
            f"the request body is over {self.limit:,} bytes; send a caption of at most "
            f"{MAX_CAPTION_CHARS:,} characters"
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _error(413, self._message())(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    caption: str = Field(
        max_length=MAX_CAPTION_CHARS, examples=["a small red circle at the top left"]
    )
    n: int = Field(1, ge=1, le=MAX_IMAGES, description="images to draw")
    seed: int = Field(
        0,
        ge=0,
        le=MAX_SEED,
        description="seed of the noise: the same request gives the same images",
    )


class CaptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    caption: str = Field(max_length=MAX_CAPTION_CHARS)


class Token(BaseModel):
    word: str
    known: bool
    suggestion: Optional[str] = Field(description="the closest known word, for unknown ones")


class Reading(BaseModel):
    tokens: list[Token]
    used: list[str]
    dropped: list[str] = Field(description="words the vocabulary does not know, left out")
    word_limit: int
    problem: Optional[str] = Field(description="why the caption cannot be drawn, or null")


class Stage(BaseModel):
    stage: int
    size: int = Field(description="side of the images in pixels")
    shown_size: int = Field(description="side the page shows them at")
    images: list[str] = Field(description="PNG data URIs, one per image")
    attention: Optional[list[list[str]]] = Field(
        description="per image, per used word: its attention map coloured as in the sampler's "
        "attention figure (PNG data URIs, blended over the image at overlay_alpha "
        "there); null for the first stage, which has no attention"
    )


class Seconds(BaseModel):
    waiting: float
    generating: float
    encoding: float
    total: float


class Generated(BaseModel):
    caption: str
    tokens: list[str] = Field(description="the words used, in order")
    dropped: list[str] = Field(description="words the vocabulary does not know, left out")
    n: int
    seed: int
    stages: list[Stage]
    seconds: Seconds


class Info(BaseModel):
    run: str
    step: int
    dataset: str
    image_sizes: list[int]
    attention_stages: int
    vocabulary_size: int
    word_limit: int
    max_images: int
    max_caption_chars: int
    device: str
    queue: int
    random_captions: bool
    random_captions_note: Optional[str]
    overlay_alpha: float
    version: str


class ErrorMessage(BaseModel):
    error: str


def _validation_message(errors) -> tuple[int, str]:
    """(status, one line) for FastAPI's validation errors of a request body."""
    for error in errors:
        if error["type"] == "json_invalid":
            reason = error.get("ctx", {}).get("error", "malformed")
            return 400, (
                f"the request body is not valid JSON ({reason}); send an object such "
                f"as {EXAMPLE_BODY}"
            )
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error["loc"][1:])
        if not where:
            parts.append(
                "the body is missing"
                if error["type"] == "missing"
                else f"the body is not a JSON object ({error['msg']})"
            )
        elif error["type"] == "missing":
            parts.append(f"{where} is missing")
        else:
            shown = repr(error["input"])
            shown = shown if len(shown) <= 40 else shown[:36] + "...'"
            parts.append(f"{where}={shown}: {error['msg']}")
    return 422, f"{'; '.join(parts)}; send an object such as {EXAMPLE_BODY}"


ERRORS = {status: {"model": ErrorMessage} for status in (400, 413, 422)}


def create_app(run: ServedRun, queue: int = DEFAULT_QUEUE) -> FastAPI:
    """The application serving `run`, with `queue` requests allowed to wait for the device."""
    device_queue = DeviceQueue(queue)
    page = importlib.resources.files("attngan.serve").joinpath("page.html").read_text("utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        device_queue.close()

    app = FastAPI(
        title="attngan serve",
        version=__version__,
        lifespan=lifespan,
        description="Generate images from a caption with an AttnGAN run, with each "
        "word's attention maps.",
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, error: ServeError):
        return _error(error.status, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        return _error(*_validation_message(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        messages = {
            404: f"there is no {request.url.path}; the page is /, the API under /api (see /docs)",
            405: f"{request.method} is not allowed on {request.url.path} (see /docs)",
        }
        return _error(
            error.status_code,
            messages.get(error.status_code, str(error.detail)),
            getattr(error, "headers", None),
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        return _error(
            500,
            f"the server failed ({type(error).__name__}: {error}); it goes on "
            "serving, and its log has the traceback",
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/api/info", response_model=Info)
    async def info():
        return {**run.info(), "queue": queue, "max_caption_chars": MAX_CAPTION_CHARS}

    @app.post("/api/tokenize", response_model=Reading, responses=ERRORS)
    async def tokenize(request: CaptionRequest):
        """How the run reads a caption: each word, known or not, and why it cannot be drawn."""
        reading = run.read(request.caption)
        return {
            "tokens": reading.tokens,
            "used": reading.used,
            "dropped": reading.dropped,
            "word_limit": run.word_limit,
            "problem": reading.problem,
        }

    @app.get("/api/random-caption", responses={404: {"model": ErrorMessage}})
    async def random_caption() -> dict:
        """A caption of a random image of the run's test split, where that data set is."""
        try:
            return {"caption": run.random_caption()}
        except LookupError as error:
            raise ServeError(404, str(error)) from None

    @app.post(
        "/api/generate",
        response_model=Generated,
        responses={**ERRORS, 503: {"model": ErrorMessage}},
    )
    async def generate(request: GenerateRequest):
        """n images of the caption at every stage, with each used word's attention maps."""
        started = time.perf_counter()
        reading = run.read(request.caption)
        if reading.problem:
            raise ServeError(422, reading.problem)
        drawn, waited = await device_queue.run(
            lambda: run.draw(reading.used, request.n, request.seed)
        )
        seconds = {
            **drawn["seconds"],
            "waiting": round(waited, 4),
            "total": round(time.perf_counter() - started, 4),
        }
        return {
            "caption": request.caption,
            "tokens": reading.used,
            "dropped": reading.dropped,
            "n": request.n,
            "seed": request.seed,
            "stages": drawn["stages"],
            "seconds": seconds,
        }

    app.state.device_queue = device_queue
    return app
