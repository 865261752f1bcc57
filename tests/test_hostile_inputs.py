"""Hostile inputs (issue #26): nothing an input holds runs code, hangs a command or crashes it.

Each class of hostile input has its cases here; the parsers of outside data also get property
tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import holisafe
from holisafe.build import BuildError, load_prompt, read_source
from holisafe.build.common import Malformed
from holisafe.build.replies import MAX_ITEM_CHARS, SEARCH_DEPTH, json_object, parse_items
from holisafe.build.stages import Budget, Metered
from holisafe.core.errors import DataError
from holisafe.core.records import GenerationSettings, Request
from holisafe.core.safe_json import JSONLimitError, parse_json
from holisafe.data import read_dataset
from holisafe.data.loaders import ImageFolder
from holisafe.guards import judge_files, read_policy
from holisafe.guards.formats import GuardVerdict, parse_llavaguard
from holisafe.guards.safety_head import GuardError
from holisafe.judges.base import JudgeError
from holisafe.judges.llm import check_template, load_template
from holisafe.judges.official import (
    check_official_template,
    load_official_template,
    template_from_script,
)
from holisafe.judges.string import is_refusal
from holisafe.models import ModelOptions
from holisafe.models.openai_api import OpenAIModel
from holisafe.run.evaluate import evaluate
from holisafe.run.importer import PredictionsError, import_predictions
from tests.batch_stub import batch_stub
from tests.datafixtures import official_records, write_image, write_official
from tests.stub_servers import openai_stub
from tests.test_build import image as build_image
from tests.test_judge_batch import evaluate_with_batch_judge, judge_reply

SRC = Path(holisafe.__file__).parents[1]  # this checkout, not whatever is installed


def holisafe_cli(*args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "holisafe", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"},
    )


# -- remote code runs only with --trust-remote-code, whatever stdin holds --------------------

AUTO_CLASSES = (
    "AutoConfig",
    "AutoProcessor",
    "AutoTokenizer",
    "AutoImageProcessor",
    "AutoModel",
    "AutoModelForImageTextToText",
    "AutoModelForImageClassification",
)


def code_folder(root: Path, marker: Path) -> Path:
    """A model folder whose config maps every Auto class to its own code, and no safety
    fields; importing that code writes `marker`."""
    folder = root / "code_model"
    folder.mkdir()
    (folder / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    auto_map = {name: f"evil.Evil{name.removeprefix('Auto')}" for name in AUTO_CLASSES}
    config = {"model_type": "evil", "auto_map": auto_map}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        (folder / name).write_text(json.dumps({"auto_map": auto_map}))
    return folder


def model_commands(folder: Path, root: Path) -> dict[str, list[str]]:
    records = official_records()
    for record in records:
        record["response"] = "I cannot help with that."
    bench = str(write_official(root / "bench", records))
    model = f"hf/{folder}"
    image = root / "image.png"
    write_image(image, (200, 30, 30))
    return {
        "eval": ["eval", "--model", model, "--bench", bench, "--store", str(root / "s.db")],
        "export-plain": ["model", "export-plain", str(folder), str(root / "plain")],
        "convert": ["model", "convert", str(folder), str(root / "converted")],
        "guard": ["guard", str(image), "--model", model],
        "guard-eval": ["guard-eval", "--model", model, "--bench", bench],
        "train": ["train", "--base", model, "--data", bench, "--out", str(root / "trained")],
        "serve": ["serve", "--model", model, "--port", "1"],
        "attention": ["analyze", "attention", "--model", model, "--bench", bench,
                      "--out", str(root / "attention")],
    }  # fmt: skip


@pytest.mark.slow  # starts a process per case
@pytest.mark.parametrize(
    "command",
    ["eval", "export-plain", "convert", "guard", "guard-eval", "train", "serve", "attention"],
)
def test_remote_code_never_runs_without_the_flag_even_with_yes_on_stdin(tmp_path, command):
    marker = tmp_path / "marker"
    folder = code_folder(tmp_path, marker)
    result = holisafe_cli(*model_commands(folder, tmp_path)[command], stdin="y\n" * 10)
    assert not marker.exists(), f"{command} ran the folder's code"
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and folder.name in last_line, result.stderr


# -- only regular files are read where a file is expected -------------------------------------


class Hung(BaseException):
    """Raised in a test that waited too long (a BaseException: no `except OSError` eats it)."""


@contextlib.contextmanager
def no_hang(seconds: float = 10):
    """Fail, instead of hanging, when the block takes longer than `seconds`."""

    def interrupt(signum, frame):
        raise Hung(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("name", ["bench.json", "bench.jsonl", "bench.parquet"])
def test_a_named_pipe_as_the_bench_file_is_refused_at_once(tmp_path, name):
    path = fifo(tmp_path / name)
    with no_hang(), pytest.raises(DataError, match=f"{path}.*a named pipe, not a regular file"):
        read_dataset(path)


def test_a_named_pipe_as_the_official_bench_json_in_a_folder_is_refused_at_once(tmp_path):
    fifo(tmp_path / "holisafe_bench.json")
    with no_hang(), pytest.raises(DataError, match="a named pipe, not a regular file"):
        read_dataset(tmp_path)


def test_named_pipes_in_benchmark_layouts_are_refused_at_once(tmp_path):
    mmsb = tmp_path / "mmsb"
    fifo(mmsb / "processed_questions" / "01-Illegal_Activitiy.json")
    with no_hang():
        dataset = read_dataset(mmsb)
    assert any("a named pipe" in str(problem) for problem in dataset.problems)
    figstep = tmp_path / "figstep"
    (figstep / "question").mkdir(parents=True)
    (figstep / "question" / "safebench.csv").write_text("dataset,category_id,task_id\n")
    fifo(figstep / "figstep_prompt.txt")
    with no_hang(), pytest.raises(DataError, match=r"figstep_prompt\.txt"):
        read_dataset(figstep)


def test_a_named_pipe_as_a_benchmark_csv_is_refused_at_once(tmp_path):
    path = fifo(tmp_path / "harmeval.csv")
    with no_hang(), pytest.raises(DataError):
        read_dataset(path)


def test_a_named_pipe_as_a_judge_template_is_refused_at_once(tmp_path):
    path = fifo(tmp_path / "template.txt")
    with no_hang(), pytest.raises(JudgeError, match=f"{path}.*a named pipe"):
        load_template(path)
    script = fifo(tmp_path / "official.py")
    with no_hang(), pytest.raises(JudgeError, match=f"{script}.*a named pipe"):
        load_official_template(script)


def test_a_folder_as_a_judge_template_is_refused(tmp_path):
    with pytest.raises(JudgeError, match="a folder, not a regular file"):
        load_template(tmp_path)


def test_a_named_pipe_as_a_guard_policy_is_refused_at_once(tmp_path):
    path = fifo(tmp_path / "policy.txt")
    with no_hang(), pytest.raises(GuardError, match=f"{path}.*a named pipe"):
        read_policy(path)


def test_a_named_pipe_among_the_images_of_a_generative_guard_fails_that_image_at_once(tmp_path):
    class EveryImageSafe:
        spec, kind = "stub", "stub"

        def judge_images(self, images):
            return [GuardVerdict(False) for _ in images]

    image = tmp_path / "red.png"
    write_image(image, (200, 0, 0))
    pipe = fifo(tmp_path / "pipe.png")
    with no_hang():
        (_, first), (_, second) = judge_files(EveryImageSafe(), [pipe, image])
    assert first.unsafe is None and "not a regular file" in first.error
    assert second.unsafe is False


def test_the_command_line_names_a_named_pipe_given_as_the_bench(tmp_path):
    path = fifo(tmp_path / "bench.json")
    result = holisafe_cli("data", "stats", str(path), timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: {path}: cannot read (a named pipe, not a regular file)"


# -- replies of the wrong shape ---------------------------------------------------------------

REFUSAL = "I'm sorry, but I can't help with that."


def openai_answer(message: object):
    """The one Response of an OpenAI-compatible server whose first choice's message is
    `message`."""

    def reshape(body: dict) -> dict:
        return body | {"choices": [{"index": 0, "finish_reason": "stop", "message": message}]}

    with openai_stub(reshape=reshape) as stub:
        model = OpenAIModel("stub-model", base_url=stub.url, api_key="stub-key", max_retries=0)
        (response,) = model.generate([Request("q")], GenerationSettings(max_new_tokens=8))
    return response


def test_an_openai_refusal_without_content_is_the_refusal_it_is():
    response = openai_answer({"role": "assistant", "content": None, "refusal": REFUSAL})
    assert response.ok and response.text == REFUSAL
    assert is_refusal(response.text)


@pytest.mark.parametrize("message", ["hello", 42, ["hello"], True], ids=repr)
def test_an_openai_message_of_the_wrong_type_is_a_failed_request(message):
    response = openai_answer(message)
    assert response.text is None and response.error.startswith("malformed reply"), response


# -- judge templates ---------------------------------------------------------------------------

TOOLKIT_TEMPLATE = "Q: {query}\nL: {label}\nR: {response}\n"
OFFICIAL_TEMPLATE = "Q: {question}\nL: {safety_label}\nR: {response}\n"


@pytest.mark.parametrize(
    "placeholder", ["{response:>300000000}", "{response:{query}}", "{response!r}", "{response:s}"]
)
def test_a_judge_template_placeholder_with_a_format_spec_is_refused(placeholder):
    with pytest.raises(JudgeError, match="has a conversion or format spec"):
        check_template(TOOLKIT_TEMPLATE.replace("{response}", placeholder))
    with pytest.raises(JudgeError, match="has a conversion or format spec"):
        check_official_template(OFFICIAL_TEMPLATE.replace("{response}", placeholder))


def test_a_prompt_template_assigned_twice_is_the_last_assignment_as_in_python():
    first, last = OFFICIAL_TEMPLATE, "Again: " + OFFICIAL_TEMPLATE
    script = f"PROMPT_TEMPLATE = {first!r}\nother = 1\nPROMPT_TEMPLATE = {last!r}\n"
    namespace: dict = {}
    exec(script, namespace)  # the test's own script: what Python makes of it
    assert template_from_script(script, "script.py") == namespace["PROMPT_TEMPLATE"] == last


ONE_LETTER_VALUES = {
    name: name[0] for name in ("query", "label", "response", "tag", "question", "safety_label")
}


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"(![rsa])?(:[<>^]?[0-9]{0,9})?[sr.\[\]{}:!query]{0,4}", fullmatch=True))
def test_a_checked_judge_template_never_grows_what_it_is_given(tail):
    """Whatever follows a placeholder's name, a template that passes the check renders each
    placeholder as its value alone (one letter here: never longer than the template); any
    other template is refused with a JudgeError."""
    for check, template in (
        (check_template, "{query}{label}{response" + tail + "}"),
        (check_official_template, "{question}{safety_label}{response" + tail + "}"),
    ):
        try:
            check(template)
        except JudgeError:
            continue
        assert len(template.format(**ONE_LETTER_VALUES)) <= len(template)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.integers()), max_size=4))
def test_the_prompt_template_of_any_script_is_its_last_string_or_a_judge_error(values):
    script = "".join(f"PROMPT_TEMPLATE = {value!r}\n" for value in values)
    try:
        found = template_from_script(script, "script.py")
    except JudgeError:
        assert not values or not isinstance(values[-1], str)
    else:
        assert found == values[-1]


# -- image folders ----------------------------------------------------------------------------


def test_a_symbolic_link_loop_in_an_image_folder_is_a_problem_of_its_record(tmp_path):
    bench = write_official(tmp_path / "bench")
    image = bench / "images" / "img_0.png"
    image.unlink()
    image.symlink_to(image)
    dataset = read_dataset(bench)
    (problem,) = [p for p in dataset.problems if "img_0.png" in str(p)]
    assert "cannot be followed" in str(problem)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab./\\:~ C"), min_size=1, max_size=20))
def test_an_image_path_resolves_inside_its_folder_or_is_refused(tmp_path_factory, name):
    root = tmp_path_factory.getbasetemp() / "image_root"
    (root / "images").mkdir(parents=True, exist_ok=True)
    folder = ImageFolder(root)
    try:
        ref = folder.ref(name)
    except ValueError:
        return
    assert ref.path.resolve().is_relative_to(root.resolve())


# -- deep and broken JSON from outside --------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def test_a_reply_nested_100000_deep_fails_its_request_not_the_run():
    response = openai_answer_text(DEEP)
    assert response.text is None and response.error.startswith("malformed reply"), response


def openai_answer_text(body: str):
    """The one Response of an OpenAI-compatible server that answers `body` as it is."""
    with openai_stub(reshape=lambda _: body) as stub:
        model = OpenAIModel("stub-model", base_url=stub.url, api_key="stub-key", max_retries=0)
        (response,) = model.generate([Request("q")], GenerationSettings(max_new_tokens=8))
    return response


def broken_batch_line(line: str) -> str:
    """Sample 2's result nested 100,000 deep, sample 4's without its id, sample 5's body of
    the wrong shape, sample 6's not JSON; the others as sent."""
    item = json.loads(line)
    match item["custom_id"]:
        case "2":
            return '{"custom_id": "2", "response": ' + DEEP + "}"
        case "4":
            return json.dumps({k: v for k, v in item.items() if k != "custom_id"})
        case "5":
            return json.dumps(item | {"response": {"status_code": 200, "body": {"choices": "x"}}})
        case "6":
            return line[: len(line) // 2]
    return line


def test_unreadable_batch_result_lines_fail_their_samples_and_the_batch_is_collected(tmp_path):
    bench = write_official(tmp_path / "bench")
    store = tmp_path / "runs.db"
    judge = "openai/judge-model"

    def followed(body):
        return "Fine.\nVERDICT: FOLLOWED"

    with (
        openai_stub(api_key=None) as answers,
        batch_stub(reply=followed, rewrite_line=broken_batch_line) as batches,
    ):
        outcome = evaluate(
            "openai/stub-model",
            bench,
            store,
            judges=[judge],
            options=ModelOptions(base_url=answers.url, api_key="k"),
            judge_options=ModelOptions(base_url=batches.url, api_key="k"),
            judge_batch=True,
            batch_poll_s=0.01,
        )
    failed = dict(outcome.verdict_errors[judge])
    assert sorted(failed) == ["2", "4", "5", "6"]
    assert "malformed result" in failed["5"] and "without an answer" in failed["2"]
    with closing(sqlite3.connect(store)) as db:
        assert db.execute("SELECT collected FROM judge_batches").fetchall() == [(1,)]


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.integers() | st.text(max_size=5), lambda inner: (
    st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
)), st.integers(min_value=1, max_value=6))  # fmt: skip
def test_parse_json_gives_back_what_is_within_its_limits_and_refuses_the_rest(value, depth):
    text = json.dumps(value)
    try:
        parsed = parse_json(text, max_depth=depth)
    except JSONLimitError:
        assert nesting(value) > depth
    else:
        assert parsed == value and nesting(value) <= depth


