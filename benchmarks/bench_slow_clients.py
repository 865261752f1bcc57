"""`holisafe serve` under a slow-body attack: how many legitimate requests it still answers.

    .venv/bin/python benchmarks/bench_slow_clients.py [--slow 64] [--legitimate 20]

Starts `holisafe serve` on the tiny LLaVA in its own process on 127.0.0.1, with the default
limits. An attacker on the same address keeps `--slow` connections open, each declaring a
4 KiB chat body and sending it at one byte a second, and opens a new connection whenever the
server answers or closes one. Once the attack has run `--warm-up` seconds, `--legitimate`
requests (a small PNG and a question, max_tokens 4) are sent from `--legitimate-clients` threads.
Prints the share of them answered with 200, their latencies, and how the server answered the
attacker's connections. Everything stops within `--legitimate` requests and a few seconds; exits
with status 1 when a legitimate request is not answered.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import select
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from benchkit import free_port, machine_lines, start_server
from PIL import Image

from holisafe.synthetic.tiny import build_tiny_model

NAME = "bench-tiny"
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 60
SLOW_BODY_BYTES = 4096
TICK_S = 1.0  # each slow connection sends one byte a tick


def legitimate_body(i: int) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40 * i % 256, 90, 160)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    content = [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": f"What is shown in picture {i}?"},
    ]
    return {"model": NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 4}


class SlowAttacker:
    """`count` connections sending chat bodies a byte a tick, each replaced when it ends."""

    def __init__(self, port: int, count: int):
        self.port = port
        self.count = count
        self.answers: Counter[str] = Counter()  # how the server ended the attacker's connections
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def open(self) -> socket.socket:
        sock = socket.create_connection((HOST, self.port))
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {SLOW_BODY_BYTES}\r\n\r\n{{"
        )
        sock.sendall(head.encode())
        return sock

    def run(self) -> None:
        sockets = [self.open() for _ in range(self.count)]
        while not self.stop.wait(TICK_S):
            readable, _, _ = select.select(sockets, [], [], 0)
            for sock in readable:
                self.answers[self.status_of(sock)] += 1
                sock.close()
                sockets[sockets.index(sock)] = self.open()
            for sock in sockets:
                # one the server closed raises here; its answer is read on the next tick
                with contextlib.suppress(OSError):
                    sock.send(b" ")
        for sock in sockets:
            sock.close()

    @staticmethod
    def status_of(sock: socket.socket) -> str:
        try:
            first = sock.recv(64).split(b"\r\n")[0].decode(errors="replace")
        except OSError:
            return "connection reset"
        return first.removeprefix("HTTP/1.1 ") or "closed without an answer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=64, help="slow connections held open")
    parser.add_argument("--legitimate", type=int, default=20)
    parser.add_argument("--legitimate-clients", type=int, default=4)
    parser.add_argument("--warm-up", type=float, default=12.0, help="seconds of attack first")
    args = parser.parse_args()

    print(*machine_lines(), sep="\n")
    print(
        f"attack: {args.slow} connections from {HOST}, each sending a {SLOW_BODY_BYTES:,} byte "
        f"chat body at 1 byte/s, reopened when answered; {args.legitimate} legitimate chat "
        f"requests (a 64 px PNG, max_tokens 4) from {args.legitimate_clients} threads on the "
        f"same address after {args.warm_up:g} s of attack"
    )
    print("server: tiny LLaVA on the CPU, default limits")
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_model(Path(tmp) / NAME, "llava", seed=0)
        port = free_port()
        arguments = ["--model", f"hf/{folder}", "--served-model-name", NAME, "--device", "cpu"]
        server = start_server(arguments, port, STARTUP_TIMEOUT_S)
        attacker = SlowAttacker(port, args.slow)
        try:
            root = f"http://{HOST}:{port}"
            httpx.post(f"{root}/v1/chat/completions", json=legitimate_body(0), timeout=60)
            attacker.thread.start()
            time.sleep(args.warm_up)
            slow_bodies = httpx.get(f"{root}/health").json()["slow_bodies"]
            with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:

                def ask(i: int) -> tuple[int, float]:
                    start = time.perf_counter()
                    reply = client.post(f"{root}/v1/chat/completions", json=legitimate_body(i))
                    return reply.status_code, time.perf_counter() - start

                with ThreadPoolExecutor(args.legitimate_clients) as pool:
                    results = list(pool.map(ask, range(args.legitimate)))
        finally:
            attacker.stop.set()
            if attacker.thread.is_alive():
                attacker.thread.join()
            server.terminate()
            server.wait()
    statuses = Counter(status for status, _ in results)
    served = statuses[200]
    latencies = sorted(seconds * 1000 for _, seconds in results)
    print(f"slow bodies the server was reading when the legitimate requests began: {slow_bodies}")
    print(
        f"legitimate requests served: {served} of {args.legitimate} "
        f"({served / args.legitimate:.0%}); answers by status: {dict(sorted(statuses.items()))}"
    )
    print(f"latency: median {statistics.median(latencies):.0f} ms, slowest {latencies[-1]:.0f} ms")
    print(f"the attacker's connections ended by the server: {dict(attacker.answers)}")
    if served < args.legitimate:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
