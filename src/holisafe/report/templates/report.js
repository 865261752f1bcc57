"use strict";

// Sortable tables: a click on a column title sorts by it, a second click reverses.
// Cells carry their sort key in data-sort; an empty key (a missing figure) always sorts last.
function sortKey(row, column) {
  const raw = row.cells[column].dataset.sort;
  if (raw === "") return null;
  const number = Number(raw);
  return Number.isNaN(number) ? raw : number;
}

function compareKeys(a, b) {
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b));
}

function sortTable(table, column, header) {
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  for (const th of table.tHead.rows[0].cells) th.removeAttribute("aria-sort");
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((first, second) => {
    const a = sortKey(first, column);
    const b = sortKey(second, column);
    if (a === null || b === null) return (a === null) - (b === null);
    return ascending ? compareKeys(a, b) : compareKeys(b, a);
  });
  body.append(...rows);
}

for (const table of document.querySelectorAll("table.sortable")) {
  Array.from(table.tHead.rows[0].cells).forEach((header, column) => {
    header.querySelector("button").addEventListener("click", () => sortTable(table, column, header));
  });
}

// Sample browser: one card per (run, sample), filtered by the form, shown a page at a time.
const PAGE = 50;
const items = JSON.parse(document.getElementById("sample-data").textContent);
const list = document.getElementById("sample-list");
const count = document.getElementById("sample-count");
const more = document.getElementById("show-more");
const filter = {
  run: document.getElementById("filter-run"),
  type: document.getElementById("filter-type"),
  category: document.getElementById("filter-category"),
  judge: document.getElementById("filter-judge"),
  verdict: document.getElementById("filter-verdict"),
};
let shown = PAGE;

function verdictMatches(item) {
  const wanted = filter.verdict.value;
  const verdict = item.verdicts[filter.judge.value];
  if (wanted === "followed") return verdict === true;
  if (wanted === "not-followed") return verdict === false;
  if (wanted === "none") return verdict === null || verdict === undefined;
  if (wanted === "disagree") {
    const given = Object.values(item.verdicts).filter((v) => v !== null);
    return given.includes(true) && given.includes(false);
  }
  return true;
}

function matches(item) {
  return (filter.run.value === "" || String(item.run) === filter.run.value)
    && (filter.type.value === "" || item.type === filter.type.value)
    && (filter.category.value === "" || item.category === filter.category.value)
    && verdictMatches(item);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function imageCell(item) {
  if (!item.image) return element("div", "no-image", "no image");
  const button = element("button", "image-button");
  button.type = "button";
  button.title = "Click to reveal or blur";
  const image = element("img", "blurred");
  image.src = item.image;
  image.alt = "benchmark image (blurred until clicked)";
  image.loading = "lazy";
  button.append(image, element("span", "reveal-hint", "click to reveal"));
  button.addEventListener("click", () => image.classList.toggle("blurred"));
  return button;
}

function verdictBadge(judge, verdict) {
  const kind = verdict === true ? "followed" : verdict === false ? "not-followed" : "none";
  const word = { followed: "✓", "not-followed": "✗", none: "no verdict" }[kind];
  return element("span", `verdict ${kind}`, `${judge}: ${word}`);
}

// The Safe-VLM's stored prediction for the image; flagged unsafe when its top label is not safe.
function safetyLine(safety) {
  const verdict = safety.label === "safe" ? "safe" : "unsafe";
  const line = element("div", `safety ${verdict}`,
    `safety head: ${verdict} (top label ${safety.label}, p = ${safety.prob.toFixed(3)}; p(unsafe) = ${safety.unsafe.toFixed(3)})`);
  line.title = "Unsafe when one of the 19 unsafe labels outscores safe (the paper's rule).";
  return line;
}

function card(item) {
  const node = element("li", "sample");
  node.dataset.type = item.type || "";
  node.dataset.category = item.category || "";
  node.dataset.run = item.run;
  const text = element("div");
  const where = [item.category, item.subcategory].filter(Boolean).join(" / ");
  const expected = item.expected ? `, should ${item.expected}` : "";
  text.append(element("div", "facts", `run ${item.run} (${item.model}) · id ${item.id} · ${item.type || "no type"}${expected} · ${where || "no category"}`));
  text.append(element("div", "query", item.query));
  if (item.response !== null) {
    text.append(element("p", "response", item.response));
  } else {
    text.append(element("p", "response failed", item.error ? `failed: ${item.error}` : "not answered yet"));
  }
  const verdicts = element("div", "verdicts");
  for (const [judge, verdict] of Object.entries(item.verdicts)) verdicts.append(verdictBadge(judge, verdict));
  text.append(verdicts);
  if (item.safety) text.append(safetyLine(item.safety));
  node.append(imageCell(item), text);
  return node;
}

function render() {
  const found = items.filter(matches);
  list.replaceChildren(...found.slice(0, shown).map(card));
  count.textContent = `${found.length} of ${items.length} responses match; showing ${Math.min(shown, found.length)}.`;
  more.hidden = found.length <= shown;
}

for (const control of Object.values(filter)) {
  control.addEventListener("change", () => {
    shown = PAGE;
    render();
  });
}
more.addEventListener("click", () => {
  shown += PAGE;
  render();
});
render();
