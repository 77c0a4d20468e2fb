"""A real local OpenAI-compatible HTTP server for tests and benchmarks (stdlib only, 127.0.0.1, random port).

It speaks `POST /v1/chat/completions` and can be scripted per request to inject the faults a real endpoint
produces: 429 with Retry-After, 500, a hang past the client's timeout, malformed JSON, a missing `choices`,
a fixed delay, or blocking after k answers (to simulate a crash mid-run), and bodies cut short: `truncated`
(HTTP 200, a JSON body cut in half), `truncated_utf8` (cut inside a multi-byte character), `short_body` (the
connection closes before the Content-Length promised), `truncated_gzip` (a gzip stream cut short). Errors can
quote the Authorization header back (`echo_auth_in_errors`: True, or the padding before it, an int or a list
cycled per error) in a JSON or HTML page (`error_page`) the server may clip itself (`error_chars`), with or
without its scheme (`echo_scheme`). It records what it received.

    with LLMTestServer(delay_s=0.1) as srv:
        client = OpenAICompatClient(srv.base_url, "test-model")
        ...
        srv.request_count, srv.max_in_flight, srv.headers, srv.bodies

Default reply: "echo: <last user message>" (choice i > 0 gets " #i"); pass `reply_fn(body) -> str` to script
content (e.g. a judge's JSON), or `reply_fn(body, i) -> str | (str, finish_reason)` to script each of n choices
(e.g. an R1 reply cut off with finish_reason "length"). With `logprobs` requested, each whitespace token gets
`top_logprobs` alternatives (`logprobs_fn(body, text)` overrides: return per-token lists of (token, logprob)).
`behaviour_fn(body) -> Behaviour | None` scripts faults by request content (e.g. a fixed subset that always
gets 500); None falls through to `script` / `default`. `GET /v1/models` lists `models` (what a preflight asks).
`reasoning_parser=True` acts like vLLM's `--reasoning-parser deepseek_r1`: `<think>…</think>` goes to
`message.reasoning_content`, `content` is the rest (None if never closed); logprobs still cover every token.
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Behaviour = str  # "ok" | "429" | "500" | "503" | "400" | "hang" | "malformed" | "no_choices" | "block" | CUT
CUT = ("truncated", "truncated_utf8", "short_body", "truncated_gzip")  # HTTP 200 with a body cut short
HTML_PAGE = "<html><head><title>{status}</title></head><body><h1>{status}</h1><pre>{msg}</pre></body></html>"


def echo_reply(body: dict) -> str:
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    return f"echo: {users[-1] if users else ''}"


class _Server(ThreadingHTTPServer):
    # listen backlog: the stdlib default (5) resets connections when a client opens 32 at once (vLLM's
    # server accepts thousands), which would add unscripted faults to every concurrent test
    request_queue_size = 256


class LLMTestServer:
    """Scriptable fake-fault server around ThreadingHTTPServer; thread-safe counters."""

    def __init__(
        self,
        *,
        script: list[Behaviour] | None = None,
        default: Behaviour = "ok",
        delay_s: float = 0.0,
        retry_after: str | float | None = 1,
        retry_after_http_date: bool = False,
        hang_s: float = 30.0,
        block_after: int | None = None,
        reply_fn: Callable[[dict], str] = echo_reply,
        logprobs_fn: Callable[[dict, str], list[list[tuple[str, float]]]] | None = None,
        echo_auth_in_errors: bool | int | Sequence[int] = False,
        error_page: str = "json",
        error_chars: int | None = None,
        echo_scheme: bool = True,
        behaviour_fn: Callable[[dict], Behaviour | None] | None = None,
        models: tuple[str, ...] = ("test-model",),
        reasoning_parser: bool = False,
        port: int = 0,
    ) -> None:
        self.reasoning_parser = reasoning_parser
        self.behaviour_fn = behaviour_fn
        self.models = list(models)
        self.script = list(script or [])
        self.default = default
        self.delay_s = delay_s
        self.retry_after = retry_after
        self.retry_after_http_date = retry_after_http_date
        self.hang_s = hang_s
        self.block_after = block_after
        self.reply_fn = reply_fn
        self.logprobs_fn = logprobs_fn
        # a careless server quoting the key back at us (an int: after that many characters of padding; a list:
        # one offset per error, cycled), in a JSON or an HTML page, clipped to `error_chars` by the server itself
        offsets = echo_auth_in_errors if isinstance(echo_auth_in_errors, Sequence) else [echo_auth_in_errors]
        self.echo_auth_in_errors = echo_auth_in_errors
        self._offsets = itertools.cycle(list(offsets))
        if error_page not in ("json", "html"):
            raise ValueError(f"error_page must be json or html, got {error_page!r}")
        self.error_page, self.error_chars, self.echo_scheme = error_page, error_chars, echo_scheme
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.request_count = 0
        self.ok_count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.headers: list[dict[str, str]] = []
        self.bodies: list[dict] = []
        self.request_times: list[float] = []
        self._httpd = _Server(("127.0.0.1", port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> LLMTestServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()  # releases hanging/blocked handlers
        if self._thread.is_alive():  # shutdown() would wait forever for a loop that never started
            self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LLMTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_behaviour(self, body: dict | None = None) -> Behaviour:
        if self.behaviour_fn is not None and body is not None:
            scripted = self.behaviour_fn(body)
            if scripted is not None:
                return scripted
        with self.lock:
            if self.script:
                return self.script.pop(0)
            if self.block_after is not None and self.ok_count >= self.block_after:
                return "block"
            return self.default

    def error_body(self, status: str, auth: str) -> tuple[bytes, str]:
        """(body, content type) of an error page, quoting `auth` after the next padding offset if asked to."""
        with self.lock:
            echo = next(self._offsets)
        msg = f"scripted {status}"
        if echo is not False:
            pad = "x" * echo if echo is not True and isinstance(echo, int) else ""
            quoted = auth if self.echo_scheme else auth.partition(" ")[2]
            msg += f" {pad} for {quoted}"
        msg = msg[: self.error_chars] if self.error_chars is not None else msg
        if self.error_page == "html":
            return HTML_PAGE.format(status=status, msg=msg).encode(), "text/html; charset=utf-8"
        return json.dumps({"error": {"message": msg}}).encode(), "application/json"

    def completion(self, body: dict) -> dict[str, Any]:
        n = int(body.get("n", 1) or 1)
        choices = []
        two_args = len(inspect.signature(self.reply_fn).parameters) >= 2  # reply_fn(body, i): one per choice
        for i in range(n):
            out = self.reply_fn(body, i) if two_args else self.reply_fn(body) + (f" #{i}" if i else "")
            text, finish = out if isinstance(out, tuple) else (out, "stop")
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if self.reasoning_parser:
                head, closed, rest = text.partition("</think>")
                message = {"role": "assistant", "reasoning_content": head.replace("<think>", ""),
                           "content": rest if closed else None}
            choice: dict[str, Any] = {"index": i, "message": message, "finish_reason": finish}
            if body.get("logprobs"):
                k = int(body.get("top_logprobs") or 1)
                if self.logprobs_fn is not None:
                    per_tok = self.logprobs_fn(body, text)
                else:  # the emitted token is most likely; then k-1 deterministic alternatives
                    per_tok = [[(tok, -0.1)] + [(f"alt{j}", -1.0 - j) for j in range(1, k)] for tok in text.split()]
                choice["logprobs"] = {"content": [
                    {"token": alts[0][0], "logprob": alts[0][1],
                     "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alts[:k]]}
                    for alts in per_tok]}
            choices.append(choice)
        return {"id": f"cmpl-応答-{self.request_count}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", ""), "choices": choices,
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _make_handler(srv: LLMTestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go in two writes: avoid the 40 ms delayed-ACK stall

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, payload: bytes, extra: dict[str, str] | None = None,
                  length: int | None = None) -> None:
            """`length`: the Content-Length announced, when it is not the payload's (a body cut in transit)."""
            try:
                self.send_response(status)
                if "Content-Type" not in (extra or {}):
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload) if length is None else length))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)
                if length is not None and length != len(payload):
                    self.close_connection = True  # the rest never comes: the connection just closes
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
                pass

        def _send_cut(self, behaviour: Behaviour, body: dict) -> None:
            """HTTP 200 and a completion body cut short, the way a proxy or a crashing server cuts it."""
            full = json.dumps(srv.completion(body), ensure_ascii=False).encode("utf-8")
            half = len(full) // 2
            while 0x80 <= full[half] < 0xC0:  # `truncated` cuts between characters: valid UTF-8, cut JSON
                half -= 1
            if behaviour == "truncated":
                self._send(200, full[:half])
            elif behaviour == "truncated_utf8":  # keep a multi-byte character's lead byte, drop the rest of it
                leads = [i for i in range(len(full)) if full[i] >= 0xC0]  # the id holds some ("応答")
                lead = min(leads, key=lambda i: abs(i - half))
                self._send(200, full[: lead + 1])
            elif behaviour == "short_body":
                self._send(200, full[:half], length=len(full))
            else:  # truncated_gzip
                packed = gzip.compress(full)
                self._send(200, packed[: len(packed) // 2], {"Content-Encoding": "gzip"})

        def do_GET(self) -> None:  # noqa: N802 (http.server API): counters, for a server in another process
            if self.path.rstrip("/").endswith("/v1/models"):  # what `GET /v1/models` returns on vLLM/OpenAI
                data = [{"id": m, "object": "model", "owned_by": "test"} for m in srv.models]
                self._send(200, json.dumps({"object": "list", "data": data}).encode())
                return
            if not self.path.rstrip("/").endswith("/_stats"):
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            with srv.lock:
                stats = {"request_count": srv.request_count, "ok_count": srv.ok_count,
                         "max_in_flight": srv.max_in_flight}
            self._send(200, json.dumps(stats).encode())

        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, b'{"error": {"message": "not found"}}')
                return
            body = json.loads(raw or b"{}")
            with srv.lock:
                srv.request_count += 1
                srv.in_flight += 1
                srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
                srv.headers.append(dict(self.headers.items()))
                srv.bodies.append(body)
                srv.request_times.append(time.monotonic())
            try:
                self._respond(body, srv._next_behaviour(body), self.headers.get("Authorization", ""))
            finally:
                with srv.lock:
                    srv.in_flight -= 1

        def _respond(self, body: dict, behaviour: Behaviour, auth: str) -> None:
            if srv.delay_s:
                time.sleep(srv.delay_s)
            if behaviour == "ok":  # decided again after the delay, so exactly `block_after` are ever answered
                with srv.lock:
                    if srv.block_after is not None and srv.ok_count >= srv.block_after:
                        behaviour = "block"
                    else:
                        srv.ok_count += 1
            if behaviour in ("hang", "block"):
                srv.stop_event.wait(srv.hang_s if behaviour == "hang" else None)
                return  # never answers; the connection closes when the handler returns
            if behaviour in ("429", "503"):
                extra = {}
                if srv.retry_after is not None:
                    extra["Retry-After"] = (formatdate(time.time() + float(srv.retry_after), usegmt=True)
                                            if srv.retry_after_http_date else str(srv.retry_after))
                self._send(int(behaviour), b'{"error": {"message": "rate limited"}}', extra)
            elif behaviour in ("500", "400"):
                page, kind = srv.error_body(behaviour, auth)
                self._send(int(behaviour), page, {"Content-Type": kind})
            elif behaviour in CUT:
                self._send_cut(behaviour, body)
            elif behaviour == "malformed":
                self._send(200, b'{"choices": [ {"message": ')
            elif behaviour == "no_choices":
                self._send(200, b'{"id": "x", "object": "chat.completion"}')
            else:  # "ok", already counted
                self._send(200, json.dumps(srv.completion(body), ensure_ascii=False).encode("utf-8"))

    return Handler


class LLMTestServerProcess:
    """The same server in a child process, so its threads do not share the client's GIL (for benchmarks), and
    so a test can kill it mid-run (`kill()`: SIGKILL, a server that dies) and start it again on the same port
    (`port=`), where the client's cache namespace (it holds the URL) finds the answers it already has.

    Options are the command line's: `--delay S`, `--default BEHAVIOUR`, `--block-after K`, `--reply TEXT`."""

    def __init__(self, *args: str, port: int = 0) -> None:
        self.args = list(args) + (["--port", str(port)] if port else [])
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1].split("/")[0])

    def __enter__(self) -> LLMTestServerProcess:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *self.args],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"test server did not start: {line!r}")
        self.base_url = line.split(" ", 1)[1]
        return self

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.base_url}/_stats", timeout=10) as resp:
            return json.loads(resp.read())

    def kill(self) -> None:
        """Die at once (SIGKILL): no reply is finished, every open connection is reset by the OS."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the fault-injecting OpenAI-compatible test server.")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds slept per request")
    ap.add_argument("--default", default="ok", help="behaviour for every request (ok, 429, 500, hang, ...)")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    ap.add_argument("--block-after", type=int, default=None, help="answer this many requests, then never again")
    ap.add_argument("--reply", default=None, help="the content of every reply (default: echo the user message)")
    args = ap.parse_args()
    text = args.reply

    def fixed(body: dict) -> str:
        return text

    reply = echo_reply if text is None else fixed
    srv = LLMTestServer(delay_s=args.delay, default=args.default, port=args.port, block_after=args.block_after,
                        reply_fn=reply).start()
    print(f"READY {srv.base_url}", flush=True)
    try:
        srv._thread.join()
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
