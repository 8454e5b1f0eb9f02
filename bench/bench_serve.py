"""Load test of `attngan serve`: many generate requests from concurrent clients on 127.0.0.1.

Starts `attngan serve --port 0` on a GAN run (default demo/gan, what `make demo` trains) in its
own process, warms it with a few requests, then sends --requests POST /api/generate requests
(the demo's captions in turn, --n images each, seed = the request's index) from --clients
threads at once, each client sending its next request when the last is answered. Every request
must be answered: 200, or 503 with Retry-After when the queue (--queue) is full; a connection
error or another status counts as lost. Reported: the answers by status with their latency
percentiles, requests answered per second, and the server's resident memory (RSS, from
/proc/PID/status) after the warm-up, after each quarter of the requests, and its peak.

    python bench/bench_serve.py [--ckpt demo/gan] [--requests 200] [--clients 16] [--queue 8]
                                [--n 4] [--record]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence
from urllib.parse import urlsplit

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import at_least, machine, machine_lines, markdown_table, publish  # noqa: E402

from attngan.demo import DEMO_CAPTIONS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 120


def start_server(
    ckpt: str | Path, *arguments: str, log: Optional[Path] = None, env: Optional[dict] = None
) -> tuple[subprocess.Popen, str]:
    """`attngan serve --ckpt CKPT --port 0 ARGUMENTS` in a new process, and its URL once it
    says it serves. Its output (uvicorn's log, one line per request) is read as long as it
    runs, into `log` if given: a pipe left unread would fill and stop the server."""
    process = subprocess.Popen(
        [sys.executable, "-m", "attngan", "serve", "--ckpt", str(ckpt), "--port", "0", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    found: list[str] = []
    announced = threading.Event()

    def read_output():
        with open(log or os.devnull, "w") as sink:
            for line in process.stdout:
                sink.write(line)
                sink.flush()
                if not found and "open http://" in line:
                    found.append(line.split("open ", 1)[1].split()[0].rstrip("/"))
                    announced.set()
        announced.set()  # the process ended

    threading.Thread(target=read_output, daemon=True).start()
    announced.wait(STARTUP_SECONDS)
    if not found:
        process.kill()
        raise RuntimeError(
            f"attngan serve did not start within {STARTUP_SECONDS} s (exit "
            f"status {process.poll()}; log: {log})"
        )
    return process, found[0]


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` (Linux /proc)."""
    return _status_kilobytes(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    return _status_kilobytes(pid, "VmHWM") * 1024


def _status_kilobytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def post(url: str, path: str, body: dict, timeout: float = 300):
    """(status, headers (http.client's, names in any case), JSON answer) of a POST to url +
    path."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        connection.close()


def run_load(
    url: str, requests: int, clients: int, body: Callable[[int], dict], pid: Optional[int] = None
) -> list[dict]:
    """Send `requests` generate requests (request i's body is body(i)) from `clients` threads;
    per request in order of answer: index, status (None: lost), seconds, Retry-After, error,
    and with `pid` the server's RSS right after the answer."""
    answers: list[dict] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        started = time.perf_counter()
        answer = {"index": index, "status": None, "retry_after": None, "error": None}
        try:
            status, headers, _ = post(url, "/api/generate", body(index))
            answer["status"], answer["retry_after"] = status, headers.get("Retry-After")
        except (OSError, http.client.HTTPException, ValueError) as error:
            answer["error"] = f"{type(error).__name__}: {error}"
        answer["seconds"] = time.perf_counter() - started
        if pid is not None:
            answer["rss"] = rss_bytes(pid)
        with lock:
            answers.append(answer)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    return answers


def summary(answers: Sequence[dict]) -> list[dict]:
    """One row per status (lost: None): count and latency percentiles in ms."""
    rows = []
    for status in sorted({a["status"] for a in answers}, key=lambda s: (s is None, s)):
        times = np.array([a["seconds"] for a in answers if a["status"] == status]) * 1e3
        rows.append(
            {
                "status": status,
                "count": len(times),
                **{f"p{q}_ms": round(float(np.percentile(times, q)), 1) for q in (50, 90, 99)},
                "max_ms": round(float(times.max()), 1),
            }
        )
    return rows


def memory_after(answers: Sequence[dict], marks: Sequence[int]) -> dict[int, int]:
    """The server's RSS right after the k-th answer, for each k of `marks`."""
    return {k: answers[k - 1]["rss"] for k in marks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--ckpt",
        default=str(ROOT / "demo" / "gan"),
        help="GAN run folder or checkpoint (default demo/gan)",
    )
    parser.add_argument("--requests", type=at_least(1), default=200)
    parser.add_argument("--clients", type=at_least(1), default=16)
    parser.add_argument(
        "--queue", type=at_least(0), default=8, help="attngan serve --queue (default 8)"
    )
    parser.add_argument("--n", type=at_least(1), default=4, help="images per request")
    parser.add_argument("--warmup", type=at_least(0), default=5)
    parser.add_argument("--device", default="cpu", help="attngan serve --device (default cpu)")
    parser.add_argument("--record", action="store_true", help="write bench/results/")
    args = parser.parse_args()

    def body(index: int) -> dict:
        return {"caption": DEMO_CAPTIONS[index % len(DEMO_CAPTIONS)], "n": args.n, "seed": index}

    log = ROOT / "build" / "bench_serve.log"
    log.parent.mkdir(exist_ok=True)
    process, url = start_server(
        args.ckpt, "--queue", str(args.queue), "--device", args.device, log=log
    )
    try:
        for index in range(args.warmup):
            post(url, "/api/generate", body(index))
        warm = rss_bytes(process.pid)
        started = time.perf_counter()
        answers = run_load(url, args.requests, args.clients, body, pid=process.pid)
        seconds = time.perf_counter() - started
        peak = peak_rss_bytes(process.pid)
    finally:
        process.terminate()
        process.wait(30)
    rows = summary(answers)
    quarters = sorted({max(1, args.requests * q // 4) for q in (1, 2, 3, 4)})
    memory = memory_after(answers, quarters)
    retry_missing = sum(1 for a in answers if a["status"] == 503 and not a["retry_after"])
    info = machine(torch.device("cpu"))
    info.update(
        ckpt=str(args.ckpt),
        requests=args.requests,
        clients=args.clients,
        queue=args.queue,
        n=args.n,
        server_device=args.device,
        rss_after_warmup_mb=round(warm / 2**20, 1),
        rss_after_answers_mb={k: round(v / 2**20, 1) for k, v in memory.items()},
        peak_rss_mb=round(peak / 2**20, 1),
        seconds=round(seconds, 2),
        answers_503_without_retry_after=retry_missing,
    )
    table = markdown_table(
        ["status", "answers", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        [
            [
                row["status"] if row["status"] is not None else "lost",
                row["count"],
                row["p50_ms"],
                row["p90_ms"],
                row["p99_ms"],
                row["max_ms"],
            ]
            for row in rows
        ],
    )
    memory_text = ", ".join(f"{v / 2**20:.1f} MB after {k}" for k, v in memory.items())
    text = "\n".join(
        [
            f"# attngan serve under load, {info['date_utc']} UTC",
            "",
            *machine_lines(info),
            f"- run {args.ckpt}; server on the {args.device}, --queue {args.queue}; "
            f"{args.requests} requests of {args.n} images from {args.clients} concurrent "
            f"clients on 127.0.0.1, after {args.warmup} warm-up requests",
            f"- {args.requests} answered in {seconds:.1f} s ({args.requests / seconds:.1f} / s); "
            f"503 answers without Retry-After: {retry_missing}",
            f"- server RSS: {warm / 2**20:.1f} MB after the warm-up; {memory_text} answers; "
            f"peak {peak / 2**20:.1f} MB",
            "",
            table,
        ]
    )
    publish("serve", info, rows, text, args.record)
    lost = [a for a in answers if a["status"] not in (200, 503)]
    return 1 if lost or retry_missing else 0


if __name__ == "__main__":
    sys.exit(main())
