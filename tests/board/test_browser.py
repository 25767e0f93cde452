"""The board in a real browser: headless Chromium (Debian's package) driven by Playwright.

Each test opens a page of a board served over real tiny runs, acts as a user would, and saves a
screenshot (to docs/board/ when LMTUNE_BOARD_SCREENSHOTS=1: the README shows those). Without
chromium or playwright the tests skip, naming the install command.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "board"


@pytest.fixture(scope="module")
def board_url(board_roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A board on a copy of the test runs (launches must not change the shared fixture)."""
    uvicorn = pytest.importorskip("uvicorn")
    from lmtune.board.app import BoardSettings, create_board_app

    runs = tmp_path_factory.mktemp("browser") / "runs"
    shutil.copytree(board_roots["runs"], runs)
    _sweep_folder(runs / "lr-sweep", [runs / "sst" / "lora", runs / "sst" / "bitfit"])
    app = create_board_app(BoardSettings(runs, [board_roots["data"]]))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def _sweep_folder(folder: Path, trial_runs: list[Path]) -> None:
    """A sweep's output folder as `lmtune sweep` writes it (sweep.json, summary.md, a run folder
    per trial), its trials copies of finished runs (a real sweep is tested in the API tests)."""
    trials = []
    for number, source in enumerate(trial_runs):
        run_dir = folder / f"trial-{number:03d}"
        shutil.copytree(source, run_dir)
        value = json.loads((run_dir / "metrics.json").read_text())["validation"]["f1_macro"]
        params = {"train.learning_rate": 1e-3 * (number + 1)}
        trials.append(
            {"trial": number, "state": "complete", "value": value, "params": params, "run_dir": str(run_dir)}
        )
    summary = {"direction": "maximize", "trials": trials, "importances": {"train.learning_rate": 1.0}}
    (folder / "sweep.json").write_text(json.dumps(summary))
    rows = "\n".join(f"| {t['trial']} | {t['value']:.4f} |" for t in trials)
    (folder / "summary.md").write_text(f"# Sweep\n\n| trial | f1_macro |\n|---|---|\n{rows}\n")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed: apt-get install -y chromium (Debian's package)")
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="playwright is not installed: pip install playwright, with apt-get install -y chromium",
    )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, tmp_path: Path) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _shot(page, name: str, tmp_path: Path, full_page: bool = False) -> Path:
    folder = SHOTS if os.environ.get("LMTUNE_BOARD_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    assert path.stat().st_size > 10_000
    return path


def test_runs_list_shows_every_run_with_its_status(page, board_url: str, tmp_path: Path) -> None:
    page.goto(f"{board_url}/#/runs")
    page.wait_for_selector("#runs-table tbody tr")
    rows = page.locator("#runs-table tbody tr")
    assert rows.count() == 5  # sst/lora, sst/bitfit, broken/interrupted, the sweep's two trials
    text = page.locator("#runs-table").inner_text()
    assert "sst/lora" in text and "interrupted" in text and "complete" in text
    page.fill("#runs-filter", "sst/")
    page.wait_for_function("document.querySelectorAll('#runs-table tbody tr').length === 2")
    page.select_option("#runs-status", "interrupted")
    page.fill("#runs-filter", "")
    page.wait_for_function("document.querySelectorAll('#runs-table tbody tr').length === 1")
    page.select_option("#runs-status", "")
    page.wait_for_function("document.querySelectorAll('#runs-table tbody tr').length === 5")
    page.click("#runs-table th[data-key='metric']")  # best first
    first = page.locator("#runs-table tbody tr").first.get_attribute("data-path")
    assert first in ("sst/bitfit", "lr-sweep/trial-001")
    assert page.locator("#collections a", has_text="lr-sweep").count() == 1
    _shot(page, "runs", tmp_path)


def test_run_page_draws_curves_and_a_confusion_cell_lists_its_examples(
    page, board_url: str, tmp_path: Path
) -> None:
    page.goto(f"{board_url}/#/run?path=sst/lora")
    page.wait_for_selector("#curve-loss .main-svg")
    heatmap = page.locator("#confusion-test .nsewdrag").first
    heatmap.wait_for()
    heatmap.scroll_into_view_if_needed()
    box = heatmap.bounding_box()
    # 2 x 2, gold top to bottom, predicted left to right: the bottom-right cell is positive/positive.
    page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.75)
    page.wait_for_selector("#cell-examples table.examples")
    heading = page.locator("#cell-examples h3").inner_text()
    assert "gold positive" in heading and "predicted positive" in heading
    rows = page.locator("#cell-examples table.examples tbody tr")
    assert rows.count() >= 1 and all("positive" in rows.nth(i).inner_text() for i in range(rows.count()))
    page.evaluate("document.querySelector('#confusion-test').closest('section').scrollIntoView()")
    _shot(page, "run", tmp_path)
    page.click(".tab[data-tab='data']")
    report = page.locator("#data-report")
    report.wait_for()
    assert "Data report" in report.inner_text() and "[object Object]" not in report.inner_text()


