"""`lmtune board`: refuses to expose itself without a token, one line and exit 2."""

from __future__ import annotations

from tests.conftest import run_cli


def test_another_host_without_a_token_is_refused(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("LMTUNE_BOARD_TOKEN", raising=False)
    code, _, err = run_cli(["board", "--host", "0.0.0.0", "--runs-dir", str(tmp_path)], capsys, monkeypatch)
    assert code == 2
    assert "without a token" in err and "--token" in err and len(err.strip().splitlines()) <= 2


def test_a_missing_data_dir_is_refused(capsys, monkeypatch, tmp_path) -> None:
    args = ["board", "--runs-dir", str(tmp_path), "--data-dir", str(tmp_path / "nope")]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "is not a folder" in err


def test_the_token_may_come_from_the_environment(capsys, monkeypatch, tmp_path) -> None:
    import uvicorn

    started = {}
    monkeypatch.setenv("LMTUNE_BOARD_TOKEN", "s3cret")
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: started.update(host=host, app=app))
    code, out, _ = run_cli(["board", "--host", "0.0.0.0", "--runs-dir", str(tmp_path)], capsys, monkeypatch)
    assert code == 0 and started["host"] == "0.0.0.0"
    assert started["app"].state.board.settings.token == "s3cret" and "token" in out
