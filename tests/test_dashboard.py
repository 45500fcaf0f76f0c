"""The dashboard's main flow in a real headless Chromium (Debian's chromium driven by Playwright) against a live
test server: enter the key, create a task, upload a dataset (a bad file shows its line-numbered errors), pick a
method from the list the API serves, train a few steps and watch the labelled curve grow from the job stream,
infer in the playground, look at the versions' key figures and details, delete. The README's screenshots are made
by scripts/screenshots.py on the real model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.api.helpers import toy_examples
from tests.browser import CHROMIUM, LAUNCH_ARGS, expect, needs_browser, sync_playwright
from tests.live_server import ADMIN_KEY


@needs_browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dashboard_main_flow(live_server_with: Callable[..., str], tmp_path: Path) -> None:
    url = live_server_with(job_stream_poll_seconds=0.05)
    good = tmp_path / "reviews.jsonl"
    good.write_text("".join(json.dumps(example) + "\n" for example in toy_examples(24)))
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"input": "a", "output": "positive"}\n{"input": "b"}\nnot json\n')
    methods = httpx.get(f"{url}/v1/methods", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()["data"]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        failed: list[str] = []
        page.on("requestfailed", lambda request: failed.append(f"{request.url}: {request.failure}"))
        page.on("dialog", lambda dialog: dialog.accept())
        page.goto(f"{url}/ui")
        expect(page.locator("#notice")).to_contain_text("asks for a key")  # the service wants one
        page.fill("#key", ADMIN_KEY)
        page.dispatch_event("#key", "change")

        page.fill("#task-name", "sentiment")
        page.fill("#task-labels", "positive,negative")
        page.fill("#task-template", "Review: {input}\\nSentiment:")
        page.click("#task-create")
        expect(page.locator("#tasks tr[data-task=sentiment]")).to_contain_text("untrained")

        page.set_input_files("#ds-file", str(bad))
        page.click("#ds-upload")
        expect(page.locator("#ds-errors li")).to_have_count(2)
        expect(page.locator("#ds-errors")).to_contain_text("line 2:")
        page.set_input_files("#ds-file", str(good))
        page.fill("#ds-name", "reviews")
        page.click("#ds-upload")
        expect(page.locator("#datasets")).to_contain_text("reviews")

        # every value the chart's point count takes, as the stream delivers points
        page.evaluate(
            """() => { window.seen = []; new MutationObserver(() => window.seen.push(+chart.dataset.points))
                 .observe(document.getElementById('chart'), {attributes: true}); }"""
        )
        # the method list is the API's, and each method brings its own fields and defaults
        options = page.locator("#train-method option")
        expect(options).to_have_count(len(methods))
        assert options.evaluate_all("os => os.map(o => o.value)") == [m["name"] for m in methods]
        around = next(m for m in methods if m["name"] == "around")
        page.select_option("#train-method", "around")
        expect(page.locator("#train-method-fields input[data-field=num_after_tokens]")).to_have_value(
            str(around["defaults"]["num_after_tokens"])
        )
        for method in methods:  # each method's defaults make a form the browser submits (input_mapping: 0 tokens)
            page.select_option("#train-method", method["name"])
            expect(page.locator("#train-tokens")).to_have_value(str(method["defaults"]["num_virtual_tokens"]))
            assert page.eval_on_selector("#train-form", "form => form.checkValidity()"), method["name"]
        page.select_option("#train-method", "prompt")
        expect(page.locator("#train-method-fields input")).to_have_count(0)
        expect(page.locator("#train-lr")).to_have_value(str(methods[-1]["defaults"]["learning_rate"]))

        page.select_option("#train-task", "sentiment")
        page.fill("#train-steps", "40")
        page.fill("#train-tokens", "4")
        page.fill("#train-eval", "10")
        page.click("#train-submit")
        expect(page.locator("#job-status")).to_contain_text("succeeded", timeout=120_000)
        seen = page.evaluate("window.seen")
        assert max(seen) == 41, seen  # steps 0 (the initial evaluation) to 40
        assert len({count for count in seen if 0 < count < 41}) >= 2, seen  # it grew while the job ran
        expect(page.locator("#x-title")).to_have_text("step")  # the curve's axes say what they show
        expect(page.locator("#loss-title")).to_have_text("training loss")
        expect(page.locator("#score-title")).to_have_text("validation score")
        assert page.locator("#axes .tick-x").all_text_contents() == ["0", "20", "40"]
        page.screenshot(path=str(tmp_path / "dashboard-training.png"), full_page=True)

        expect(page.locator("#tasks tr[data-task=sentiment]")).to_contain_text("ready")
        page.select_option("#play-task", "sentiment")
        page.fill("#play-input", "a good film\nawful and sad")
        page.click("#play-run")
        rows = page.locator("#play-table tr")
        expect(rows).to_have_count(2)
        for index in range(2):
            assert rows.nth(index).get_attribute("data-label") in ("positive", "negative")
            expect(rows.nth(index).locator(".score")).to_have_count(2)

        page.locator("#tasks tr[data-task=sentiment] button", has_text="versions").click()
        expect(page.locator("#prompts tr")).to_have_count(1)
        expect(page.locator("#prompts")).to_contain_text("(active)")
        # key figures in the row, the rest on demand; nothing spills past the card
        version = page.locator("#prompts tr").first
        expect(version).to_contain_text("/40")  # best step of 40
        assert "{" not in version.inner_text() and "best_val_loss" not in version.inner_text()
        expect(page.locator("#prompt-detail")).to_be_hidden()
        version.locator("button", has_text="details").click()
        expect(page.locator("#prompt-detail")).to_contain_text('"best_val_loss"')
        assert page.eval_on_selector("#prompts-section", "e => e.scrollWidth <= e.clientWidth")
        page.screenshot(path=str(tmp_path / "dashboard-playground.png"), full_page=True)

        page.locator("#tasks tr[data-task=sentiment] button", has_text="delete").click()
        expect(page.locator("#tasks tr")).to_have_count(0)
        # nothing fetched from outside, nothing broken (the page drops a job's stream itself once it has ended)
        assert not [f for f in failed if not (f.startswith(f"{url}/v1/jobs/") and f.endswith("ERR_ABORTED"))], failed
        browser.close()
