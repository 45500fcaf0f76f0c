"""/docs (Swagger UI), rendered from files the app serves itself, so that it works without internet.

FastAPI's own page loads Swagger UI from a CDN: offline, /docs was a blank page. The files come from the
fastapi-offline package (its static folder holds swagger-ui-dist 5's bundle and CSS and a favicon); only those
files are used, mounted at ASSETS. They are the same for every caller and say nothing about this service, so they
stay public even when the page and /openapi.json need a key. There is no /redoc: ReDoc's bundle fetches its logo
from its vendor's CDN whatever it is told, and one offline docs page is enough.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from app.api.auth import need_read

ASSETS = "/docs-assets"
ASSET_DIR = files("fastapi_offline").joinpath("static")


def install_docs(app: FastAPI, *, public: bool) -> None:
    """/docs from local files; with public=False it and /openapi.json need the read scope (the app must then be
    made with openapi_url=None, and with docs_url=redoc_url=None in any case)."""
    app.mount(ASSETS, StaticFiles(directory=str(ASSET_DIR)), name="docs-assets")
    guard = [] if public else [Depends(need_read)]

    if not public:

        @app.get("/openapi.json", include_in_schema=False, dependencies=guard)
        def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guard)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
        )
