"""Throughput of the shared OpenAI-compatible client: concurrency 8 vs sequential, then a cached rerun.

    python benchmarks/bench_openai_client.py [--requests 64] [--delay 0.1] [--concurrency 8] [--json PATH]

Runs against the local test server (tests/llm_testserver.py, in its own process, like a real endpoint) with a
fixed per-request delay, which stands in for a model's latency: the question is whether the client overlaps waits, not how fast a model is.
Both runs go through the same client code, side by side in one process. Exit status 1 if the speedup is
below 6x or the cached rerun sends any request.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import benchkit  # noqa: E402
from emplifai.llm import ChatRequest, OpenAICompatClient  # noqa: E402
from llm_testserver import LLMTestServerProcess  # noqa: E402


def timed_run(url: str, reqs: list[ChatRequest], concurrency: int, cache: Path | None) -> tuple[float, dict]:
    client = OpenAICompatClient(url, "bench-model", concurrency=concurrency, cache_path=cache,
                                cache_namespace="bench", show_progress=False)
    start = time.perf_counter()
    results = client.chat_many(reqs)
    elapsed = time.perf_counter() - start
    if not all(r.ok for r in results):
        raise SystemExit(f"benchmark run had failures: {[r.error for r in results if not r.ok][:3]}")
    return elapsed, client.stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--delay", type=float, default=0.1, help="server latency per request (s)")
    ap.add_argument("--concurrency", type=int, default=8)
    benchkit.json_option(ap)
    args = ap.parse_args()
    reqs = [ChatRequest([{"role": "user", "content": f"prompt {i}"}], seed=0) for i in range(args.requests)]
    with LLMTestServerProcess("--delay", str(args.delay)) as srv, tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "llm.sqlite"
        timed_run(srv.base_url, reqs[:2], 2, None)  # warm-up: lazy imports inside httpx/anyio
        seq_s, _ = timed_run(srv.base_url, reqs, 1, None)
        par_s, _ = timed_run(srv.base_url, reqs, args.concurrency, cache)
        before = srv.stats()
        cached_s, cached_stats = timed_run(srv.base_url, reqs, args.concurrency, cache)
        after = srv.stats()
        rerun_requests = after["request_count"] - before["request_count"]
    ratio = seq_s / par_s
    n = args.requests
    print(f"server delay {args.delay * 1000:.0f} ms/request, {n} requests")
    print(f"sequential (concurrency 1): {seq_s:6.2f} s  {n / seq_s:7.1f} req/s")
    print(f"concurrency {args.concurrency:<2}            : {par_s:6.2f} s  {n / par_s:7.1f} req/s  "
          f"(max in flight at server: {after['max_in_flight']})")
    print(f"speedup: {ratio:.2f}x (goal >= 6x; ideal {args.concurrency}x)")
    print(f"cached rerun: {cached_s:6.3f} s, requests sent by client {cached_stats['requests_sent']}, "
          f"received by server {rerun_requests}, cache hits {cached_stats['cache_hits']} (goal 0 requests)")
    benchkit.write_json(args.json, {
        "sequential": {"seconds": seq_s, "requests_per_s": n / seq_s},
        f"concurrency_{args.concurrency}": {"seconds": par_s, "requests_per_s": n / par_s, "speedup": ratio,
                                            "max_in_flight": after["max_in_flight"]},
        "cached_rerun": {"seconds": cached_s, "requests_sent": cached_stats["requests_sent"],
                         "requests_received": rerun_requests, "cache_hits": cached_stats["cache_hits"]}})
    ok = ratio >= 6.0 and rerun_requests == 0 and cached_stats["requests_sent"] == 0
    return benchkit.verdict(ok, f"concurrency {args.concurrency} ≥ 6x sequential; cached rerun sends 0 requests")


if __name__ == "__main__":
    sys.exit(main())
