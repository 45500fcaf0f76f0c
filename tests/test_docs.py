from __future__ import annotations

from pathlib import Path

from app.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme_table() -> None:
    missing = [name for name in Settings.model_fields if f"`PROMPTBANK_{name.upper()}`" not in README]
    assert missing == []


def test_readme_commands_exist() -> None:
    root = Path(__file__).resolve().parent.parent
    for script in ("scripts/serve.sh", "scripts/test.sh"):
        assert f"bash {script}" in README and (root / script).is_file()
    assert "scripts/test.sh" in (root / ".ci" / "run").read_text()
