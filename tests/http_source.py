"""A local HTTP server for DataVolume imports: files as they are, cut short, behind redirects."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HttpSource:
    """Serves `root`: /files/NAME whole, /slow/NAME whole at about 8 MiB/s, /truncated/NAME with its full
    Content-Length but half the bytes, /redirect/NAME -> /files/NAME, /to-metadata -> the cloud metadata
    address."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        source = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:
                source.requests.append(self.path)
                kind, _, name = self.path.strip("/").partition("/")
                if kind == "redirect":
                    self._redirect(f"/files/{name}")
                elif kind == "to-metadata":
                    self._redirect("http://169.254.169.254/latest/meta-data/")
                elif kind == "slow" and (source.root / name).is_file():
                    data = (source.root / name).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    for offset in range(0, len(data), 1 << 18):
                        self.wfile.write(data[offset : offset + (1 << 18)])
                        time.sleep(0.03)
                elif kind in ("files", "truncated") and (source.root / name).is_file():
                    data = (source.root / name).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data if kind == "files" else data[: len(data) // 2])
                    if kind == "truncated":
                        self.close_connection = True
                else:
                    self.send_error(404)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
