"""`python -m durable_trio`: migrate, and user errors as one line, not a traceback."""

from __future__ import annotations

import socket

import pytest

from durable_trio._cli import main


def test_migrate_applies_then_reports_up_to_date(
    pg_url: str, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "--url", pg_url, "--schema", schema]) == 0
    assert capsys.readouterr().out.startswith("applied migrations [1, 2, 3")
    assert main(["migrate", "--url", pg_url, "--schema", schema]) == 0
    assert capsys.readouterr().out.strip() == "schema is up to date"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--schema", "Bad Name"], "error: InvalidInput: schema name 'Bad Name' is invalid"),
        (["--url", "postgresql://u:s3cret@127.0.0.1:{port}/x"], "error: DatabaseUnavailable"),
    ],
)
def test_user_errors_are_one_line(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [a.format(port=_closed_port()) for a in args]
    if "--url" not in args:
        args += ["--url", "postgresql://u@127.0.0.1:1/x"]
    assert main(["migrate", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(expected), err
    assert "Traceback" not in err
    assert "s3cret" not in err
