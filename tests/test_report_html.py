"""report.html of a bench (issue 36), opened in a real browser: Debian's chromium driven by Playwright.

A tiny real bench (vanilla, fgm, asa on the tiny BERT, deepwordbug on a few dev examples, the grid of
tests/test_bench.py) writes report.html; the page is opened from file:// with the network off and
every request that is not a file refused and recorded. The checks read the page as a reader would
and compare it with report.json and results.jsonl. Each view's screenshot is saved under the
module's tmp dir (``screenshots/``) and printed, to be looked at.

Needs ``/usr/bin/chromium`` (apt: chromium chromium-driver) and the ``playwright`` package (the test
extra); .ci/run installs both. Without them the tests skip, except where ADVROBUST_REQUIRE_BROWSER=1
(CI), where they fail.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import tomli_w
from test_bench import DEFENCES, RECIPE, bench_config

from asa_plugin.bench.html import ROW_FIELDS, STRING_FIELDS, page_data, render
from asa_plugin.bench.markdown import verdict
from asa_plugin.cli import main

CHROMIUM = "/usr/bin/chromium"
EXAMPLES = 12
ROBUST = {"successful": False, "failed": True, "maximized": True, "skipped": False}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def result_rows(out: Path, run: str, recipe: str = RECIPE) -> list[dict]:
    path = out / "runs" / run / "attack" / recipe / "results.jsonl"
    return sorted((json.loads(line) for line in path.open()), key=lambda r: r["index"])


@pytest.fixture(scope="module")
def html_bench(tmp_path_factory, tiny_bert_dir, toy_data, attack_cache):
    """The grid of tests/test_bench.py trained long enough to learn the toy task (as tests/attack_support.py's
    tiny classifier), with a few more attacked examples, so that the models disagree on some."""
    import tomllib

    root = tmp_path_factory.mktemp("html-bench")
    out = root / "out"
    config = bench_config(root / "bench.toml", out, tiny_bert_dir, toy_data, attack_cache,
                          train={"epochs": 8, "lr": 3e-3, "log_every_steps": 4})  # models that learn the toy task
                                                                                   # (and disagree); curves
    settings = tomllib.loads(config.read_text())
    settings["attack"]["num_examples"] = EXAMPLES
    config.write_text(tomli_w.dumps(settings))
    assert main(["bench", str(config), "--no-progress"]) == 0
    return out


def test_report_html_is_one_self_contained_file_with_every_attacked_row(html_bench):
    out = html_bench
    text = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "a reference outside the file"
    assert "<link" not in text and "@import" not in text and "fetch(" not in text
    data = page_data(out, read(out / "report.json"))
    assert data["report"] == read(out / "report.json")
    for attack in data["examples"]:
        decoded = [{k: data["strings"][v] if k in STRING_FIELDS and v is not None else v
                    for k, v in zip(ROW_FIELDS, row)} for row in attack["rows"]]
        stored = result_rows(out, attack["run"], attack["recipe"])
        assert decoded == [{k: r.get(k) for k in ROW_FIELDS} for r in stored]
    assert {a["run"] for a in data["examples"]} == set(DEFENCES)
    assert all(p["src"].startswith("data:image/png;base64,") for p in data["plots"] if "src" in p)


def test_the_page_of_the_committed_grid_stays_under_5_mb():
    """results/sst2-minilm-cpu: 42 attacks of 300 examples and 16 trained runs; each text is stored once."""
    grid = Path(__file__).resolve().parents[1] / "results" / "sst2-minilm-cpu"
    data = page_data(grid, read(grid / "report.json"))
    assert sum(len(a["rows"]) for a in data["examples"]) == 42 * 300
    assert len(render(data).encode("utf-8")) < 5 * 2 ** 20


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless chromium with a fresh profile; skipped (failed under ADVROBUST_REQUIRE_BROWSER=1) without one."""
    required = os.environ.get("ADVROBUST_REQUIRE_BROWSER") == "1"
    missing = ("playwright (pip install playwright)" if not _has_module("playwright") else
               f"{CHROMIUM} (apt-get install chromium chromium-driver)" if not Path(CHROMIUM).is_file() else None)
    if missing:
        (pytest.fail if required else pytest.skip)(f"the browser tests need {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        profile = tmp_path_factory.mktemp("chromium-profile")
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900})
        context.set_offline(True)
        yield context
        context.close()


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


