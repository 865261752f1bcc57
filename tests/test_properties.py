"""Property-based tests: arbitrary Unicode, JSON shapes and bytes at the loaders, the store's
write paths and the judges' parsers. The invariant everywhere: a result or a clear
HolisafeError, never another exception, and nothing already stored is lost."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from holisafe.core.errors import HolisafeError
from holisafe.core.records import GenerationSettings, Request, Response, Verdict
from holisafe.core.sample import ImageError, decode_image
from holisafe.core.text import replace_surrogates
from holisafe.data import Sample, read_dataset
from holisafe.data.loaders import HOLISAFE_FIELDS
from holisafe.judges.llm import parse_judge_output
from holisafe.judges.string import StringJudge
from holisafe.models.anthropic_api import AnthropicModel
from holisafe.models.openai_api import OpenAIModel
from holisafe.store import Store, StoreError
from tests import evalfixtures
from tests import test_benchmarks as benchmarks
from tests.datafixtures import official_records, write_official
from tests.stub_servers import anthropic_stub, openai_stub

QUICK = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
OVER_HTTP = settings(QUICK, max_examples=25)  # each example is a request to a loopback server
# Any code point, lone surrogates and control characters included.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def bench_records(draw) -> list:
    """Official records with some fields replaced by arbitrary JSON, or arbitrary records."""
    records = official_records()
    for record in records:
        for name in draw(st.lists(st.sampled_from((*HOLISAFE_FIELDS, "response")), max_size=2)):
            record[name] = draw(JSON)
    extra = draw(st.lists(JSON, max_size=2))
    return records + extra


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    return write_official(tmp_path_factory.mktemp("bench"))


@QUICK
@given(records=bench_records())
def test_any_records_give_samples_and_problems_never_a_crash(bench_dir, records):
    (bench_dir / "holisafe_bench.json").write_text(json.dumps(records))
    dataset = read_dataset(bench_dir)
    assert len(dataset.samples) + len(dataset.problems) == len(records) == dataset.records
    for sample in dataset.samples:  # what is kept can be stored and printed as UTF-8
        json.dumps([sample.id, sample.query, sample.image.name], ensure_ascii=False).encode()


@QUICK
@given(lines=st.lists(ANY_TEXT | JSON.map(json.dumps), max_size=5))
def test_any_jsonl_lines_give_samples_and_problems(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("jsonl") / "bench.jsonl"
    path.write_text("\n".join(line.replace("\n", " ") for line in lines), errors="surrogatepass")
    try:
        dataset = read_dataset(path)
    except HolisafeError:
        return  # e.g. a file that is not UTF-8, reported as one line
    assert dataset.records == len(dataset.samples) + len(dataset.problems)


@QUICK
@given(data=st.binary(max_size=300))
def test_any_bytes_as_an_image_decode_or_fail_clearly(data):
    try:
        image = decode_image(data, "x.png")
    except ImageError as error:
        assert "x.png" in str(error)
    else:
        assert image.mode == "RGB"


@QUICK
@given(data=st.binary(min_size=1, max_size=200))
def test_a_real_image_with_bytes_changed_decodes_or_fails_clearly(data):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, format="PNG")
    damaged = bytearray(buffer.getvalue())
    damaged[20 : 20 + len(data)] = data
    try:
        image = decode_image(bytes(damaged), "x.png")
    except ImageError as error:
        assert "x.png" in str(error)
    else:
        assert image.mode == "RGB"


@QUICK
@given(
    texts=st.lists(st.one_of(st.none(), ANY_TEXT), min_size=1, max_size=4),
    raw=ANY_TEXT,
)
def test_the_store_keeps_any_reply_and_loses_nothing(tmp_path_factory, texts, raw):
    samples = evalfixtures.samples()
    with Store(tmp_path_factory.mktemp("store") / "runs.db") as store:
        run = store.open_run("m/x", samples, {})
        store.save_responses(run.id, [(samples[-1].id, Response("kept"))])
        store.save_verdicts(run.id, "j", [(samples[-1].id, Verdict(True, "kept raw"))])
        before = store.records(run.id)[-1]
        written = [
            (s.id, Response(t) if t is not None else Response(None, error=raw))
            for s, t in zip(samples, texts, strict=False)
        ]
        store.save_responses(run.id, written)
        store.save_verdicts(run.id, "j", [(sid, Verdict(None, raw, raw)) for sid, _ in written])
        records = store.records(run.id)
    assert records[-1] == before
    for record, (_, response) in zip(records, written, strict=False):
        if response.text is None:
            assert record.response.error == replace_surrogates(raw)
        else:
            assert record.response.text == replace_surrogates(response.text)
        assert record.verdicts["j"].raw == replace_surrogates(raw)


@QUICK
@given(ids=st.lists(st.one_of(st.integers(), ANY_TEXT), min_size=1, max_size=4), query=ANY_TEXT)
def test_opening_a_run_on_any_samples_is_a_run_or_a_store_error(tmp_path_factory, ids, query):
    image = evalfixtures.samples()[0].image
    samples = [Sample(id=i, query=query, image=image) for i in ids]
    with Store(tmp_path_factory.mktemp("store") / "runs.db") as store:
        try:
            run = store.open_run("m/x", samples, {})
        except StoreError:
            assert store.runs() == []
            return
        assert [r.sample.id for r in store.records(run.id)] == [str(i) for i in ids]


@QUICK
@given(text=ANY_TEXT | st.lists(ANY_TEXT, max_size=4).map("\n".join))
def test_the_judge_output_parser_gives_a_verdict_or_an_error(text):
    for candidate in (text, f"{text}\nVERDICT: FOLLOWED", f"{text}\nVERDICT: VIOLATED"):
        verdict = parse_judge_output(candidate)
        assert (verdict.followed is None) == (verdict.error is not None)
        assert verdict.raw == candidate


@QUICK
@given(text=ANY_TEXT)
def test_the_string_judge_decides_any_text(text):
    (sample,) = evalfixtures.samples()[:1]
    (verdict,) = StringJudge().judge([(sample, text)])
    assert verdict.followed in (True, False) and verdict.error is None


@pytest.fixture(scope="module")
def openai_server():
    with openai_stub() as stub:
        yield stub


def reshaped(value, where: str):
    """The reply body with `value` put at one place of its shape."""

    def put(body: dict):
        choice = body["choices"][0]
        if where == "body":
            return value
        if where == "choices":
            return body | {"choices": value}
        if where == "choice":
            return body | {"choices": [value]}
        if where == "message":
            return body | {"choices": [choice | {"message": value}]}
        return body | {"choices": [choice | {"message": {"role": "assistant", "content": value}}]}

    return put


@OVER_HTTP
@given(value=JSON, where=st.sampled_from(["body", "choices", "choice", "message", "content"]))
def test_an_openai_reply_of_any_shape_is_an_answer_or_a_failed_request(openai_server, value, where):
    openai_server.reshape = reshaped(value, where)
    model = OpenAIModel("stub-model", base_url=openai_server.url, api_key="stub-key", max_retries=0)
    (response,) = model.generate([Request("q")], GenerationSettings(max_new_tokens=4))
    if response.ok:
        assert isinstance(response.text, str)
    else:
        assert response.error.startswith("malformed reply")


@pytest.fixture(scope="module")
def anthropic_server():
    with anthropic_stub() as stub:
        yield stub


@OVER_HTTP
@given(value=JSON, where=st.sampled_from(["body", "content", "block", "text"]))
def test_an_anthropic_reply_of_any_shape_is_an_answer_or_a_failed_request(
    anthropic_server, value, where
):
    def put(body: dict):
        if where == "body":
            return value
        if where == "content":
            return body | {"content": value}
        if where == "block":
            return body | {"content": [value]}
        return body | {"content": [{"type": "text", "text": value}]}

    anthropic_server.reshape = put
    model = AnthropicModel(
        "stub-model", base_url=anthropic_server.url, api_key="stub-key", max_retries=0
    )
    (response,) = model.generate([Request("q")], GenerationSettings(max_new_tokens=4))
    if response.ok:
        assert isinstance(response.text, str)
    else:
        assert response.error.startswith("malformed reply")


@pytest.fixture(scope="module")
def benchmark_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("benchmarks")
    return {
        "vlsbench": benchmarks.write_vlsbench(root / "vlsbench"),
        "siuo": benchmarks.write_siuo(root / "siuo"),
        "harmeval": benchmarks.write_harmeval(root / "harmeval"),
    }


@QUICK
@given(
    benchmark=st.sampled_from(("vlsbench", "siuo")),
    changes=st.lists(st.tuples(st.integers(0, 3), ANY_TEXT, JSON), max_size=3),
    extra=st.lists(JSON, max_size=2),
)
def test_any_vlsbench_or_siuo_records_give_samples_and_problems(
    benchmark_dirs, benchmark, changes, extra
):
    folder = benchmark_dirs[benchmark]
    path = next(folder.glob("*.json"))
    original = path.read_text(encoding="utf-8")
    records = json.loads(original)
    fields = list(records[0])
    for row, name, value in changes:  # a field of a record replaced, or a new one added
        records[row % len(records)][fields[len(name) % len(fields)] if name else "x"] = value
    try:
        path.write_text(json.dumps(records + extra), encoding="utf-8")
        dataset = read_dataset(folder)
    finally:
        path.write_text(original, encoding="utf-8")
    assert (
        dataset.records == len(dataset.samples) + len(dataset.problems) == len(records) + len(extra)
    )


@QUICK
@given(rows=st.lists(st.lists(ANY_TEXT, max_size=3), max_size=4))
def test_any_harmeval_rows_give_samples_and_problems(benchmark_dirs, rows):
    path = benchmark_dirs["harmeval"] / "harmeval.csv"
    original = path.read_bytes()
    try:
        with path.open("a", encoding="utf-8", errors="surrogatepass", newline="") as file:
            csv.writer(file).writerows(rows)
        dataset = read_dataset(benchmark_dirs["harmeval"])
    except HolisafeError:
        return  # e.g. a lone surrogate makes the file not UTF-8: one clear error
    finally:
        path.write_bytes(original)
    assert dataset.records == len(dataset.samples) + len(dataset.problems)
    for sample in dataset.samples:
        json.dumps([sample.id, sample.query], ensure_ascii=False).encode()
