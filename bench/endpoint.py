"""Requests per second of the endpoint client (competition.models.chat) against a server with a fixed
latency: with `concurrency` requests in flight it should reach concurrency / latency.

Run: .venv/bin/python bench/endpoint.py [--latency 0.2] [--concurrency 4 32] [--rounds 50] [--repeats 3]

The server is the tests' stub (tests/stub_server.py, stdlib http.server, keep-alive) in a process of
its own, answering every request after --latency seconds. Each concurrency sends concurrency x
--rounds distinct requests through ChatClient.complete_many (a fresh cache, so every one is sent);
requests/s = requests / wall time of that call, client start-up included; each concurrency runs
--repeats times and the fastest counts (the CPU is shared: the load average is printed). Exit
code 1 when a figure is more than 10% below concurrency / latency.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # stub_server: the server the tests use


def serve(latency: float, ready, stop) -> None:
    from stub_server import StubServer

    server = StubServer(latency=latency)
    ready.put(server.url)
    stop.wait()
    server.close()


def requests_per_second(url: str, concurrency: int, count: int, cache: Path) -> float:
    from competition.models.chat import ChatClient, Endpoint

    client = ChatClient(Endpoint(base_url=url, model="stub", api_key_env="", concurrency=concurrency), cache,
                        label=f"concurrency {concurrency}", echo=lambda line: None)
    bodies = [client.body([{"role": "user", "content": f"요청 {i}"}], max_tokens=8) for i in range(count)]
    start = time.perf_counter()
    answers = client.complete_many(bodies)
    elapsed = time.perf_counter() - start
    assert answers == [f"요청 {i}" for i in range(count)] and client.report.sent == count
    return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2, help="Seconds the server takes per request.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 32])
    parser.add_argument("--rounds", type=int, default=50, help="Requests per concurrency = concurrency x rounds.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per concurrency; the fastest counts.")
    args = parser.parse_args()

    ready, stop = multiprocessing.Queue(), multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(args.latency, ready, stop), daemon=True)
    server.start()
    url = ready.get(timeout=30)
    failed = False
    try:
        with tempfile.TemporaryDirectory() as folder:
            print(f"latency {args.latency:g} s, {args.rounds} rounds per concurrency, best of {args.repeats}; "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before")
            print(f"{'concurrency':>11} {'requests':>8} {'req/s':>8} {'ideal':>8} {'ratio':>6}  runs (req/s)")
            for concurrency in args.concurrency:
                count = concurrency * args.rounds
                rates = [requests_per_second(url, concurrency, count, Path(folder) / f"c{concurrency}_{run}.jsonl")
                         for run in range(args.repeats)]
                rate, ideal = max(rates), concurrency / args.latency
                failed |= rate < 0.9 * ideal
                print(f"{concurrency:>11} {count:>8} {rate:>8.1f} {ideal:>8.1f} {rate / ideal:>6.3f}  "
                      + " ".join(f"{r:.1f}" for r in rates))
            print(f"load average {os.getloadavg()[0]:.1f} after")
    finally:
        stop.set()
        server.join(timeout=10)
    print("all within 10% of concurrency / latency" if not failed else "BELOW 10% of concurrency / latency")
    return int(failed)


if __name__ == "__main__":
    raise SystemExit(main())
