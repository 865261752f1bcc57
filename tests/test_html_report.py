"""The HTML report: its files, and the page in a real headless browser (Debian's chromium
driven by Playwright): it loads offline without console errors, sorts and filters."""

import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from holisafe.cli import app
from holisafe.core.records import Response
from holisafe.report import store_leaderboards
from holisafe.report.html import write_html_report
from holisafe.report.reference import load_reference
from holisafe.store import Store
from tests import reportfixtures
from tests.browser import chromium

HOSTILE = '</script><script>window.pwned = 1</script><img src="x" onerror="window.pwned = 2">'


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The fixture store, with one hostile response, written as an HTML report."""
    folder = tmp_path_factory.mktemp("html")
    built = reportfixtures.build_store(folder, safety=True)
    with Store(built.path) as store:
        kept = next(r.extra for r in store.records(1) if r.sample.id == "1")
        store.save_responses(1, [("1", Response(HOSTILE))], {"1": kept})
        written = write_html_report(store, folder / "report", reference=load_reference())
        records = {run.id: store.records(run.id) for run in store.runs()}
    return built, written, records


def test_files_and_no_network_references(report):
    built, written, _ = report
    html = written.index.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert written.image_notes == []
    images = {s.image.key for s in built.samples}
    assert written.images == len(images)
    assert len(list((written.index.parent / "assets" / "images").iterdir())) == len(images)
    for plot in written.plots:
        assert plot.svg.is_file() and plot.png.is_file()
        assert f'src="{plot.svg.relative_to(written.index.parent).as_posix()}"' in html
    assert "Content warning" in html and "published" in html
    notes = html.split('id="published"')[1]
    assert "test set v1 (4,163 samples" in notes and "Rows are ordered by mASR (pooled)" in notes
    for run_id, model in ((1, "hf/cautious-vlm"), (2, "hf/careless-vlm")):
        assert f"Run {run_id} ({model}) was evaluated on a benchmark of 95 samples" in notes


def test_image_guard_section(report):
    _, written, records = report
    html = written.index.read_text(encoding="utf-8")
    guard = html.split('<section id="guard">')[1].split("</section>")[0]
    assert "Safety head as an image guard" in guard and "outscores <code>safe</code>" in guard
    assert "run 1 (hf/cautious-vlm)" in guard and "hf/careless-vlm" not in guard
    roc = written.plots[-1]
    assert roc.title.startswith("Image guard: ROC") and roc.png.is_file()
    assert f'src="{roc.svg.relative_to(written.index.parent).as_posix()}"' in guard
    assert "<summary>Labels of run 1 (hf/cautious-vlm)</summary>" in guard
    images = len({r.sample.image for r in records[1]})
    assert re.search(rf'data-sort="{images}">\s*{images}\s*</td>', guard)  # the Images column


def test_a_missing_image_is_counted(tmp_path):
    built = reportfixtures.build_store(tmp_path)
    lost = built.samples[0].image
    shared = sum(s.image.key == lost.key for s in built.samples)
    lost.path.unlink()
    with Store(built.path) as store:
        written = write_html_report(store, tmp_path / "report")
    (note,) = written.image_notes
    assert note.startswith(f"runs 1, 2: {shared} of {len(built.samples)} samples have no image")


def test_moved_benchmark_gives_a_text_only_browser_that_says_why(tmp_path):
    built = reportfixtures.build_store(tmp_path)
    shutil.rmtree(built.bench)
    with Store(built.path) as store:
        written = write_html_report(store, tmp_path / "report")
    (note,) = written.image_notes  # both runs answered the same benchmark
    assert written.images == 0
    assert note.startswith("runs 1, 2: images not shown") and "no such file or directory" in note
    assert "runs 1, 2: images not shown" in written.index.read_text(encoding="utf-8")
    assert not (tmp_path / "report" / "assets" / "images").exists()


def test_cli_html(tmp_path):
    built = reportfixtures.build_store(tmp_path)
    out = tmp_path / "site"
    args = ["report", "--store", str(built.path), "--html", str(out), "--no-images"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "index.html").is_file() and not (out / "assets" / "images").exists()
    assert "HTML report:" in result.stderr and "--no-images" in result.stderr
    assert result.stdout.startswith("## Leaderboard")


# --- in the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


class Visit:
    """A page of the report, with everything it logged and requested."""

    def __init__(self, browser, index: Path, width: int = 1280):
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(index.as_uri())

    def column(self, table: str, title: str) -> list[str]:
        """The sort keys of one column of a table, top to bottom."""
        return self.page.eval_on_selector(
            table,
            """(table, title) => {
                const titles = Array.from(table.tHead.rows[0].cells, c => c.textContent.trim());
                const index = titles.indexOf(title);
                return Array.from(table.tBodies[0].rows, row => row.cells[index].dataset.sort);
            }""",
            title,
        )

    def shown_samples(self) -> list[dict]:
        return self.page.eval_on_selector_all(
            "#sample-list > li", "cards => cards.map(c => ({...c.dataset}))"
        )


@pytest.fixture
def visit(browser, report):
    opened = Visit(browser, report[1].index)
    yield opened
    opened.page.close()


def test_page_loads_offline_without_errors(visit):
    visit.page.wait_for_load_state("load")
    assert visit.errors == []
    assert visit.requests and all(url.startswith("file://") for url in visit.requests)
    loaded = visit.page.eval_on_selector_all(
        "#plots img", "images => images.map(i => i.complete && i.naturalWidth > 0)"
    )
    assert loaded and all(loaded)
    assert visit.page.evaluate("window.pwned") is None
    assert visit.page.is_visible(".content-warning")


def test_sorting_a_column_reorders_rows(visit):
    table = "#leaderboard table"
    before = [float(v) for v in visit.column(table, "mASR (pooled) ↓")]
    assert before != sorted(before)
    visit.page.click(f"{table} th button:text-is('mASR (pooled) ↓')")
    assert [float(v) for v in visit.column(table, "mASR (pooled) ↓")] == sorted(before)
    visit.page.click(f"{table} th button:text-is('mASR (pooled) ↓')")
    assert [float(v) for v in visit.column(table, "mASR (pooled) ↓")] == sorted(
        before, reverse=True
    )
    visit.page.click(f"{table} th button:text-is('Model')")
    assert visit.column(table, "Model") == sorted(visit.column(table, "Model"))


def test_published_rows_are_marked_and_sort_with_the_users(visit):
    table = "#published table >> nth=0"
    published = visit.page.locator(f"{table} >> tbody tr.published").count()
    assert published == 17
    assert visit.page.locator(f"{table} >> tbody tr:not(.published)").count() == 2
    assert visit.page.locator(f"{table} >> tbody tr.published .badge").count() == 17


def test_filters_filter(visit, report):
    _, _, records = report
    everything = sum(len(rs) for rs in records.values())
    visit.page.select_option("#filter-run", "")
    assert len(visit.shown_samples()) == min(50, everything)
    visit.page.select_option("#filter-type", "SSS")
    safe = [r for rs in records.values() for r in rs if r.sample.type == "SSS"]
    shown = visit.shown_samples()
    assert len(shown) == len(safe) and {card["type"] for card in shown} == {"SSS"}
    visit.page.select_option("#filter-judge", "string")
    visit.page.select_option("#filter-verdict", "not-followed")
    refused = [r for r in safe if "string" in r.verdicts and r.verdicts["string"].followed is False]
    assert 0 < len(refused) < len(safe)
    assert len(visit.shown_samples()) == len(refused)
    assert visit.page.locator("#sample-list .verdict.not-followed:has-text('string')").count() == (
        len(refused)
    )
    visit.page.select_option("#filter-type", "")
    visit.page.select_option("#filter-verdict", "disagree")
    disagree = [
        r
        for rs in records.values()
        for r in rs
        if len({v.followed for v in r.verdicts.values() if v.ok}) == 2
    ]
    assert len(visit.shown_samples()) == min(50, len(disagree)) > 0
    count_line = visit.page.inner_text("#sample-count")
    assert count_line.startswith(f"{len(disagree)} of {everything} responses match")


def test_images_blurred_until_clicked(visit):
    visit.page.select_option("#filter-run", "2")
    image = visit.page.locator("#sample-list img").first
    image.scroll_into_view_if_needed()
    blurred = "img => getComputedStyle(img).filter"
    assert "blur" in image.evaluate(blurred)
    image.click()
    assert image.evaluate(blurred) == "none"
    image.click()
    assert "blur" in image.evaluate(blurred)
    assert image.evaluate("img => img.complete && img.naturalWidth > 0")


def test_guard_section_and_stored_predictions_show(visit, report):
    _, _, records = report
    assert visit.page.is_visible("#guard table")
    roc = visit.page.locator("#guard figure img")
    roc.scroll_into_view_if_needed()
    assert roc.evaluate("img => img.complete && img.naturalWidth > 0")
    visit.page.select_option("#filter-run", "1")
    first = records[1][0].extra["safety"]
    line = visit.page.locator("#sample-list .safety").first.inner_text()
    verdict = "safe" if first["label"] == "safe" else "unsafe"
    assert line.startswith(f"safety head: {verdict} (top label {first['label']}, p = ")
    assert f"p = {first['prob']:.3f}; p(unsafe) = {1 - first['probs']['safe']:.3f})" in line
    visit.page.select_option("#filter-run", "2")
    assert visit.page.locator("#sample-list .safety").count() == 0


def test_hostile_response_is_text(visit):
    visit.page.select_option("#filter-run", "1")
    first = visit.page.locator("#sample-list .response").first
    assert first.inner_text() == HOSTILE
    assert visit.page.evaluate("window.pwned") is None and visit.errors == []


def test_the_sample_browser_opens_on_the_safe_vlm(visit):
    assert visit.page.eval_on_selector("#filter-run", "select => select.value") == "1"
    assert {card["run"] for card in visit.shown_samples()} == {"1"}


def test_without_a_safe_vlm_the_browser_opens_on_the_lowest_masr(tmp_path):
    built = reportfixtures.build_store(tmp_path)
    with Store(built.path) as store:
        index = write_html_report(store, tmp_path / "report", images=False).index
        safest = min(store_leaderboards(store), key=lambda e: e.board.masr_pooled).run_id
    selected = re.search(r'<option value="(\d+)" selected>', index.read_text(encoding="utf-8"))
    assert selected and int(selected[1]) == safest


LONG_MODEL = "hf//work/baseline/stores/demo/models/safety-tuned"


@pytest.mark.parametrize("width", [1280, 1400, 1920])
def test_the_leaderboards_key_columns_show_beside_long_model_names(browser, report, width):
    visit = Visit(browser, report[1].index, width)
    try:
        visit.page.eval_on_selector_all(
            "#leaderboard tbody td:nth-child(2)",
            f"cells => cells.forEach(cell => {{ cell.textContent = {LONG_MODEL!r}; }})",
        )
        right_edges = visit.page.eval_on_selector(
            "#leaderboard table",
            """table => {
                const box = table.closest('.table-wrap').getBoundingClientRect();
                const edges = {};
                for (const th of table.tHead.rows[0].cells) {
                    edges[th.textContent.trim()] = th.getBoundingClientRect().right - box.right;
                }
                return edges;
            }""",
        )
        for title in ("Model", "mASR (pooled) ↓", "RR ↓", "n"):
            assert right_edges[title] <= 0, (title, right_edges)
        page_width = visit.page.evaluate("document.documentElement.scrollWidth")
        assert page_width == width  # a wider table scrolls inside its box, not the page
        chart = visit.page.locator("figure", has_text="ASR by type").locator("img").first
        shown, natural = chart.evaluate("img => [img.clientWidth, img.naturalWidth]")
        assert shown == natural  # not shrunk: its legend keeps its size
    finally:
        visit.page.close()