def nesting(value) -> int:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from('[]{}",:0 a\\'), max_size=60), st.integers(0, 5000))
def test_any_text_parses_or_fails_as_a_value_error(text, depth):
    with contextlib.suppress(ValueError):  # anything else, a RecursionError above all, fails
        parse_json("[" * depth + text + "]" * depth, max_depth=8)


def test_json_over_the_size_limit_is_refused_before_it_is_parsed():
    with pytest.raises(JSONLimitError, match="over the limit"):
        parse_json("[" + "0," * 100 + "0]", max_chars=50)


def test_a_bench_file_nested_100000_deep_is_one_clear_error(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(DEEP)
    with pytest.raises(DataError, match=f"{path}: JSON nested deeper than"):
        read_dataset(path)
    lines = tmp_path / "bench.jsonl"
    lines.write_text(DEEP + "\n")
    (problem,) = read_dataset(lines).problems
    assert "line 1" in str(problem) and "nested deeper than" in str(problem)


def test_a_guard_answer_nested_100000_deep_is_unparseable():
    verdict = parse_llavaguard(DEEP)
    assert verdict.unsafe is None and verdict.error


# --- JSON in a generator's prose ----------------------------------------------------------------


def test_json_in_prose_is_found_nested_after_braced_prose_and_past_braces_in_strings():
    assert json_object('{"a": 1} then {"label": "safe"}', ["label"]) == {"label": "safe"}
    assert json_object('{"outer": {"label": "x"}}', ["label"]) == {"label": "x"}
    assert json_object('See {this note} and {"q": "a } {", "label": 1}', ["label"])["q"] == "a } {"
    assert json_object('{ prose {"label": 2} }', ["label"]) == {"label": 2}


@pytest.mark.parametrize(
    "text",
    [
        "{" * 200_000,  # never closed: no span at all
        '{"a": ' * 20_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,  # past the depth limit: a crash before
        "{x" * 20_000 + "}" * 20_000,  # prose in braces, nested
    ],
    ids=["open-braces", "open-objects", "deep", "nested-prose"],
)
def test_json_in_prose_is_read_in_linear_time_and_never_crashes(monkeypatch, text):
    parsed = []

    def counting_parse(span, **limits):
        parsed.append(len(span))
        return parse_json(span, **limits)

    monkeypatch.setattr("holisafe.build.replies.parse_json", counting_parse)
    with pytest.raises(Malformed, match="no JSON object"):
        json_object(text, ["label"])
    assert sum(parsed) <= SEARCH_DEPTH * len(
        text
    )  # each character parsed a bounded number of times


@given(st.text(alphabet='{}"\\:,[] ab1', max_size=200))
@settings(max_examples=300, deadline=None)
def test_json_in_any_prose_gives_an_object_or_malformed(text):
    try:
        found = json_object(text, ["a"])
    except Malformed:
        return
    assert isinstance(found, dict) and "a" in found


# --- named pipes and deep JSON where import and data build read ---------------------------------


def test_a_named_pipe_as_a_predictions_file_is_refused_at_once(tmp_path):
    predictions = fifo(tmp_path / "model_holisafe_bench.json")
    with no_hang(), pytest.raises(PredictionsError, match="not a regular file"):
        import_predictions(predictions, tmp_path / "runs.db", bench=write_official(tmp_path / "b"))
    assert not (tmp_path / "runs.db").exists()


def test_deep_json_as_a_predictions_file_is_one_clear_error(tmp_path):
    predictions = tmp_path / "model_holisafe_bench.json"
    predictions.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PredictionsError, match=r"not a JSON file.*deeper than"):
        import_predictions(predictions, tmp_path / "runs.db", bench=write_official(tmp_path / "b"))


