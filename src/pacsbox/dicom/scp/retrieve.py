"""Query/Retrieve C-MOVE and C-GET SCP (PS3.4 Annex C.4.2–C.4.3, SPEC B3–B4).

Placeholder wiring: the handlers answer C000 until retrieval lands (issue 3).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pynetdicom import evt
from pynetdicom.events import Event

if TYPE_CHECKING:
    from pacsbox.app import Archive


class RetrieveSCP:
    """Binds C-MOVE/C-GET requests to the archive's instances and the AE registry."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_C_MOVE, self.handle_move), (evt.EVT_C_GET, self.handle_get)]

    def handle_move(self, event: Event) -> Iterator[Any]:
        yield None, None  # no destination: pynetdicom answers A801

    def handle_get(self, event: Event) -> Iterator[Any]:
        yield 0
