"""The promptbank command: keys made, listed and revoked without a server; serve refuses an open non-local bind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.cli import main
from app.config import Settings
from app.main import create_app


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMPTBANK_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("PROMPTBANK_DATABASE_URL", raising=False)
    monkeypatch.delenv("PROMPTBANK_ADMIN_KEY", raising=False)
    return tmp_path


def test_keys_are_created_listed_and_revoked_from_the_command_line(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--tenant", "acme", "--scopes", "read,train", "--name", "ci"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("pb_")
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert "acme" in listed and "read,train" in listed and "active" in listed and key not in listed
    app = create_app(Settings(data_dir=data_dir, load_model=False, run_worker=False))
    with TestClient(app) as client:
        assert client.get("/v1/tasks").status_code == 401  # a key exists: auth is on
        assert client.get("/v1/tasks", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert main(["keys", "revoke", "1"]) == 0
        assert client.get("/v1/tasks", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        audit = client.get("/v1/audit", headers={"Authorization": "Bearer " + _admin_key(capsys)})
        assert [(e["action"], e["actor"]) for e in audit.json()][:2] == [("create", "cli"), ("revoke", "cli")]
    assert main(["keys", "revoke", "99"]) == 1
    assert "no key with id 99" in capsys.readouterr().err


def _admin_key(capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["keys", "create", "--admin"]) == 0
    return capsys.readouterr().out.strip()


def test_keys_create_refuses_unknown_scopes(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--scopes", "read,root"]) == 1
    assert "unknown: root" in capsys.readouterr().err


def test_serve_refuses_a_non_local_address_without_keys(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "PROMPTBANK_ADMIN_KEY" in capsys.readouterr().err


def test_serve_refuses_a_short_admin_key_and_says_why(data_dir: Path) -> None:
    # a process of its own: a serve that did not refuse would keep serving (the timeout fails the test)
    env = {**os.environ, "PROMPTBANK_ADMIN_KEY": "pb_too-short-to-guess-safely", "PROMPTBANK_LOAD_MODEL": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "PROMPTBANK_ADMIN_KEY" in done.stderr and "needs at least 32" in done.stderr
    assert "pb_too-short" not in done.stderr + done.stdout
