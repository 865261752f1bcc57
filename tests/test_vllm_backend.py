"""The vllm/ backend, through a stand-in `vllm` executable that serves the OpenAI stub."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from holisafe.models import ModelError, ModelOptions, load_model
from holisafe.run.evaluate import evaluate
from tests.datafixtures import write_official

ROOT = Path(__file__).resolve().parent.parent

STAND_IN = f"""#!{sys.executable}
# A stand-in for `vllm serve MODEL --host H --port P ...`: records its arguments, then serves
# the OpenAI-compatible stub for MODEL on that port until it is stopped.
import json, sys, threading
sys.path.insert(0, {str(ROOT)!r})
from tests.stub_servers import OpenAIDialect, StubServer

arguments = sys.argv[1:]
with open(sys.argv[0] + ".args", "w") as out:
    json.dump(arguments, out)
model = arguments[1]
if model == "too-big":
    print("torch.OutOfMemoryError: CUDA out of memory", flush=True)
    sys.exit(1)
port = int(arguments[arguments.index("--port") + 1])
StubServer(OpenAIDialect(), api_key=None, model=model, reply="stub answer", port=port).start()
threading.Event().wait()
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    executable = folder / "vllm"
    executable.write_text(STAND_IN)
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return executable


def test_vllm_serves_the_model_and_a_run_goes_through_it(tmp_path, stand_in):
    options = ModelOptions(
        concurrency=16, tensor_parallel_size=2, gpu_memory_utilization=0.8, max_model_len=4096
    )
    model = load_model("vllm/org/some-vlm", options)
    try:
        outcome = evaluate(
            "vllm/org/some-vlm", write_official(tmp_path / "bench"), tmp_path / "runs.db",
            model=model,
        )  # fmt: skip
        details = model.details
    finally:
        model.close()
    assert outcome.generated == 7 and not outcome.response_errors
    arguments = json.loads(Path(f"{stand_in}.args").read_text())
    assert arguments[:2] == ["serve", "org/some-vlm"]
    pairs = dict(zip(arguments[2::2], arguments[3::2], strict=True))
    assert pairs["--tensor-parallel-size"] == "2" and pairs["--gpu-memory-utilization"] == "0.8"
    assert pairs["--max-model-len"] == "4096" and pairs["--host"] == "127.0.0.1"
    assert details["tensor_parallel_size"] == 2 and details["concurrency"] == 16
    assert model._process.poll() is not None  # closing stopped the server


def test_a_server_that_dies_while_starting_says_why(stand_in):
    with pytest.raises(ModelError, match=r"(?s)status 1 while starting.*CUDA out of memory"):
        load_model("vllm/too-big")


def test_without_vllm_installed_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ModelError, match=r"holisafe\[vllm\]"):
        load_model("vllm/org/some-vlm")
