"""The web dashboard: one page served by the app itself (no build step, no asset from the internet), which calls the
same REST API as any client, with the key the user enters (kept in the browser's localStorage)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["dashboard"])

PAGE = files("app.ui").joinpath("index.html")


@router.get("/ui", include_in_schema=False)
def dashboard() -> HTMLResponse:
    """The dashboard page: tasks, datasets, training with live curves, prompt versions with their evaluations and
    traffic split, a playground."""
    return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})
