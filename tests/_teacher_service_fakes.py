"""A stand-in teacher service for the client's fault tests: it speaks the two routes the client uses
(``GET /v1/models``, ``POST /pooling`` with ``encoding_format=bytes``) and answers with a chosen fault.
The real server (vLLM) is tested in tests/test_teacher_service.py."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class FakeService:
    """``fault``: None (good answers: hidden = a fixed function of the ids), "http500", "nan",
    "shape" (one token short), "truncated" (body cut), "slow" (sleeps past the client's timeout)."""

    def __init__(self, fingerprint: str, hidden_size: int, fault=None):
        self.fingerprint, self.d, self.fault, self.requests = fingerprint, hidden_size, fault, 0
        svc = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                body = json.dumps({"data": [{"id": svc.fingerprint}, {"id": "teacher"}]}).encode()
                self._send(200, body, {})

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                svc.requests += 1
                if svc.fault == "http500":
                    return self._send(500, b'{"error": "boom"}', {})
                if svc.fault == "slow":
                    import time
                    time.sleep(3)
                parts, items, off = [], [], 0
                for i, ids in enumerate(req["input"]):
                    n = len(ids) - (1 if svc.fault == "shape" else 0)
                    h = torch.arange(n * svc.d, dtype=torch.float32).reshape(n, svc.d) / 100
                    if svc.fault == "nan":
                        h[0, 0] = float("nan")
                    b = h.numpy().tobytes()
                    items.append({"index": i, "embed_dtype": "float32", "endianness": "little", "start": off,
                                  "end": off + len(b), "shape": [n, svc.d]})
                    parts.append(b)
                    off += len(b)
                body = b"".join(parts)
                declared = len(body)
                if svc.fault == "truncated":
                    body = body[: len(body) // 2]
                self._send(200, body, {"metadata": json.dumps({"data": items})}, declared)

            def _send(self, code, body, headers, length=None):
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                try:
                    self.wfile.write(body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up first (slow, truncated)
                    return
                if length is not None and length != len(body):
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()