def test_compare_marks_the_best_run_per_column(page, board_url: str, tmp_path: Path) -> None:
    page.goto(f"{board_url}/#/compare?runs=sst/lora,sst/bitfit")
    page.wait_for_selector("#compare-table td.best")
    assert page.locator("#compare-table tbody tr").count() == 2
    page.wait_for_selector("#pareto .main-svg")
    assert "method.name" in page.locator("#config-diff").inner_text()
    _shot(page, "compare", tmp_path)


def test_a_sweep_folder_shows_its_trials_history_and_importances(page, board_url: str) -> None:
    page.goto(f"{board_url}/#/runs")
    page.click("#collections a:has-text('lr-sweep')")
    page.wait_for_selector("#sweep-trials tbody tr")
    assert page.locator("#sweep-trials tbody tr").count() == 2
    assert page.locator("#compare-table td.best").count() >= 1
    page.wait_for_selector("#sweep-history .main-svg")
    page.wait_for_selector("#sweep-importances .main-svg")
    assert page.locator("#collection-summary table").count() == 1


def test_launch_a_tiny_training_from_the_form_and_watch_it_finish(
    page, board_url: str, board_roots: dict[str, Path], tmp_path: Path
) -> None:
    page.goto(f"{board_url}/#/launch")
    page.wait_for_selector("#launch-form .field", timeout=60_000)
    page.fill("#f-model\\.name", str(board_roots["tiny_bert"]))
    for split in ("train", "validation", "test"):  # picked from the data root's files
        page.select_option(f"#f-data\\.{split}", label=f"{split}.csv")
    settings = {"#f-data\\.max_length": "32", "#f-train\\.epochs": "-1", "#f-output_dir": "from-form"}
    for selector, value in settings.items():
        page.fill(selector, value)
    page.click("#validate")
    error = page.locator('.field[data-field="train.epochs"] .field-error')
    error.wait_for()
    assert "invalid value for 'train.epochs'" in error.inner_text()
    page.fill("#f-train\\.epochs", "1")
    page.click("#validate")
    page.wait_for_selector("#yaml-preview:not([hidden])")
    preview = page.locator("#yaml-preview").inner_text()
    assert "output_dir:" in preview and str(board_roots["data"] / "validation.csv") in preview
    assert not page.locator(".field-error:not([hidden])").count()
    page.click("#launch")
    page.wait_for_selector("#jobs-table tr[data-status]")
    page.wait_for_selector("#job-log")  # the launched job's log opens by itself
    page.wait_for_selector("#jobs-table tr[data-status='finished']", timeout=240_000)
    page.wait_for_function("document.querySelector('#job-log').textContent.includes('run directory')")
    page.locator("#jobs").scroll_into_view_if_needed()
    _shot(page, "launch", tmp_path)
    page.click("#jobs-table a:has-text('from-form')")
    page.wait_for_selector("#curve-loss .main-svg")
    page.goto(f"{board_url}/#/runs")
    page.wait_for_selector("#runs-table tbody tr >> text=from-form")
    assert "complete" in page.locator("#runs-table tbody tr", has_text="from-form").inner_text()


def test_run_again_with_changes_prefills_the_form_under_a_new_name(page, board_url: str) -> None:
    page.goto(f"{board_url}/#/run?path=sst/bitfit")
    page.click(".run-head a:has-text('Run again with changes')")
    page.wait_for_selector("#launch-form .field")
    assert page.input_value("#f-method\\.name") == "bitfit"
    assert page.input_value("#f-output_dir") == "sst/bitfit-2"
    page.select_option("#f-method\\.name", "lora")  # lora's own options appear
    page.wait_for_selector("#f-method\\.r")
    page.fill("#f-method\\.r", "4")
    page.click("#validate")
    page.wait_for_selector("#yaml-preview:not([hidden])")
    preview = page.locator("#yaml-preview").inner_text()
    assert "name: lora" in preview and "r: 4" in preview and "sst/bitfit-2" in preview