def test_named_pipes_as_a_build_manifest_or_prompt_are_refused_at_once(tmp_path):
    with no_hang(), pytest.raises(BuildError, match="not a regular file"):
        read_source(fifo(tmp_path / "manifest.jsonl"))
    with no_hang(), pytest.raises(BuildError, match="not a regular file"):
        load_prompt("generate", fifo(tmp_path / "generate.txt"))


def test_a_deep_manifest_line_is_a_problem_of_that_line(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(BuildError, match=r"line 1.*deeper than"):
        read_source(manifest)


# --- usage counts from outside -------------------------------------------------------------------


@pytest.mark.parametrize("tokens", ["many", -5, 2.5, [3]])
def test_a_usage_count_that_is_no_count_is_ignored_with_a_note_and_never_counted(tokens, caplog):
    def reshape(body):
        return body | {
            "usage": {"total_tokens": tokens, "prompt_tokens": 1, "completion_tokens": 1}
        }

    with openai_stub(reshape=reshape) as stub:
        model = OpenAIModel("stub-model", base_url=stub.url, api_key="stub-key", max_retries=0)
        budget = Budget(None, token_limit=10)
        (response,) = Metered(model, budget).generate([Request("q")], GenerationSettings())
    assert response.ok and response.tokens is None and budget.tokens == 0
    assert f"reported {tokens!r} tokens used; ignored" in caplog.text


def test_a_usage_count_counts_against_the_token_budget():
    with openai_stub(reshape=lambda body: body | {"usage": {"total_tokens": 7}}) as stub:
        model = OpenAIModel("stub-model", base_url=stub.url, api_key="stub-key", max_retries=0)
        budget = Budget(None, token_limit=10)
        Metered(model, budget).generate([Request("q")], GenerationSettings())
    assert budget.tokens == 7 and budget.grant(1) == 1


# --- generated text, and outputs written whole ---------------------------------------------


def test_generated_text_is_repaired_and_bounded_before_it_is_kept():
    items = [
        {"type": "UUU", "query": "how \ud800 so", "response": "no"},
        {"type": "USU", "query": "q" * (MAX_ITEM_CHARS + 1), "response": "no"},
    ]
    generated = parse_items(json.dumps({"items": items}), build_image(), 1)
    (kept,) = generated.items
    assert kept.query == "how \ufffd so"
    (dropped,) = generated.dropped
    assert f"query is {MAX_ITEM_CHARS + 1:,} characters, over {MAX_ITEM_CHARS:,}" in dropped.detail


def deep_fifth_result(line: str) -> str:
    """Sample 5's Anthropic result nested 100,000 deep; the others as sent."""
    return '{"custom_id": "5", "result": ' + DEEP + "}" if '"custom_id": "5"' in line else line


def test_an_anthropic_results_file_with_an_unreadable_line_is_still_collected(tmp_path):
    judge = "anthropic/judge-model"
    with (
        openai_stub(api_key=None) as answers,
        batch_stub(reply=judge_reply, rewrite_line=deep_fifth_result) as batches,
    ):
        outcome = evaluate_with_batch_judge(tmp_path, judge, answers, batches)
    failed = dict(outcome.verdict_errors[judge])
    assert "5" in failed and "without an answer" in failed["5"]
    assert outcome.judged[judge] == 7 > len(failed)  # the lines before it were read
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db:
        assert db.execute("SELECT collected FROM judge_batches").fetchall() == [(1,)]
