"""`transformers serve` (transformers' own OpenAI-compatible server) on a packaged model, offline, CPU.

The openai client, predictor and judge are tested for faults against the scripted server in llm_testserver.py;
this is the real thing beside it: a real server process, real generations, the fields a real server ignores
(it drops `logprobs`, `response_format`, `n` with a warning) and its own reply shapes.

    with TransformersServe(ROOT / "models/base/smollm2-135m") as srv:
        srv.base_url, srv.model            # -> predictor.base_url / predictor.model
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TransformersServe:
    def __init__(self, model_dir: str | Path, startup_s: float = 240.0, threads: int = 2) -> None:
        self.model = str(Path(model_dir).resolve())
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.startup_s, self.threads = startup_s, threads
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty server never blocks on a full pipe

    def __enter__(self) -> TransformersServe:
        cli = Path(sys.executable).with_name("transformers")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(self.threads)}
        self.proc = subprocess.Popen([str(cli), "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port),
                                      "--device", "cpu", "--dtype", "float32", "--default-seed", "0"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`transformers serve` exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(1.0)
        self.__exit__()
        raise TimeoutError(f"`transformers serve {self.model}` not healthy after {self.startup_s:.0f} s")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
