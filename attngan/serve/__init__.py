"""`attngan serve`: a web page and a JSON API that generate from a trained GAN run.

- `served`: `ServedRun`, the run loaded once: captions read against its vocabulary, images and
  each word's attention maps drawn with the sampler's code (no web framework needed).
- `app`: `create_app`, the FastAPI application: the page (`page.html`, self-contained), the API,
  one generation at a time on the device behind a bounded queue, a cap on request bodies.
- `serve` here: bind the address, load the run, print the URL and run uvicorn until Ctrl-C.

FastAPI and uvicorn come with the optional extra (`pip install attngan[serve]`); nothing else in
the package imports them.
"""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from typing import Optional

__all__ = ["serve", "require_server_packages", "SERVER_PACKAGES", "DEFAULT_QUEUE"]

SERVER_PACKAGES = ("fastapi", "uvicorn")
DEFAULT_QUEUE = 8  # requests waiting while one generates


def require_server_packages() -> None:
    """A ValueError naming the fix where FastAPI or uvicorn is not installed."""
    missing = [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"attngan serve needs {' and '.join(missing)}, not installed here; "
            "install the extra: pip install 'attngan[serve]'"
        )


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: any free one), or one ValueError naming the
    fix."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ValueError(
            f"--host {host} is not a known address ({error.strerror}); "
            "use 127.0.0.1 (this machine only) or 0.0.0.0 (every network)"
        ) from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(2048)  # uvicorn's backlog: connections wait from here on
    except OSError as error:
        listener.close()
        raise ValueError(
            f"cannot listen on {host}:{port} ({error.strerror}); choose another "
            "--port, or stop what uses that one"
        ) from None
    return listener


def serve(
    ckpt: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    queue: int = DEFAULT_QUEUE,
    data_root: Optional[str | Path] = None,
) -> None:
    """Serve the GAN run `ckpt` (checkpoint file or run folder) on host:port until interrupted;
    `queue` requests may wait while one generates. Errors before serving are ValueErrors."""
    require_server_packages()
    import uvicorn

    from attngan.serve.app import create_app
    from attngan.serve.served import ServedRun

    listener = _listen(host, port)
    try:
        run = ServedRun(ckpt, device=device, data_root=data_root)
        app = create_app(run, queue=queue)
    except BaseException:
        listener.close()
        raise
    bound_host, bound_port = listener.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(
        f"attngan serve: {run.checkpoint} (step {run.step}) on {run.device}; open "
        f"http://{shown_host}:{bound_port}/ (API docs at /docs); Ctrl-C stops",
        flush=True,
    )
    config = uvicorn.Config(app, log_level="info")
    uvicorn.Server(config).run(sockets=[listener])
