"""Serve a built leaderboard folder over HTTP on localhost (the site also works from file://)."""

from __future__ import annotations

import functools
import logging
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

logger = logging.getLogger(__name__)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
        logger.debug("%s - %s", self.address_string(), format % args)


def make_server(directory: str | Path, port: int = 8000,
                host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server for ``directory`` (which must hold ``index.html``); port 0 picks a free one.

    Raises ``FileNotFoundError`` naming the folder when it holds no built site."""
    directory = Path(directory)
    if not (directory / "index.html").is_file():
        raise FileNotFoundError(f"{directory}: no index.html; build the site first "
                                "(zsbench leaderboard build --out DIR)")
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer((host, port), handler)
    logger.info("serving %s at http://%s:%d/", directory, host, server.server_address[1])
    return server


def serve_site(directory: str | Path, port: int = 8000, host: str = "127.0.0.1") -> None:
    """Serve until interrupted."""
    with make_server(directory, port, host) as server:
        server.serve_forever()