class Page:
    """One open report.html: the page, the console errors and every request that was not a file."""

    def __init__(self, context, path: Path, fragment: str = ""):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)
        self.page.goto(path.as_uri() + fragment)
        self.page.wait_for_selector("body[data-ready=true]")

    def _route(self, route):
        url = route.request.url
        if url.startswith("file://"):
            route.continue_()
        else:  # never served: the page must not need it
            self.requests.append(url)
            route.abort()

    def tab(self, name: str) -> None:
        self.page.click(f"nav button[data-tab={name}]")

    def texts(self, selector: str) -> list[str]:
        return self.page.locator(selector).all_inner_texts()

    def attrs(self, selector: str, name: str) -> list[str]:
        return self.page.eval_on_selector_all(selector, f"nodes => nodes.map(n => n.getAttribute('{name}'))")

    def close(self, shots_dir: Path | None = None, name: str = "") -> None:
        if shots_dir is not None:
            path = shots_dir / f"{name}.png"
            self.page.screenshot(path=str(path), full_page=False)
            print(f"screenshot: {path}")
        self.page.close()
        assert self.errors == [], self.errors
        assert self.requests == [], f"report.html asked the network for {self.requests}"


@pytest.fixture
def page(browser, html_bench):
    opened = Page(browser, html_bench / "report.html")
    yield opened
    if not opened.page.is_closed():
        opened.close()


