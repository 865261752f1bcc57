"""The `vllm` backend: starts `vllm serve` for a model and talks to it as the `openai` backend.

vLLM is not a dependency of holisafe (`pip install 'holisafe[vllm]'`, on a machine with a CUDA
GPU, puts it beside it): this backend only needs its `vllm` command on the PATH. The server
listens on a free loopback port, with the tensor parallel size, GPU memory fraction and maximum
model length given; its output goes to a log file named in any error. The server stops when the
model is closed or the process exits. Requests go through the OpenAI backend, `concurrency` at
once (vLLM batches them on the GPU, so a high concurrency pays).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from holisafe.core.records import GenerationSettings, ModelBase, ModelError, Request, Response
from holisafe.models.openai_api import NO_KEY, OpenAIModel

EXECUTABLE = "vllm"
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class VLLMSettings:
    """How `vllm serve` runs the model (its options of the same names)."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    startup_timeout_s: float = 1800.0  # loading a large model from disk takes minutes

    def arguments(self) -> list[str]:
        arguments = [
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--gpu-memory-utilization",
            str(self.gpu_memory_utilization),
        ]
        if self.max_model_len is not None:
            arguments += ["--max-model-len", str(self.max_model_len)]
        return arguments


class VLLMModel(ModelBase):
    """`vllm/<Hub id or folder>`: the model served by a `vllm serve` this object starts."""

    def __init__(
        self,
        name: str,
        settings: VLLMSettings = VLLMSettings(),
        *,
        concurrency: int = 64,
        timeout_s: float = 600.0,
        max_retries: int = 5,
    ):
        if not name:
            raise ModelError("vllm: no model name given; use vllm/<Hub id or folder>")
        if settings.tensor_parallel_size < 1 or not 0 < settings.gpu_memory_utilization <= 1:
            raise ModelError(
                "vllm: the tensor parallel size must be at least 1 and the GPU memory fraction "
                f"in (0, 1], got {settings.tensor_parallel_size} and "
                f"{settings.gpu_memory_utilization}"
            )
        executable = shutil.which(EXECUTABLE)
        if executable is None:
            raise ModelError(
                "vllm: the vllm command is not installed; pip install 'holisafe[vllm]' on a "
                "machine with a CUDA GPU, or serve the model yourself and use openai/<model> "
                "with --base-url"
            )
        self.spec = f"vllm/{name}"
        self.settings = settings
        self.concurrency = concurrency
        port = _free_port()
        self.log = Path(tempfile.mkstemp(prefix="holisafe-vllm-", suffix=".log")[1])
        command = [executable, "serve", name, "--host", "127.0.0.1", "--port", str(port)]
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                [*command, *settings.arguments()],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._stop = weakref.finalize(self, _stop, self._process)
        root = f"http://127.0.0.1:{port}"
        try:
            self._wait_until_ready(root)
        except BaseException:
            self.close()
            raise
        self._client = OpenAIModel(
            name,
            base_url=f"{root}/v1",
            api_key=NO_KEY,
            concurrency=concurrency,
            timeout_s=timeout_s,
            max_retries=max_retries,
        )

    @property
    def details(self) -> dict[str, object]:
        return self._client.details | {
            "tensor_parallel_size": self.settings.tensor_parallel_size,
            "gpu_memory_utilization": self.settings.gpu_memory_utilization,
            "max_model_len": self.settings.max_model_len,
        }

    def answers(
        self, requests: list[Request], settings: GenerationSettings
    ) -> Iterator[tuple[int, Response]]:
        return self._client.answers(requests, settings)

    def close(self) -> None:
        """Stop the server (also done when the object is collected or the process exits)."""
        self._stop()

    def _wait_until_ready(self, root: str) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ModelError(
                    f"vllm serve exited with status {self._process.returncode} while starting; "
                    f"the end of its log ({self.log}):\n{self._log_tail()}"
                )
            try:
                httpx.get(f"{root}/health", timeout=5)
                return  # vLLM listens only once its engine is up: any answer means ready
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.5)
        raise ModelError(
            f"vllm serve did not answer within {self.settings.startup_timeout_s:g} s; the end "
            f"of its log ({self.log}):\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:])


def load_vllm_model(
    name: str,
    *,
    tensor_parallel_size: int,
    gpu_memory_utilization: float,
    max_model_len: int | None,
    concurrency: int,
    timeout_s: float,
    max_retries: int,
) -> VLLMModel:
    """The registry's loader, given the fields of `VLLMOptions`."""
    settings = VLLMSettings(tensor_parallel_size, gpu_memory_utilization, max_model_len)
    return VLLMModel(
        name, settings, concurrency=concurrency, timeout_s=timeout_s, max_retries=max_retries
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
