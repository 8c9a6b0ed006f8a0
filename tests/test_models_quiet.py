"""Resolving a name in other case looks up the name meant without warning of it, and without touching what is
warned of for that name when another caller asks for it meanwhile (another thread, or code the lookup runs)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from qwenvl import models


def test_the_name_meant_is_warned_of_to_a_caller_who_asks_for_it_meanwhile(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    meant = f"acme-vl-{uuid.uuid4().hex[:8]}"  # unknown in any case: looked up by its lower case
    seen: list[bool] = []
    guess = models._guess

    def meanwhile(name: str, *args: Any, **kwargs: Any) -> models.ModelInfo:
        if name == meant and not seen:  # inside the lookup of the name meant: another caller asks for it
            seen.append(True)
            caplog.clear()
            other = models.model_info(meant)
            assert not other.known
            assert any(meant in r.getMessage() for r in caplog.records), "the other caller was not warned"
        return guess(name, *args, **kwargs)

    monkeypatch.setattr(models, "_guess", meanwhile)  # met only while the name meant is resolved
    with caplog.at_level(logging.WARNING, logger="qwenvl"):
        info = models.model_info(meant.upper())
    assert seen and not info.known and info.name == meant.upper()
    assert any(meant.upper() in r.getMessage() for r in caplog.records)  # the name given is warned of, as given


def test_a_name_in_other_case_warns_only_of_itself(caplog: pytest.LogCaptureFixture) -> None:
    meant = f"acme-vl-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING, logger="qwenvl"):
        models.model_info(meant.upper())
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(meant.upper()), said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qwenvl"):
        models.model_info(meant)  # asked for itself later: warned of once, as any unknown name
    assert next(r.getMessage() for r in caplog.records).startswith(meant + " ")