def first_number(text: str) -> float:
    return float(re.search(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", text).group())


def test_the_overview_shows_report_json_numbers_and_verdicts(page, html_bench, shots):
    report = read(html_bench / "report.json")
    rows = page.page.locator("#overview-table tbody tr")
    assert rows.count() == len(report["cells"])
    for i, cell in enumerate(report["cells"]):
        row = rows.nth(i)

        def shown(key: str, row=row) -> str:
            return row.locator(f"td[data-key={key}]").inner_text()

        assert (row.get_attribute("data-defence"), row.get_attribute("data-recipe")) == (cell["defence"], RECIPE)
        for key in ("clean_accuracy", "attack_success_rate", "eval_accuracy"):
            assert first_number(shown(key)) == pytest.approx(100 * cell[key], abs=0.051), key
        low, high = cell["accuracy_under_attack_ci"]
        if cell["degenerate"]:  # as report.md: not shown as robustness
            assert shown("accuracy_under_attack") == "degenerate" and "degenerate" in row.get_attribute("class")
        else:
            assert shown("accuracy_under_attack") == (f"{100 * cell['accuracy_under_attack']:.1f} "
                                                      f"[{100 * low:.1f}, {100 * high:.1f}]")
        assert first_number(shown("avg_queries")) == pytest.approx(cell["avg_queries"], abs=0.051)
        cpu = re.search(r"\((\S+)\)", shown("train_seconds")).group(1)
        assert float(cpu) == pytest.approx(cell["train_cpu_seconds"], abs=0.051)
        comparison = cell.get("comparison")
        if comparison is None:
            assert shown("delta") == "baseline" and "baseline" in row.get_attribute("class")
            continue
        (test,) = comparison["mcnemar"]
        delta = comparison["accuracy_under_attack"]
        assert shown("delta") == ("degenerate" if comparison["degenerate"] else
                                  f"{100 * delta['delta']:+.1f} [{100 * delta['ci'][0]:+.1f}, "
                                  f"{100 * delta['ci'][1]:+.1f}]")
        assert first_number(shown("p_value")) == pytest.approx(test["p_value"], rel=5e-3)
        assert first_number(shown("p_holm")) == pytest.approx(test["p_holm"], rel=5e-3)
        detectable = comparison["detectable_difference"]["difference"]
        assert shown("detectable") == ("n/a" if detectable is None else f"±{100 * detectable:.1f}")
        assert shown("verdict") == verdict(comparison)
    note = page.page.locator("#multiple-comparisons").inner_text()
    assert f"makes {report['statistics']['holm_family']} McNemar tests" in note and "Holm" in note
    assert page.page.locator(".plots img").count() == sum(1 for p in report["plots"] if p.get("file"))
    page.close(shots, "overview")


def changed_words(original: str, perturbed: str) -> list[str]:
    """The words of ``perturbed`` that differ from ``original`` at their position (equal word counts)."""
    return [b for a, b in zip(original.split(), perturbed.split()) if a != b]


def show_attack(page: Page, run: str, recipe: str = RECIPE) -> None:
    page.page.select_option("#example-attack", label=f"{run} / {recipe}")


def visible_indices(page: Page) -> list[int]:
    return [int(i) for i in page.attrs("#example-list .example", "data-index")]


@pytest.mark.parametrize("run", DEFENCES)
def test_the_examples_browser_marks_each_edit_and_filters_searches_and_sorts(page, html_bench, shots, run):
    rows = result_rows(html_bench, run)
    page.tab("examples")
    show_attack(page, run)
    assert visible_indices(page) == [r["index"] for r in rows]
    assert page.page.locator("#example-count").inner_text() == f"{len(rows)} of {len(rows)} examples"
    cards = page.page.locator("#example-list .example")
    for i, row in enumerate(rows):
        marked = cards.nth(i).locator(".pert mark.w").all_inner_texts()
        if row["perturbed_text"] == row["original_text"]:
            assert marked == []
        elif len(row["perturbed_text"].split()) == len(row["original_text"].split()):
            assert marked == changed_words(row["original_text"], row["perturbed_text"]), row["index"]
            assert cards.nth(i).locator(".pert mark.w .c").count() >= 1  # the characters inside, too
        else:
            assert marked
        meta = cards.nth(i).locator(".meta").inner_text()
        assert f"{row['queries']} queries" in meta and f"{row['words_perturbed']} of {row['num_words']} words" in meta
        assert f"prediction {row['original_prediction']} ({100 * row['original_confidence']:.1f} %)" in meta
    for outcome in ("successful", "failed", "skipped"):
        page.page.select_option("#example-outcome", outcome)
        assert visible_indices(page) == [r["index"] for r in rows if r["outcome"] == outcome]
    page.page.select_option("#example-outcome", "all")
    word = max((w for r in rows for w in r["original_text"].split()), key=len)  # a word some row has
    page.page.fill("#example-search", word.upper())
    expected = [r["index"] for r in rows if word in r["original_text"].lower() or word in r["perturbed_text"].lower()]
    assert expected and visible_indices(page) == expected
    assert page.page.locator("#example-count").inner_text() == f"{len(expected)} of {len(rows)} examples"
    page.page.fill("#example-search", "")
    for sort, key in (("queries", "queries"), ("words", "words_perturbed")):
        page.page.select_option("#example-sort", sort)
        assert visible_indices(page) == [r["index"] for r in sorted(rows, key=lambda r: (-r[key], r["index"]))]
    page.page.select_option("#example-sort", "index")
    page.close(shots, f"examples-{run}")


def discordant(rows_a: list[dict], rows_b: list[dict]) -> tuple[list[int], list[int]]:
    """McNemar's b and c straight from two results.jsonl: examples only A / only B keeps after the attack."""
    b_rows = {r["index"]: r for r in rows_b}
    pairs = [(a, b_rows[a["index"]]) for a in rows_a if a["index"] in b_rows]
    pairs = [(a, b) for a, b in pairs if a["outcome"] in ROBUST and b["outcome"] in ROBUST]
    return ([a["index"] for a, b in pairs if ROBUST[a["outcome"]] and not ROBUST[b["outcome"]]],
            [a["index"] for a, b in pairs if ROBUST[b["outcome"]] and not ROBUST[a["outcome"]]])


PAIRS = [("fgm", "vanilla"), ("asa", "vanilla"), ("asa", "fgm"), ("vanilla", "asa")]


def test_the_paired_view_lists_exactly_the_discordant_examples_of_any_two_labels(page, html_bench, shots):
    report = read(html_bench / "report.json")
    page.tab("paired")
    assert page.page.input_value("#pair-a") == "fgm" and page.page.input_value("#pair-b") == "vanilla"  # the default
    seen = 0
    for label_a, label_b in PAIRS:
        page.page.select_option("#pair-a", label_a)
        page.page.select_option("#pair-b", label_b)
        only_a, only_b = discordant(result_rows(html_bench, label_a), result_rows(html_bench, label_b))
        assert [int(i) for i in page.attrs("#only-a-7 .pair", "data-index")] == only_a, (label_a, label_b)
        assert [int(i) for i in page.attrs("#only-b-7 .pair", "data-index")] == only_b, (label_a, label_b)
        seen += len(only_a) + len(only_b)
        if label_b == report["baseline"]:  # the counts behind the report's McNemar test
            (test,) = {c["defence"]: c for c in report["cells"]}[label_a]["comparison"]["mcnemar"]
            assert (test["defence_only_correct"], test["baseline_only_correct"]) == (len(only_a), len(only_b))
        for side, runs in (("a", (label_a, label_b)), ("b", (label_a, label_b))):
            cards = page.page.locator(f"#only-{side}-7 .pair")
            for k in range(cards.count()):  # each model's own perturbation, side by side
                index = int(cards.nth(k).get_attribute("data-index"))
                texts = cards.nth(k).locator(".side .txt").evaluate_all("nodes => nodes.map(n => n.textContent)")
                assert texts == [next(r for r in result_rows(html_bench, run) if r["index"] == index)["perturbed_text"]
                                 for run in runs]
    assert seen > 0, "no pair of these models disagrees on any example: the check above checked nothing"
    page.page.select_option("#pair-a", "asa")
    page.page.select_option("#pair-b", "vanilla")
    page.close(shots, "paired")


def test_the_training_view_draws_each_runs_curves_and_asa_mask_ratios(page, html_bench, shots):
    page.tab("training")
    charts = page.texts("#training .chart > div:first-child")
    for label in DEFENCES:
        assert f"{label}: training loss" in charts
    assert "asa: fraction masked per layer" in charts and "fgm: fraction masked per layer" not in charts
    assert page.page.locator("#training .chart svg polyline").count() >= len(DEFENCES) + 2  # asa: two layers
    assert page.page.locator("#training img[alt='ASA attention and mask map']").count() == 1
    page.close(shots, "training")


def test_a_row_of_the_overview_opens_its_examples(page, html_bench):
    page.page.click("#overview-table tr[data-defence=asa]")
    assert page.page.locator("#examples").is_visible() and not page.page.locator("#overview").is_visible()
    assert page.page.locator("#example-attack option:checked").inner_text() == f"asa / {RECIPE}"
    assert visible_indices(page) == [r["index"] for r in result_rows(html_bench, "asa")]
    page.close()


def test_a_link_opens_the_paired_view_on_a_chosen_pair(browser, html_bench):
    """``report.html#/paired/A/B/RECIPE``: a link to one comparison (the README's screenshot is one)."""
    opened = Page(browser, html_bench / "report.html", f"#/paired/asa/fgm/{RECIPE}")
    assert opened.page.locator("#paired").is_visible() and not opened.page.locator("#overview").is_visible()
    assert (opened.page.input_value("#pair-a"), opened.page.input_value("#pair-b")) == ("asa", "fgm")
    only_a, _ = discordant(result_rows(html_bench, "asa"), result_rows(html_bench, "fgm"))
    assert [int(i) for i in opened.attrs("#only-a-7 .pair", "data-index")] == only_a
    opened.close()
