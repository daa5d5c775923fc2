"""Forwarding a stored study to a registered AE (SPEC E4 "forward"): the Storage SCU side of
PS3.4 Annex B on one association, with the same sending rules as C-MOVE sub-operations
(stored bytes when the destination takes the stored transfer syntax, else transcoded;
``dicom/scp/retrieve.py`` :func:`send_stored`)."""

from __future__ import annotations

from typing import Any

from pacsbox.archive.retrieve import RetrieveRequest, RetrieveSelection
from pacsbox.dicom.scp.retrieve import NotSent, connect_destination, send_stored
from pacsbox.dicom.storage_requestor import PeerAborted

#: errors listed in a forward's answer (the counts cover all)
MAX_LISTED_ERRORS = 100


def forward_study(archive: Any, study_uid: str, dest: Any) -> dict[str, Any]:
    """C-STORE every instance of a study to ``dest`` (an AEEntry) on one association.

    Returns ``{"sent", "failed", "warnings", "errors"}``; raises ``AssociationFailed`` (or
    ``OSError``/``ssl.SSLError``) when no association could be established.
    """
    selection = RetrieveSelection(
        archive.engine, archive.store.root, RetrieveRequest("STUDY", study_uids=[study_uid])
    )
    pairs = selection.sop_classes()
    if not pairs:  # deleted meanwhile: nothing to send
        return {"sent": 0, "failed": 0, "warnings": 0, "errors": []}
    requestor, by_class = connect_destination(archive.settings, dest, pairs)
    sent = failed = warnings = 0
    errors: list[str] = []

    def fail(uid: str, why: str) -> None:
        nonlocal failed
        failed += 1
        if len(errors) < MAX_LISTED_ERRORS:
            errors.append(f"{uid}: {why}")

    broken = ""
    message_id = 0
    try:
        for item in selection.iter():
            if broken:
                fail(item.sop_instance_uid, broken)
                continue
            message_id = message_id % 65535 + 1
            try:
                result = send_stored(requestor, by_class, item, message_id)
            except PeerAborted as exc:
                requestor.abort()
                broken = f"association ended: {exc}"
                fail(item.sop_instance_uid, broken)
                continue
            except NotSent as exc:
                fail(item.sop_instance_uid, str(exc))
                continue
            if result.status == 0:
                sent += 1
            elif result.status & 0xF000 == 0xB000:
                warnings += 1
            else:
                fail(item.sop_instance_uid, f"status {result.status:04X} {result.comment}".strip())
    finally:
        requestor.release()
    return {"sent": sent, "failed": failed, "warnings": warnings, "errors": errors}