def test_playground_draws_label_probabilities(page, board_url: str, tmp_path: Path) -> None:
    page.goto(f"{board_url}/#/playground?path=sst/bitfit")
    page.wait_for_selector("#in-text")
    page.fill("#in-text", "the film was great\nthe app was awful")
    page.click("#predict")
    page.wait_for_selector(".prediction.labels")
    predictions = page.locator(".prediction.labels")
    assert predictions.count() == 2
    assert predictions.first.locator(".bar-row").count() == 2  # negative, positive
    assert predictions.first.locator(".bar-row.chosen").count() == 1
    _shot(page, "playground", tmp_path)


def test_resume_an_interrupted_run_queues_a_job_that_cancel_stops(page, board_url: str) -> None:
    page.goto(f"{board_url}/#/run?path=broken/interrupted")
    page.click("#resume")
    page.wait_for_url("**/#/launch?job=*")
    row = page.locator("#jobs-table tr", has_text="broken/interrupted")
    row.wait_for()
    page.wait_for_selector("#job-log")
    row.locator("button:has-text('Cancel')").click()  # SIGINT: the run stays resumable
    page.wait_for_selector("#jobs-table tr[data-status='cancelled']", timeout=120_000)
    assert "broken/interrupted" in page.locator("#jobs-table tr[data-status='cancelled']").inner_text()


# The other tasks' renderings, on the API's documented answers (docs/board.md; the shapes the
# tasks' predict methods return): no NER, QA or decoder run needs training for these.
ENTITIES = {
    "inputs": {"text": "Ada Lovelace visited London"},
    "view": {"render": "entities", "inputs": ["text"], "base_available": False},
    "predictions": [
        {
            "text": "Ada Lovelace visited London",
            "entities": [
                {"type": "PER", "text": "Ada Lovelace", "start": 0, "end": 12, "score": 0.98},
                {"type": "LOC", "text": "London", "start": 21, "end": 27, "score": 0.95},
            ],
        }
    ],
    "marked": ("mark.entity", ["Ada LovelacePER", "LondonLOC"]),
}
SPAN = {
    "inputs": {"question": "Where is the Louvre?", "context": "The Louvre is in Paris, France."},
    "view": {"render": "span", "inputs": ["question", "context"], "base_available": False},
    "predictions": [
        {"question": "Where is the Louvre?", "answer": "Paris", "score": 0.9, "start": 17, "end": 22}
    ],
    "marked": ("mark.answer", ["Paris"]),
}
GENERATION = {
    "inputs": {"text": "Say hello."},
    "view": {"render": "generation", "inputs": ["text"], "base_available": True},
    "events": ['{"text": "Hel"}', '{"text": "lo!"}', '{"done": true}'],
    "marked": (".generated.done", ["Hello!", "Hello!"]),
}


def _fake_run_api(page, case: dict) -> None:
    row = {"path": "fake/run", "name": "fake/run", "status": "complete", "task": "t", "method": "lora"}
    detail = {**row, "model": "m", "view": case["view"]}

    def answer(route) -> None:
        path = urlparse(route.request.url).path
        if path == "/api/generate":
            body = "".join(f"data: {event}\n\n" for event in case["events"])
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)
        elif path == "/api/runs":
            route.fulfill(json={"root": "/fake", "runs": [row], "collections": []})
        elif path == "/api/run":
            route.fulfill(json=detail)
        elif path == "/api/predict":
            route.fulfill(json={"view": case["view"], "predictions": case["predictions"]})
        else:
            route.continue_()

    page.route("**/api/**", answer)


@pytest.mark.parametrize("case", [ENTITIES, SPAN, GENERATION], ids=["entities", "span", "generation"])
def test_playground_marks_entities_answers_and_streams_generations(page, board_url: str, case: dict) -> None:
    _fake_run_api(page, case)
    page.goto(f"{board_url}/#/playground?path=fake/run")
    for name, value in case["inputs"].items():
        page.fill(f"#in-{name}", value)
    page.click("#predict")
    selector, texts = case["marked"]
    page.wait_for_function(f"document.querySelectorAll({selector!r}).length === {len(texts)}")
    assert page.locator(selector).all_inner_texts() == texts
