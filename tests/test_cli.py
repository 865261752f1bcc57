"""The CLI package: a missing extra names its install line; shared options build ModelOptions."""

import pytest

from holisafe import cli
from holisafe.cli.options import model_options
from holisafe.models import ModelOptions
from tests.test_dependencies import normalise, requirement_groups


def test_every_module_of_the_extras_mapping_is_declared_in_its_extra():
    groups = requirement_groups()
    for module, extra in cli.EXTRAS.items():
        assert normalise(module) in groups[extra], (module, extra)


def test_a_missing_extra_is_one_line_naming_the_install(monkeypatch, capsys):
    def needs_peft():
        raise ModuleNotFoundError("No module named 'peft.tuners'", name="peft.tuners")

    monkeypatch.setattr(cli, "app", needs_peft)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error == (
        "error: this needs peft.tuners, which the core install leaves out; "
        "install it with: pip install 'holisafe[train]'\n"
    )


def test_a_commands_arguments_become_model_options_by_name():
    arguments = {"dtype": "float16", "timeout": 5.0, "store": "runs.db", "api_key": "k"}
    options = model_options(arguments, api_key=None)
    assert options == ModelOptions(dtype="float16", timeout_s=5.0)
