"""Tokens are compared in constant time, with every token, never with ``==``."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.serve.security import Secret, TokenCheck


def test_every_token_is_compared_with_compare_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    tokens = tmp_path / "tokens"
    tokens.write_text("# callers\nalpha\n\nbeta\ngamma\n")
    check = TokenCheck(str(tokens))

    assert check.allows("Bearer alpha")
    assert len(calls) == 3, "all three tokens are compared even though the first matched"
    assert all(len(a) == len(b) == 32 for a, b in calls), "digests, never the tokens themselves"
    assert not check.allows("Bearer delta")
    assert not check.allows("alpha") and not check.allows(None)
    assert b"alpha" not in repr(vars(check)).encode()


def test_tokens_come_from_env_or_file_forms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOOR_TOKENS", "s3cret\n")
    assert TokenCheck("env:DOOR_TOKENS").allows("Bearer s3cret")
    (tmp_path / "t").write_text("x1\n")
    assert TokenCheck(f"file:{tmp_path / 't'}").allows("Bearer x1")
    with pytest.raises(ConfigError, match="holds no token"):
        (tmp_path / "empty").write_text("\n# none\n")
        TokenCheck(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="NOPE is not set"):
        Secret("env:NOPE", "--tls-key").read()
