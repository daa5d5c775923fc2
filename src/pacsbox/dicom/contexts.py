"""Presentation contexts we accept as an association acceptor (PS3.7 §D.3.3.2, PS3.8 §9.3.2.2).

The Storage SCP accepts every storage SOP class pynetdicom knows (SPEC A1) with every transfer
syntax of SPEC A2. We store the bytes as received and never decode pixel data on receive, so
compressed syntaxes are accepted whether or not a codec is installed.

Transfer-syntax choice per context (SPEC A2): the configured preferred syntax when the requestor
proposed it; otherwise the first syntax in the requestor's own order that we support.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.uid import UID
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification

#: SPEC A2, in the order we would pick them if a requestor's order gave no hint.
RECEIVE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Process 14 SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile @ Main Level
    "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile @ High Level
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile / Level 5.1
)

STORAGE_SOP_CLASSES: frozenset[str] = frozenset(
    str(cx.abstract_syntax) for cx in AllStoragePresentationContexts
)
VERIFICATION_SOP_CLASS = str(Verification)

#: Query/Retrieve information models (PS3.4 §C.6): C-FIND, C-MOVE and C-GET per model.
QR_FIND_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.2.1.1": "PATIENT",  # Patient Root Q/R Information Model - FIND
    "1.2.840.10008.5.1.4.1.2.2.1": "STUDY",  # Study Root Q/R Information Model - FIND
    "1.2.840.10008.5.1.4.1.2.3.1": "PATIENT_STUDY_ONLY",  # Patient/Study Only (retired)
}
QR_MOVE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.2.1.2": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.2.2": "STUDY",
    "1.2.840.10008.5.1.4.1.2.3.2": "PATIENT_STUDY_ONLY",
}
QR_GET_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.2.1.3": "PATIENT",
    "1.2.840.10008.5.1.4.1.2.2.3": "STUDY",
    "1.2.840.10008.5.1.4.1.2.3.3": "PATIENT_STUDY_ONLY",
}
QR_SOP_CLASSES: frozenset[str] = frozenset(
    {*QR_FIND_SOP_CLASSES, *QR_MOVE_SOP_CLASSES, *QR_GET_SOP_CLASSES}
)
#: Identifiers (command data sets) are small: the uncompressed syntaxes only (PS3.5 §10).
QR_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
)

#: Abstract syntaxes the Storage/Verification SCP accepts.
ACCEPTED_ABSTRACT_SYNTAXES: frozenset[str] = STORAGE_SOP_CLASSES | {VERIFICATION_SOP_CLASS}
#: Everything any of our SCPs accepts.
ALL_ABSTRACT_SYNTAXES: frozenset[str] = ACCEPTED_ABSTRACT_SYNTAXES | QR_SOP_CLASSES


def _syntaxes_for(abstract: str) -> tuple[str, ...]:
    return QR_TRANSFER_SYNTAXES if abstract in QR_SOP_CLASSES else RECEIVE_TRANSFER_SYNTAXES


def default_contexts() -> list[PresentationContext]:
    """Supported contexts for the AE as a whole (used when no per-association list is built)."""
    out = []
    for uid in sorted(ALL_ABSTRACT_SYNTAXES):
        cx = PresentationContext()
        cx.abstract_syntax = UID(uid)
        cx.transfer_syntax = [UID(ts) for ts in _syntaxes_for(uid)]
        if uid in STORAGE_SOP_CLASSES:
            # SCP/SCU role selection (PS3.7 §D.3.3.4): C-GET sub-operations go back to the
            # requestor on its own association, so we accept whatever roles it proposes.
            cx.scu_role = True
            cx.scp_role = True
        out.append(cx)
    return out


def contexts_for_request(
    requested: Iterable[PresentationContext], preferred: str | None
) -> list[PresentationContext]:
    """Acceptor contexts for one association, ordered so pynetdicom picks what SPEC A2 says.

    pynetdicom chooses the first syntax of the *acceptor's* list that the requestor proposed,
    so for each requested abstract syntax we list the preferred syntax first and then the
    requestor's own syntaxes in the requestor's order.
    """
    by_abstract: dict[str, list[str]] = {}
    for rq in requested:
        abstract = str(rq.abstract_syntax)
        if abstract not in ALL_ABSTRACT_SYNTAXES:
            continue
        order = by_abstract.setdefault(abstract, [])
        ours = _syntaxes_for(abstract)
        for ts in rq.transfer_syntax:
            ts = str(ts)
            if ts in ours and ts not in order:
                order.append(ts)
    out = []
    for abstract, order in by_abstract.items():
        if not order:
            continue
        if preferred and preferred in order:
            order.remove(preferred)
            order.insert(0, preferred)
        cx = PresentationContext()
        cx.abstract_syntax = UID(abstract)
        cx.transfer_syntax = [UID(ts) for ts in order]
        if abstract in STORAGE_SOP_CLASSES:
            cx.scu_role = True  # C-GET role selection, see default_contexts()
            cx.scp_role = True
        out.append(cx)
    return out
