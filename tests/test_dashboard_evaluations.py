"""A task's evaluations and traffic split on the dashboard, in a real headless Chromium against a live test server:
every version's scores on the task's evaluation dataset with the reference classifiers marked as such, each
version's share of the requests and what it has served, and what the page says when neither is set."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.api.helpers import toy_examples
from tests.browser import CHROMIUM, LAUNCH_ARGS, expect, needs_browser, sync_playwright
from tests.live_server import ADMIN_KEY

QUICK = {"steps": 2, "eval_every": 2, "num_virtual_tokens": 2}


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def _version(api: httpx.Client, dataset_id: int) -> int:
    """Train "sentiment" a couple of steps; the new version's prompt id."""
    body = {"type": "train", "task": "sentiment", "dataset_id": dataset_id, "hyperparameters": QUICK}
    job = _ok(api.post("/v1/jobs", json=body), 202)
    deadline = time.monotonic() + 120
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = _ok(api.get(f"/v1/jobs/{job['id']}"))
    assert job["status"] == "succeeded", job
    return int(job["result_prompt_id"])


@needs_browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_task_s_view_shows_its_evaluations_and_its_traffic_split(live_server_with: Callable[..., str]) -> None:
    url = live_server_with()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as api:
        labels = ["positive", "negative"]
        task = {"kind": "classification", "labels": labels, "template": "Review: {input}\nSentiment:"}
        _ok(api.post("/v1/tasks", json={"name": "sentiment", **task}), 201)
        _ok(api.post("/v1/tasks", json={"name": "plain", **task}), 201)  # no evaluation dataset, no version
        train = _ok(api.post("/v1/datasets", json={"name": "toy", "examples": toy_examples(24)}), 201)
        held = _ok(api.post("/v1/datasets", json={"name": "held-out", "examples": toy_examples(12, seed=7)}), 201)
        _ok(api.patch("/v1/tasks/sentiment", json={"evaluation_dataset_id": held["id"]}))
        first, second = _version(api, train["id"]), _version(api, train["id"])  # the second becomes active
        split = [{"prompt_id": first, "weight": 3}, {"prompt_id": second, "weight": 1}]
        _ok(api.patch("/v1/tasks/sentiment", json={"traffic": split}))
        for i in range(12):
            _ok(api.post("/v1/infer", json={"task": "sentiment", "inputs": ["a fine film"], "user": f"user-{i}"}))
        evaluations = _ok(api.get("/v1/tasks/sentiment/evaluations"))
        served = _ok(api.get("/v1/stats"))["versions"]["sentiment"]

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            failed: list[str] = []
            page.on("requestfailed", lambda request: failed.append(f"{request.url}: {request.failure}"))
            page.goto(f"{url}/ui")
            page.fill("#key", ADMIN_KEY)
            page.dispatch_event("#key", "change")
            page.locator("#tasks tr[data-task=sentiment] button", has_text="versions").click()

            # one row per version, oldest first, then the two references, marked as such
            expect(page.locator("#evaluations tr")).to_have_count(4)
            expect(page.locator("#eval-dataset")).to_have_text(f"on dataset {held['id']}")
            headers = page.locator("#eval-head th").all_text_contents()
            assert headers[:3] == ["version", "prompt", "active"]
            assert {"accuracy", "macro f1", "calibration error"} <= set(headers) and headers[-1] == "examples"
            for row in evaluations["data"]:
                cells = page.locator(f"#evaluations tr[data-prompt='{row['prompt_id']}'] td").all_text_contents()
                assert cells[:3] == [str(row["version"]), str(row["prompt_id"]), "active" if row["active"] else ""]
                assert cells[headers.index("accuracy")] == f"{row['metrics']['accuracy']:.3f}"
                assert cells[headers.index("examples")] == "12"
            assert [r["prompt_id"] for r in evaluations["data"]] == [first, second]
            assert evaluations["data"][1]["active"] and not evaluations["data"][0]["active"]
            references = page.locator("#evaluations tr.reference")
            expect(references).to_have_count(2)
            expect(references.nth(0).locator("td").nth(0)).to_have_text("reference")
            expect(references.nth(0).locator("td").nth(1)).to_have_text("majority class")
            expect(references.nth(1).locator("td").nth(1)).to_have_text("TF-IDF + logistic regression")
            majority = next(r for r in evaluations["references"] if r["name"] == "majority")["metrics"]["accuracy"]
            expect(references.nth(0).locator("td").nth(headers.index("accuracy"))).to_have_text(f"{majority:.3f}")
            assert references.nth(0).evaluate("tr => getComputedStyle(tr.cells[0]).fontStyle") == "italic"
            expect(page.locator("#eval-empty")).to_be_hidden()

            # the split as shares, with what each version has served
            expect(page.locator("#traffic tr")).to_have_count(2)
            for prompt_id, version, share in [(first, "1", "75%"), (second, "2", "25%")]:
                cells = page.locator(f"#traffic tr[data-prompt='{prompt_id}'] td").all_text_contents()
                assert cells[0] == version and cells[1].startswith(str(prompt_id)) and cells[2] == share, cells
                assert cells[3] == str(served.get(str(prompt_id), 0)), (cells, served)
            assert sum(int(n) for n in served.values()) == 12
            expect(page.locator(f"#traffic tr[data-prompt='{second}']")).to_contain_text("(active)")
            assert page.eval_on_selector("#prompts-section", "e => e.scrollWidth <= e.clientWidth")

            # a tenant's read key sees the split, and is told that the request counts are the operator's view
            reader = _ok(api.post("/v1/keys", json={"tenant": "default", "scopes": ["read"]}), 201)["key"]
            page.fill("#key", reader)
            page.dispatch_event("#key", "change")
            expect(page.locator("#traffic-note")).to_contain_text("the operator's view")
            expect(page.locator(f"#traffic tr[data-prompt='{first}'] td").nth(2)).to_have_text("75%")
            expect(page.locator(f"#traffic tr[data-prompt='{first}'] td").nth(3)).to_have_text("")
            expect(page.locator("#evaluations tr")).to_have_count(4)
            page.fill("#key", ADMIN_KEY)
            page.dispatch_event("#key", "change")
            expect(page.locator("#traffic-note")).to_contain_text("since the service started")

            # no split: the active version serves everyone; a task without an evaluation set says how to set one
            _ok(api.patch("/v1/tasks/sentiment", json={"traffic": None}))
            page.locator("#tasks tr[data-task=sentiment] button", has_text="versions").click()
            expect(page.locator("#traffic-table")).to_be_hidden()
            everyone = f"all traffic to the active version (prompt {second})"
            expect(page.locator("#traffic-note")).to_contain_text(everyone)
            page.locator("#tasks tr[data-task=plain] button", has_text="versions").click()
            expect(page.locator("#eval-table")).to_be_hidden()
            expect(page.locator("#eval-empty")).to_contain_text("No evaluation dataset")
            expect(page.locator("#eval-empty")).to_contain_text('PATCH /v1/tasks/plain {"evaluation_dataset_id"')
            expect(page.locator("#traffic-note")).to_contain_text("no active version")
            assert not failed, failed
            browser.close()
