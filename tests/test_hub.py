"""Local folder or Hub: one rule, and offline detected in seconds with what to do next."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants
import pytest

from holisafe.core import hub
from holisafe.core.errors import DataError
from holisafe.core.hub import HubError, is_hub_id, local_or_hub
from holisafe.core.records import ModelError
from holisafe.data import load_samples
from holisafe.models.hf import HFModel
from holisafe.train import TrainError, TrainSettings, train


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("etri-vilab/holisafe-bench", True),
        ("gpt2", True),
        ("llava-hf/llava-1.5-7b-hf", True),
        ("./holisafe-bench", False),
        ("../models/x", False),
        ("/abs/model", False),
        ("~/model", False),
        ("runs/demo/safe-vlm", False),
        ("holisafe-bench/", False),
        ("a..b/c", False),
    ],
)
def test_hub_ids_and_paths(name, expected):
    assert is_hub_id(name) is expected


@pytest.fixture
def hub_never_asked(monkeypatch):
    def fail():
        raise AssertionError("the Hub was asked about a local path")

    monkeypatch.setattr(hub, "hub_unreachable", fail)


def test_a_missing_local_folder_is_not_looked_up_on_the_hub(tmp_path, monkeypatch, hub_never_asked):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_samples("./holisafe-bench")
    with pytest.raises(ModelError, match=r"'\./my-model': no such file or folder"):
        HFModel("hf/./my-model")
    with pytest.raises(HubError, match="is a file"):
        (tmp_path / "weights.bin").write_text("x")
        local_or_hub("weights.bin", "model")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def hub_down(monkeypatch, tmp_path):
    """The Hub endpoint refuses connections and the cache is empty."""
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))


def test_an_unreachable_hub_fails_at_once_naming_offline_mode_and_the_cache(hub_down, tmp_path):
    cache = str(tmp_path / "cache")
    with pytest.raises(ModelError) as model_error:
        HFModel("hf/someone/some-model")
    with pytest.raises(DataError) as data_error:
        load_samples("someone/some-bench")
    settings = TrainSettings(base="hf/someone/some-model", data=str(tmp_path), out=str(tmp_path))
    with pytest.raises(TrainError) as train_error:
        train(settings)
    for error in (model_error, data_error, train_error):
        message = str(error.value)
        assert "does not answer" in message and "HF_HUB_OFFLINE" in message and cache in message
    assert "gated" not in str(data_error.value)


def test_offline_mode_is_named_and_the_cache_is_used(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        local_or_hub("someone/some-model", "hf model")
    # A snapshot in the cache, laid out as huggingface_hub stores it, is served from there.
    repo = tmp_path / "models--someone--some-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    assert local_or_hub("someone/some-model", "hf model") == str(repo / "snapshots" / ("0" * 40))


def test_the_cli_says_it_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {
        "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
        "HF_HOME": str(tmp_path / "hf"),
    }
    command = [sys.executable, "-m", "holisafe", "data", "stats", "someone/some-bench"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "HF_HUB_OFFLINE" in lines[0], done.stderr


def test_the_hub_is_asked_once_per_process(monkeypatch):
    asked = []

    class Hub(BaseHTTPRequestHandler):
        def do_HEAD(self):
            asked.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Hub) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        for _ in range(3):  # as one load asks for its config, processor and weights
            assert local_or_hub("someone/some-model", "hf model") == "someone/some-model"
        server.shutdown()
    assert asked == ["/"]
