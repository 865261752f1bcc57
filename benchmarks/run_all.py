"""Run every benchmark and rewrite benchmarks/RESULTS.md with what each one printed.

    .venv/bin/python benchmarks/run_all.py [--threads 1] [--results benchmarks/RESULTS.md]

Each benchmark runs as its own process with `--threads` torch threads (OMP_NUM_THREADS), so
that on a machine shared with other jobs both sides of every ratio run under the same
conditions. The GPU variants (a LLaVA-1.5-7B-shaped model in bfloat16) run when torch sees a
CUDA GPU and are listed as not run otherwise. A benchmark that fails is recorded as failed with
the end of its error output, and the command then exits with status 1.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
ERROR_TAIL_LINES = 40
LINE_WIDTH = 100
CPU_TIMEOUT_S = 1800
GPU_TIMEOUT_S = 3600
CPU_LABEL = "CPU, small random models, float32"
GPU_LABEL = "GPU, LLaVA-1.5-7B-shaped, bfloat16"
# Figures only: no download progress bars or load reports in what is captured.
QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


@dataclass(frozen=True)
class Benchmark:
    title: str
    script: str
    about: str  # what is compared, in plain words (Markdown)
    cpu_args: tuple[str, ...] = ()
    gpu_args: tuple[str, ...] | None = None  # None: no GPU variant


@dataclass(frozen=True)
class Outcome:
    label: str
    command: str
    status: str  # "ok", "failed" or "not run: ..."
    seconds: float = 0.0
    output: str = ""


BENCHMARKS = (
    Benchmark(
        "Batched against one-at-a-time generation (`hf` backend)",
        "bench_generation.py",
        "The same 64 image + question requests answered by the `hf` backend in batches of 8 and "
        "one at a time, greedy, so both ways should give the same answers. Batching pays for "
        "each decoding step once per batch instead of once per request.",
        gpu_args=("--gpu-7b",),
    ),
    Benchmark(
        "Concurrent against sequential requests (`openai` backend)",
        "bench_api_concurrency.py",
        "The `openai` backend sending 64 requests to a loopback OpenAI-compatible stub server "
        "that takes 100 ms per request: one at a time, then 8 and 16 in flight. The work is "
        "waiting on the network, so the ideal speed-up is the concurrency.",
    ),
    Benchmark(
        "One model over 1, 2 and 3 endpoints (`openai` backend)",
        "bench_endpoints.py",
        "The `openai` backend sending 240 text requests to the first of three loopback "
        "OpenAI-compatible stub servers (each a process of its own, 50 ms per request), then to "
        "the first two, then to all three, 4 requests at once per endpoint. The ideal speed-up "
        "is the number of endpoints; the goal is at least 2.7x at three.",
    ),
    Benchmark(
        "An image's own file against a PNG re-encoding (API backends)",
        "bench_image_bytes.py",
        "16 seeded photo-like 1024x768 JPEGs (gradients and soft blobs under noise, quality 90) "
        "in the request bodies the `openai`, `anthropic` and `google` backends build: as before, "
        "the image re-encoded as PNG, and now, the JPEG file's own bytes. Body sizes and the CPU "
        "time per image of building a body (the encoding included), with their ratios, and how "
        "many images pass Anthropic's 5 MB per-image limit either way.",
    ),
    Benchmark(
        "`evaluate()` under long-tailed answer times (`openai` backend)",
        "bench_eval_pipeline.py",
        "`holisafe.run.evaluate.evaluate` itself (answer, store each response as it arrives, judge "
        "with the string judge) on 480 samples against a loopback OpenAI-compatible stub whose "
        "answer times are lognormal (median 50 ms, sigma 1: mean about 85 ms, 99th percentile "
        "about 0.5 s), seeded by the question so every configuration waits the same times. Set "
        "against the ideal single pool (the backend's `generate` over all requests, 16 in "
        "flight, no store or judge) and against `evaluate()` at concurrency 1. Goals: within "
        "1.25x of the pool, and at least 12x faster than concurrency 1.",
    ),
    Benchmark(
        "Server throughput under concurrent load (`holisafe serve`)",
        "bench_server.py",
        "`holisafe serve` on a small random LLaVA in its own process, reached through the "
        "official `openai` client on loopback: 100 requests (a 64-112 px PNG and a question, "
        "max_tokens 32, greedy) one after another, then from 50 client threads at once. The "
        "server gathers concurrent requests into batches of up to 8 (10 ms wait). The GPU "
        "variant sends 32 requests from 16 clients.",
        cpu_args=("--threads", "{threads}"),
        gpu_args=("--gpu-7b", "--clients", "16", "--per-client", "2"),
    ),
    Benchmark(
        "Gated against ungated server throughput on half-unsafe traffic (`holisafe serve`)",
        "bench_gate.py",
        "Two `holisafe serve` processes of the same small random Safe-LLaVA side by side on "
        "loopback, one with `--gate` and one without, its head rewritten to score a pool of "
        "pictures from about 0.1 to 0.9 and the gate set between the pool's halves: 100 "
        "requests (a 64 px PNG and a question, max_tokens 32, greedy), unsafe and safe "
        "pictures taking turns, from 50 client threads at once; the servers take turns for 5 "
        "rounds.",
    ),
    Benchmark(
        "Server memory under concurrent maximum-size image requests (`holisafe serve`)",
        "bench_server_memory.py",
        "`holisafe serve` on the tiny LLaVA in its own process, default limits, receiving 96 "
        "chat requests at once, each carrying an image at both image limits (16,000,000 pixels "
        "in a PNG just under 8 MiB, a 10.6 MiB body). The server admits 64 (`--max-pending`) "
        "and answers the rest 503 at once; it decodes images within its pixel budget (32 M, "
        "two such images). Its resident memory at rest and at its peak (the kernel's "
        "high-water mark) are set against the bound it states for what requests hold "
        "(`ServeLimits.memory_bound`), while /health is timed every 100 ms. The script fails "
        "when the peak passes the bound, /health fails, or no request is refused.",
    ),
    Benchmark(
        "Legitimate requests under a slow-body attack (`holisafe serve`)",
        "bench_slow_clients.py",
        "`holisafe serve` on the tiny LLaVA in its own process on 127.0.0.1, default limits, "
        "while 64 connections from the same address each send a 4 KiB chat body at 1 byte/s and"
        " are reopened whenever the server answers them; after 12 s of this, 20 legitimate chat"
        " requests (a 64 px PNG, max_tokens 4) are sent from 4 threads. The script fails when a "
        "legitimate request is not answered.",
    ),
    Benchmark(
        "Server throughput with the audit of served traffic on and off (`holisafe serve`)",
        "bench_audit.py",
        "Two `holisafe serve` processes on the tiny LLaVA as a Safe-VLM, one with `--audit "
        "STORE` and one without, each sent 200 chat requests (a 64-112 px PNG and a question, "
        "max_tokens 16, greedy) from 50 client threads of its own, both servers at the same "
        "time so that other load falls on both alike, for 9 rounds. The goal: the audit costs "
        "at most 3% of the throughput; each server's CPU time per request measures the same "
        "cost less exposed to other jobs. The tiny model answers fast, so the audit's share of "
        "the work is larger here than behind any real model. The longest a reply waited on the "
        "audit is the server's own measure (/health).",
        cpu_args=("--threads", "{threads}", "--rounds", "9"),
    ),
    Benchmark(
        "The visual guard module: its cost, and the guard head against a generative guard",
        "bench_guard.py",
        "The same LLaVA weights as a plain model and as Safe-VLMs, random weights (this measures "
        "cost, not quality). (1) One forward pass of each. At the CPU's toy scale the head (a "
        "256 → 128 → 20 MLP), the hidden-state capture and, for `meta_token`, one extra token "
        "per sequence are large next to a 4.3 M-parameter model; on a 7B model the same work is "
        "a far smaller share. (2) Answering and classifying: a Safe-VLM's generate, whose "
        "prefill also yields the safety prediction, against a plain generate followed by a "
        "separate guard pass. (3) Classifying images with the safety head (one forward pass) "
        "against asking the same model in words with a guard prompt listing the 19 harm "
        "categories and generating the tokens of a verdict, as generative guards such as "
        "LlavaGuard and Llama Guard do. Verdict lengths are assumptions, printed with the "
        "figures: about 10 tokens for a short category verdict, about 100 for a LlavaGuard-style "
        "JSON answer with a rationale. Our guard prompt is short; LlavaGuard's policy prompt is "
        "far longer, which makes its prefill costlier still. Every generate here makes exactly "
        "the number of tokens asked, so random weights stopping early cannot skew a ratio.",
        cpu_args=("--repeats", "40"),
        gpu_args=("--gpu-7b", "--repeats", "10"),
    ),
    Benchmark(
        "The meta token's vision placement against its llm placement",
        "bench_meta_token_placement.py",
        "The same LLaVA weights as two Safe-VLMs whose head reads the meta token: the `llm` "
        "placement (a token of the language model's input only) and the `vision` placement, the "
        "paper's (a token appended to the vision encoder's patches, carried through the "
        "projector and placed right after the image's tokens). Both give the language model one "
        "token more per image; the vision placement adds one token to the vision encoder's "
        "sequence (17 + 1 on the CPU model, 577 + 1 on the 7B shape). Timed with the two "
        "models taking turns: the forward pass, the vision encoder and projector alone, and "
        "generate with 16 new tokens; the ratio is vision over llm.",
        cpu_args=("--repeats", "40"),
        gpu_args=("--gpu-7b", "--repeats", "10"),
    ),
    Benchmark(
        "Judging and evaluation throughput; a full HoliSafe-Bench run extrapolated",
        "bench_eval.py",
        "(1) The published string-matching judge over HoliSafe-Mini's reference responses "
        "(mostly short refusals) and over helpful answers made about 2,000 characters long, the "
        "judge's slowest case. (2) `holisafe.run.evaluate.evaluate` end to end (generate, store "
        "each batch in SQLite, judge with the string judge) on HoliSafe-Mini's benchmark with "
        "512 px images, and the wall time of a 4,031-sample HoliSafe-Bench run at the measured "
        "rate. On the CPU the model is the tiny LLaVA of `holisafe.synthetic.tiny`, so the rate "
        "says what the harness around a model costs, not what a real model's run takes; the GPU "
        "variant times a random 7B-shaped LLaVA on 64 samples and extrapolates. Random weights "
        "ramble, so answers tend to run to the token limit (128), as long as or longer than a "
        "real model's refusals.",
        gpu_args=("--gpu-7b", "--samples", "64"),
    ),
    Benchmark(
        "Training throughput with and without the visual guard module",
        "bench_training.py",
        "The library's own training set-up (`holisafe.train`) on HoliSafe-Mini, the same "
        "batches with the module (`meta_token` and `image_mean` head inputs) and without "
        "(`--vgm none`): samples/s of each, the median of several runs per setting with the "
        "settings taking turns, after 3 untimed warm-up steps. CPU: the tiny LLaVA, full "
        "fine-tuning. GPU: a random "
        "LLaVA-1.5-7B-shaped model, LoRA on a bfloat16 base, with peak memory and the time of "
        "one epoch over HoliSafe's 10,951 training pairs.",
        cpu_args=("--repeats", "5"),
        gpu_args=("--gpu-7b", "--steps", "20", "--repeats", "1"),
    ),
    Benchmark(
        "Threads against a competing CPU load",
        "bench_threads.py",
        "The demo's vision pretraining (1,000 images) in a fresh process on one torch thread and "
        "on every available core, with the machine as it is and with one busy-looping process "
        "per core beside it: wall and CPU time of each, and whether the thread counts wrote the "
        "same weights. The script sets each run's OMP_NUM_THREADS itself.",
        cpu_args=("--images", "1000"),
    ),
)


def shown_command(script: str, args: tuple[str, ...], threads: int) -> str:
    return " ".join(
        [f"OMP_NUM_THREADS={threads}", ".venv/bin/python", f"benchmarks/{script}", *args]
    )


def run(label: str, script: str, args: tuple[str, ...], threads: int, timeout_s: int) -> Outcome:
    command = shown_command(script, args, threads)
    env = os.environ | QUIET | {"OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    # A session of its own, so that a benchmark stopped for time takes its server down with it.
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        status = f"failed (stopped after {timeout_s} s)"
        return Outcome(label, command, status, time.perf_counter() - start, tail(stdout + stderr))
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        status = f"failed (exit status {process.returncode})"
        return Outcome(label, command, status, seconds, tail(stdout + stderr))
    return Outcome(label, command, "ok", seconds, stdout.rstrip())


def tail(output: str) -> str:
    return "\n".join(output.splitlines()[-ERROR_TAIL_LINES:])


def run_benchmark(benchmark: Benchmark, threads: int) -> list[Outcome]:
    cpu_args = tuple(a.format(threads=threads) for a in benchmark.cpu_args)
    outcomes = [run(CPU_LABEL, benchmark.script, cpu_args, threads, CPU_TIMEOUT_S)]
    gpu_args = benchmark.gpu_args
    if gpu_args is not None and torch.cuda.is_available():
        outcomes.append(run(GPU_LABEL, benchmark.script, gpu_args, threads, GPU_TIMEOUT_S))
    elif gpu_args is not None:
        command = shown_command(benchmark.script, gpu_args, threads)
        outcomes.append(Outcome(GPU_LABEL, command, "not run: no GPU"))
    return outcomes


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_description() -> str:
    if not torch.cuda.is_available():
        return "none (torch sees no CUDA GPU)"
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    return f"{torch.cuda.get_device_name()}, {memory:.0f} GiB, CUDA {torch.version.cuda}"


def code_version() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = " with uncommitted changes" if git("status", "--porcelain").strip() else ""
    return f"commit {commit}{changed}"


def machine_description(threads: int) -> list[str]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return [
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; memory {memory:.0f} GiB",
        f"- GPU: {gpu_description()}",
        f"- {platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}",
        f"- torch threads per benchmark process: {threads}; load average when the run began "
        f"(1, 5, 15 min): {load}",
        f"- code: {code_version()}",
    ]


def results_markdown(header: list[str], sections: list[tuple[Benchmark, list[Outcome]]]) -> str:
    intro = (
        "Written by `.venv/bin/python benchmarks/run_all.py`; do not edit by hand. Every figure "
        "is measured side by side in one run of the script named, and the ratios are what to "
        "read: the machine may be shared with other jobs, so absolute times are only "
        "indicative. Each benchmark ran with a fixed number of torch threads per process, which "
        "keeps the two sides of a ratio under the same conditions."
    )
    lines = [
        "# Benchmark results",
        "",
        textwrap.fill(intro, LINE_WIDTH, break_on_hyphens=False),
        "",
        *header,
    ]
    for benchmark, outcomes in sections:
        about = textwrap.fill(benchmark.about, LINE_WIDTH, break_on_hyphens=False)
        lines += ["", f"## {benchmark.title}", "", about]
        for outcome in outcomes:
            lines += ["", f"### {outcome.label}", "", f"`{outcome.command}`", ""]
            lines += outcome_lines(outcome)
    return "\n".join(lines) + "\n"


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def outcome_lines(outcome: Outcome) -> list[str]:
    if outcome.status.startswith("not run"):
        return [f"{sentence(outcome.status)}."]
    if outcome.status == "ok":
        said = f"Took {outcome.seconds:.0f} s:"
    else:
        said = (
            f"**{sentence(outcome.status)}** after {outcome.seconds:.0f} s; the end of its output:"
        )
    return [said, "", "```", outcome.output, "```"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per benchmark")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()

    started = datetime.datetime.now(datetime.UTC)
    header = machine_description(args.threads)
    start = time.perf_counter()
    sections = []
    for number, benchmark in enumerate(BENCHMARKS, 1):
        print(f"[{number}/{len(BENCHMARKS)}] {benchmark.script}", flush=True)
        outcomes = run_benchmark(benchmark, args.threads)
        for outcome in outcomes:
            print(f"    {outcome.label}: {outcome.status} ({outcome.seconds:.0f} s)", flush=True)
        sections.append((benchmark, outcomes))
    total = time.perf_counter() - start
    header.insert(0, f"- run: {started:%Y-%m-%d %H:%M} UTC, {total / 60:.1f} minutes in all")
    args.results.write_text(results_markdown(header, sections), encoding="utf-8")
    failed = [o for _, outcomes in sections for o in outcomes if o.status.startswith("failed")]
    print(f"wrote {args.results} in {total / 60:.1f} minutes; {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
