"""Storage SCP (PS3.4 Annex B) and Verification SCP (PS3.4 Annex A) event handlers.

Thin protocol code: the C-STORE handler hands the data set bytes exactly as received (no decode,
no copy) to the archive's ingest path and copies its refusal status into the response
(PS3.4 §B.2.3, SPEC A5).
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event

from pacsbox.archive.audit import StoreBatch
from pacsbox.archive.ingest import Ingest, IngestRefused

log = logging.getLogger("pacsbox.dicom.store")


def status(code: int, comment: str | None = None) -> Dataset:
    """A status data set; Error Comment (0000,0902) is LO, at most 64 characters."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds


def handle_echo(event: Event) -> int:
    """C-ECHO: success (PS3.7 §9.1.5)."""
    return 0x0000


class StorageSCP:
    """Binds C-STORE requests to an :class:`Ingest`."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def _batch(self, assoc: Any, calling: str) -> StoreBatch:
        """The association's store audit batch, written when its connection closes."""
        batch = getattr(assoc, "pacsbox_audit", None)
        if batch is None:
            address = getattr(assoc.requestor, "address", "") or ""
            batch = StoreBatch(self.ingest.audit, f"AE:{calling}", str(address), "C-STORE")
            assoc.pacsbox_audit = batch
            assoc.bind(evt.EVT_CONN_CLOSE, lambda _event: batch.flush())
        return batch

    def handle_store(self, event: Event) -> Dataset | int:
        request: Any = event.request
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip() if assoc.requestor.ae_title else ""
        batch = self._batch(assoc, calling)
        buffer = request.DataSet.getbuffer()
        try:
            stored = self.ingest.store_dataset(
                buffer,
                str(event.context.transfer_syntax),
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                source_ae=calling,
            )
        except IngestRefused as exc:
            log.warning(
                "refused %s from %s: %04X %s",
                request.AffectedSOPInstanceUID,
                calling,
                exc.status,
                exc.message,
            )
            batch.failed("", f"{request.AffectedSOPInstanceUID}: {exc.status:04X} {exc.message}")
            return status(exc.status, exc.message)
        except Exception as exc:  # never let a bug kill the association silently
            log.exception("C-STORE of %s failed", request.AffectedSOPInstanceUID)
            batch.failed("", f"{request.AffectedSOPInstanceUID}: C000 {type(exc).__name__}")
            return status(0xC000, f"cannot process: {type(exc).__name__}")
        finally:
            buffer.release()
        batch.stored(stored.study_instance_uid, stored.outcome, stored.size)
        counter = getattr(assoc, "pacsbox_stored", 0)
        assoc.pacsbox_stored = counter + 1  # type: ignore[attr-defined]
        log.info(
            "stored %s class=%s ts=%s size=%d from=%s study=%s %s",
            stored.sop_instance_uid,
            stored.sop_class_uid,
            stored.transfer_syntax_uid,
            stored.size,
            calling,
            stored.study_instance_uid,
            stored.outcome,
        )
        return 0x0000
