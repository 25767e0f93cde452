"""The board in a real browser: headless Chromium (Debian's package) driven by Playwright.

Each test opens a page of a board served over real tiny runs, acts as a user would, and saves a
screenshot (to docs/board/ when LMTUNE_BOARD_SCREENSHOTS=1: the README shows those). Without
chromium or playwright the tests skip, naming the install command.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed: apt-get install -y chromium (Debian's package)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="pip install playwright (no browser download)"
    )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, tmp_path: Path) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
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
    assert rows.count() == 3
    text = page.locator("#runs-table").inner_text()
    assert "sst/lora" in text and "interrupted" in text and "complete" in text
    page.fill("#runs-filter", "bitfit")
    page.wait_for_function("document.querySelectorAll('#runs-table tbody tr').length === 1")
    page.fill("#runs-filter", "")
    page.wait_for_function("document.querySelectorAll('#runs-table tbody tr').length === 3")
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
    page.locator("#cell-examples").scroll_into_view_if_needed()
    _shot(page, "run", tmp_path)


def test_compare_marks_the_best_run_per_column(page, board_url: str, tmp_path: Path) -> None:
    page.goto(f"{board_url}/#/compare?runs=sst/lora,sst/bitfit")
    page.wait_for_selector("#compare-table td.best")
    assert page.locator("#compare-table tbody tr").count() == 2
    page.wait_for_selector("#pareto .main-svg")
    assert "method.name" in page.locator("#config-diff").inner_text()
    _shot(page, "compare", tmp_path)


def test_launch_a_tiny_training_from_the_form_and_watch_it_finish(
    page, board_url: str, board_roots: dict[str, Path], tmp_path: Path
) -> None:
    page.goto(f"{board_url}/#/launch")
    page.wait_for_selector("#launch-form .field", timeout=60_000)
    page.fill("#f-model\\.name", str(board_roots["tiny_bert"]))
    for split in ("train", "validation", "test"):
        page.fill(f"#f-data\\.{split}", str(board_roots["data"] / f"{split}.csv"))
        page.dispatch_event(f"#f-data\\.{split}", "change")
    settings = {"#f-data\\.max_length": "32", "#f-train\\.epochs": "-1", "#f-output_dir": "from-form"}
    for selector, value in settings.items():
        page.fill(selector, value)
        page.dispatch_event(selector, "change")
    page.click("#validate")
    error = page.locator('.field[data-field="train.epochs"] .field-error')
    error.wait_for()
    assert "invalid value for 'train.epochs'" in error.inner_text()
    page.fill("#f-train\\.epochs", "1")
    page.dispatch_event("#f-train\\.epochs", "change")
    page.click("#validate")
    page.wait_for_selector("#yaml-preview:not([hidden])")
    assert "output_dir:" in page.locator("#yaml-preview").inner_text()
    page.click("#launch")
    page.wait_for_selector("#jobs-table tr[data-status]")
    page.click("#jobs-table button:has-text('Log')")
    page.wait_for_selector("#job-log")
    page.wait_for_selector("#jobs-table tr[data-status='finished']", timeout=240_000)
    page.wait_for_function("document.querySelector('#job-log').textContent.includes('run directory')")
    page.locator("#jobs").scroll_into_view_if_needed()
    _shot(page, "launch", tmp_path)
    page.goto(f"{board_url}/#/runs")
    page.wait_for_selector("#runs-table tbody tr >> text=from-form")
    assert "complete" in page.locator("#runs-table tbody tr", has_text="from-form").inner_text()


def test_playground_draws_label_probabilities(page, board_url: str, tmp_path: Path) -> None:
    page.goto(f"{board_url}/#/playground?path=sst/lora")
    page.wait_for_selector("#in-text")
    page.fill("#in-text", "the film was great\nthe app was awful")
    page.click("#predict")
    page.wait_for_selector(".prediction.labels")
    predictions = page.locator(".prediction.labels")
    assert predictions.count() == 2
    assert predictions.first.locator(".bar-row").count() == 2  # negative, positive
    assert predictions.first.locator(".bar-row.chosen").count() == 1
    _shot(page, "playground", tmp_path)
