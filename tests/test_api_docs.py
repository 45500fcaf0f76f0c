"""/docs (Swagger UI) renders with no internet: its script and styles are served by the app itself. In a real
headless Chromium against a live server, the page lists the operations and asks no other host for anything; behind
keys (PROMPTBANK_PUBLIC_DOCS=false) the page points at the same local files. /redoc is gone (its bundle fetches a
logo from its vendor's CDN)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.api.docs import ASSETS
from tests.api.test_keys import ADMIN_KEY, as_key, new_key
from tests.browser import CHROMIUM, LAUNCH_ARGS, expect, needs_browser, sync_playwright

PATHS = ("/v1/tasks", "/v1/datasets", "/v1/jobs", "/v1/methods", "/v1/infer")


@needs_browser
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_docs_page_renders_offline_and_lists_the_operations(live_server_with: Callable[..., str]) -> None:
    url = live_server_with()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{url}/docs")
        operations = page.locator(".opblock-summary-path")
        expect(operations.first).to_be_visible(timeout=30_000)
        shown = set(operations.all_text_contents())
        assert set(PATHS) <= {text.replace("\u200b", "") for text in shown}, sorted(shown)
        browser.close()
    foreign = [u for u in requested if not u.startswith(f"{url}/") and not u.startswith(("data:", "blob:"))]
    assert foreign == [], foreign
    assert f"{url}{ASSETS}/" in " ".join(requested)


def test_docs_behind_keys_use_the_same_local_files(client_with: Callable[..., TestClient]) -> None:
    admin = as_key(client_with(admin_key=ADMIN_KEY, public_docs=False), ADMIN_KEY)
    reader = as_key(admin, new_key(admin, "acme", ["read"]))
    for path in ("/docs", "/openapi.json"):
        assert as_key(admin, None).get(path).status_code == 401, path
    page = reader.get("/docs")
    assert page.status_code == 200 and "https://" not in page.text, page.text
    assert f'src="{ASSETS}/swagger-ui-bundle.js"' in page.text and f'href="{ASSETS}/swagger-ui.css"' in page.text
    assert reader.get("/redoc").status_code == 404
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        response = as_key(admin, None).get(f"{ASSETS}/{asset}")  # the files are the same for everyone
        assert response.status_code == 200 and len(response.content) > 1000, asset
