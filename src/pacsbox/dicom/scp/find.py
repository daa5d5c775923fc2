"""Query/Retrieve C-FIND SCP (PS3.4 Annex C, SPEC B1–B2).

Placeholder wiring: the handler answers C000 until the query engine lands (issue 3).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pynetdicom import evt
from pynetdicom.events import Event

if TYPE_CHECKING:
    from pacsbox.app import Archive


class FindSCP:
    """Binds C-FIND requests on the Q/R information models to ``archive.query``."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive

    def handlers(self) -> list[tuple[Any, Any]]:
        return [(evt.EVT_C_FIND, self.handle_find)]

    def handle_find(self, event: Event) -> Iterator[tuple[int, Any]]:
        yield 0xC000, None
