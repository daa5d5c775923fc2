"""AE registry access decisions (SPEC A6)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("title", ["", "   ", "BAD\\TITLE", "TOO_LONG_AE_TITLE_X", "TAB\tAE"])
def test_permissive_mode_never_accepts_or_registers_invalid_titles(sqlite_archive, title):
    registry = sqlite_archive.registry
    decision = registry.check_calling(title, "127.0.0.1", permissive=True, permissive_enabled=True)
    assert not decision.accepted and not decision.registered
    assert registry.list() == []


def test_permissive_mode_registers_valid_unknown_title(sqlite_archive):
    registry = sqlite_archive.registry
    decision = registry.check_calling(
        "NEWCOMER", "10.0.0.7", permissive=True, permissive_enabled=False
    )
    assert decision.accepted and decision.registered
    entry = registry.get("NEWCOMER")
    assert entry is not None and entry.auto_registered and not entry.enabled
    assert entry.host == "10.0.0.7"
    # registered disabled: the next association is refused
    assert not registry.check_calling(
        "NEWCOMER", "10.0.0.7", permissive=True, permissive_enabled=False
    ).accepted
