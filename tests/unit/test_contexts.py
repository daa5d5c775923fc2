"""dicom.contexts: which syntax is accepted per context (SPEC A2)."""

from __future__ import annotations

from pynetdicom.presentation import build_context

from pacsbox.dicom.contexts import (
    QR_SOP_CLASSES,
    RECEIVE_TRANSFER_SYNTAXES,
    STORAGE_SOP_CLASSES,
    contexts_for_request,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT, IMPLICIT, JPEGLS = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.80"


def test_every_storage_class_and_syntax() -> None:
    assert len(STORAGE_SOP_CLASSES) >= 170
    assert len(RECEIVE_TRANSFER_SYNTAXES) == 25
    assert "1.2.840.10008.1.2.4.203" in RECEIVE_TRANSFER_SYNTAXES  # HTJ2K
    assert "1.2.840.10008.1.2.4.108" in RECEIVE_TRANSFER_SYNTAXES  # HEVC Main 10


def test_requestor_order_without_preference() -> None:
    rq = [build_context(CT, [IMPLICIT, EXPLICIT, "1.2.3.4.unknown"])]
    out = contexts_for_request(rq, None)
    assert [str(t) for t in out[0].transfer_syntax] == [IMPLICIT, EXPLICIT]


def test_preferred_first_when_proposed() -> None:
    rq = [build_context(CT, [EXPLICIT, IMPLICIT, JPEGLS])]
    out = contexts_for_request(rq, JPEGLS)
    assert str(out[0].transfer_syntax[0]) == JPEGLS
    out = contexts_for_request([build_context(CT, [EXPLICIT])], JPEGLS)
    assert [str(t) for t in out[0].transfer_syntax] == [EXPLICIT]


def test_unknown_abstract_syntax_not_accepted() -> None:
    assert contexts_for_request([build_context("1.2.3.4.5", [EXPLICIT])], None) == []


def test_conformance_statement_lists_what_we_accept() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "conformance.md").read_text()
    missing = [
        uid
        for uid in STORAGE_SOP_CLASSES | set(RECEIVE_TRANSFER_SYNTAXES) | QR_SOP_CLASSES
        if f"| {uid} |" not in text
    ]
    assert not missing, f"docs/conformance.md does not list {missing}"
