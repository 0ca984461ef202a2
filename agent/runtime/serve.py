"""The bundle as an HTTP service (standard library ``http.server``).

- ``POST /predict``: the body is one image's bytes (an .npz for a raw model) -> the JSON result;
  400 ``{"error"}`` for a body that is not an input the bundle reads, 411 without a length,
  413 over ``MAX_BODY`` bytes (refused before it is read);
- ``GET /healthz``: ``{"status": "ok", "bundle_id", "models": [names]}``.

Requests are served on threads, but inference runs one at a time under a lock: an engine session
is not guaranteed re-entrant, and the engine already uses every core for one image. The models
are loaded before the server listens, so the first request is as fast as the others and a health
check never sees a half-started service. SIGTERM (and Ctrl-C) stop it cleanly.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Optional, Tuple

from agent.runtime.bundle import Bundle
from agent.runtime.inputs import InputError

MAX_BODY = 32 * 1024 * 1024


def make_server(bundle: Bundle, host: str, port: int, max_body: int = MAX_BODY) -> ThreadingHTTPServer:
    """A server bound to (host, port) answering for a loaded bundle; port 0 picks a free one."""
    bundle.load()
    lock = threading.Lock()
    health = {"status": "ok", "bundle_id": bundle.id, "models": [m["name"] for m in bundle.model_specs]}

    class Handler(BaseHTTPRequestHandler):
        server_version = "EdgeFarmBundle/1"
        protocol_version = "HTTP/1.1"
        timeout = 60  # seconds a client may stall mid-request (or idle between requests) before it is dropped

        def _send(self, code: int, doc: Dict[str, Any], close: bool = False) -> None:
            body = (json.dumps(doc) + "\n").encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] in ("/healthz", "/health"):
                self._send(200, health)
            else:
                self._send(404, {"error": "no such path %s; POST /predict or GET /healthz" % self.path})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?")[0] != "/predict":
                self._send(404, {"error": "no such path %s; POST /predict or GET /healthz" % self.path}, close=True)
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.strip().isdigit():
                self._send(411, {"error": "send the image as the body, with its Content-Length"}, close=True)
                return
            size = int(length)
            if size > max_body:
                # Not read: the connection is closed instead, so a huge body costs no memory.
                self._send(413, {"error": "body of %d bytes is over the %d byte limit" % (size, max_body)}, close=True)
                return
            body = self.rfile.read(size)
            try:
                with lock:
                    result = bundle.predict([body])[0]
            except InputError as exc:
                self._send(400, {"error": str(exc).replace("input 1: ", "body: ", 1)})
                return
            except Exception as exc:  # the model failed on a valid input: the service's fault
                self._send(500, {"error": "%s: %s" % (type(exc).__name__, str(exc).strip().splitlines()[0]
                                                      if str(exc).strip() else "")})
                return
            self._send(200, result)

        def log_message(self, format: str, *args: Any) -> None:  # one short line a request
            sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(bundle: Bundle, host: str, port: int, ready: Optional[Callable[[Tuple[str, int]], None]] = None) -> int:
    """Serve until SIGTERM or Ctrl-C; ``ready`` is told the address once it listens."""
    server = make_server(bundle, host, port)

    def stop(_signum: int, _frame: Any) -> None:
        # shutdown() waits for serve_forever to return: it must not run on serve_forever's thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        address = server.server_address
        if ready is not None:
            ready((str(address[0]), int(address[1])))
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a person stops the server (SIGTERM shuts it down above): not an error
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
        bundle.close()
    return 0
