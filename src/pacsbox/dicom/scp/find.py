"""Query/Retrieve C-FIND SCP (PS3.4 Annex C, SPEC B1–B2) on top of ``archive.query``.

Protocol code only: the identifier (PS3.4 §C.4.1.1.3) becomes a :class:`~pacsbox.archive.
query.Query`, the engine's rows become pending responses, streamed one by one (PS3.7
§9.1.2). Models: Patient Root, Study Root and Patient/Study Only (PS3.4 §C.6.1–C.6.3), all
their levels, hierarchical or relational (§C.4.1.2). SOP Class Extended Negotiation
(§C.5.1.1, PS3.7 §D.3.3.5): relational-queries and combined date-time matching are accepted;
fuzzy semantic matching of person names and timezone adjustment are not.

Statuses (§C.4.1.1.4): FF00 per match, 0000 at the end, FE00 after a C-CANCEL, A900 for an
identifier that does not fit the model (missing/invalid Query/Retrieve Level, keys below the
level in a hierarchical query, bad values or VRs), 0124 when the calling AE may not query
(``allow_query`` off in the AE registry), A700 when the index cannot be read, C000 for
anything unexpected. Failure responses carry an Error Comment (and Offending Element).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom import evt
from pynetdicom.events import Event
from sqlalchemy.exc import OperationalError

from pacsbox.archive.query import (
    KeyMatch,
    Level,
    Model,
    Query,
    QueryEngine,
    QueryError,
    Row,
    match_for,
)
from pacsbox.dicom.contexts import QR_FIND_SOP_CLASSES

if TYPE_CHECKING:
    from pacsbox.app import Archive

log = logging.getLogger("pacsbox.dicom.find")

STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_NOT_AUTHORIZED = 0x0124
STATUS_BAD_IDENTIFIER = 0xA900
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_UNABLE_TO_PROCESS = 0xC000

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
#: Elements of an identifier that are not keys (PS3.4 §C.4.1.1.3.1).
_NOT_KEYS = {SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL, 0x00080053}  # + Q/R View
#: Text VRs whose values depend on the Specific Character Set.
_TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC"}
_VR_ALTERNATIVES = {"US or SS": {"US", "SS"}, "OB or OW": {"OB", "OW"}, "US or OW": {"US", "OW"}}


def _failure(status: int, comment: str, tag: int | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    if tag:
        ds.OffendingElement = [tag]
    return ds


# -- identifier → query -------------------------------------------------------------------


def _element_value(elem: DataElement) -> Any:
    """A decoded identifier element as the engine wants it (str / list of str / items)."""
    if elem.VR == "SQ":
        return [
            [
                _key_of(sub)
                for sub in item
                if sub.tag not in _NOT_KEYS and not sub.tag.is_private and keyword_for_tag(sub.tag)
            ]
            for item in elem.value
        ]
    value = elem.value
    if value is None or value == b"" or value == "":
        return None
    if isinstance(value, bytes | bytearray):
        raise QueryError(
            f"{elem.keyword or elem.tag}: binary values cannot be matched", tag=elem.tag
        )
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return str(value)


def _check_vr(elem: DataElement) -> None:
    try:
        expected = dictionary_VR(elem.tag)
    except KeyError:
        return
    allowed = _VR_ALTERNATIVES.get(expected, {expected})
    if elem.VR not in allowed and elem.VR != "UN":
        raise QueryError(
            f"{elem.keyword}: VR {elem.VR} where the dictionary says {expected}", tag=elem.tag
        )


def _key_of(elem: DataElement) -> KeyMatch:
    _check_vr(elem)
    keyword = elem.keyword or keyword_for_tag(elem.tag)
    if not keyword:
        raise QueryError(f"private or unknown key {elem.tag}", tag=elem.tag)
    return match_for(keyword, _element_value(elem), vr=dictionary_VR(elem.tag))


def _requested_charset(identifier: Dataset) -> list[str]:
    value = identifier.get("SpecificCharacterSet")
    if not value:
        return []
    return [str(v) for v in value] if isinstance(value, MultiValue | list) else [str(value)]


def build_query(
    identifier: Dataset,
    model: Model,
    *,
    relational: bool,
    pn_case_insensitive: bool,
    combined_datetime: bool = False,
) -> tuple[Query, list[DataElement]]:
    """(query, the identifier's elements to answer) for a C-FIND identifier."""
    level_text = identifier.get("QueryRetrieveLevel")
    if level_text in (None, ""):
        raise QueryError("Query/Retrieve Level (0008,0052) is missing", tag=QUERY_RETRIEVE_LEVEL)
    level = Level.parse(str(level_text))
    keys: list[KeyMatch] = []
    requested: list[DataElement] = []
    for elem in identifier:
        if elem.tag.group in (0x0000, 0x0002) or elem.tag in _NOT_KEYS:
            continue
        requested.append(elem)
        if elem.tag.is_private or not keyword_for_tag(elem.tag):
            continue  # returned zero-length
        keys.append(_key_of(elem))
    query = Query(
        level,
        keys,
        model=model,
        relational=relational,
        pn_case_insensitive=pn_case_insensitive,
        combined_datetime=combined_datetime,
    )
    query.validate()
    return query, requested


# -- row → response identifier --------------------------------------------------------------


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v)
    elif isinstance(value, dict):  # DICOM JSON element
        for v in value.get("Value", []) or []:
            if isinstance(v, dict):
                if v.get("vr") is None and any(k[:1].isdigit() for k in v):
                    for sub in v.values():
                        yield from _texts(sub)
                else:
                    yield from (str(x) for x in v.values())
            else:
                yield str(v)


def _encodable(text: str, codecs: list[str]) -> bool:
    try:
        text.encode(codecs[0])
        return True
    except (UnicodeEncodeError, LookupError):
        pass
    for ch in text:  # ISO 2022: code extensions may switch per character run
        for codec in codecs:
            try:
                ch.encode(codec)
                break
            except (UnicodeEncodeError, LookupError):
                continue
        else:
            return False
    return True


@functools.lru_cache(maxsize=64)
def _codecs_for(requested: tuple[str, ...]) -> list[str]:
    """Python codecs of a Specific Character Set value (computed once per distinct value)."""
    try:
        return list(convert_encodings(list(requested)))
    except Exception:
        return []


def response_charset(rows_text: list[str], requested: list[str]) -> list[str]:
    """Specific Character Set for a response (PS3.4 §C.4.1.1.3.1, PS3.5 §6.1): none for plain
    ASCII (or the requested one), the requested one when it can encode every value, else
    ISO_IR 192 (UTF-8)."""
    if all(t.isascii() for t in rows_text):
        return requested
    if requested:
        codecs = _codecs_for(tuple(requested))
        if codecs and all(_encodable(t, codecs) for t in rows_text):
            return requested
    return ["ISO_IR 192"]


def _set(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    if isinstance(value, dict):  # DICOM JSON element (attributes read from stored JSON)
        try:
            parsed = Dataset.from_json({f"{tag:08X}": value})
            ds[tag] = parsed[tag]
            return
        except Exception:
            value = None
    if vr == "SQ":
        ds.add_new(tag, "SQ", DicomSequence([]))
        return
    if value is None or value == "" or value == []:
        ds.add_new(tag, vr, None)
        return
    if isinstance(value, int) and vr in ("IS", "DS", "CS", "LO", "SH"):
        value = str(value)
    elif isinstance(value, str) and vr in ("US", "SS", "UL", "SL", "FL", "FD"):
        try:
            value = float(value) if vr in ("FL", "FD") else int(value)
        except ValueError:
            value = None
    ds.add_new(tag, vr, value)


class FindSCP:
    """Binds C-FIND requests on the Q/R information models to ``archive.query``."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.settings = archive.settings
        self.engine = QueryEngine(archive.engine)

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_C_FIND, self.handle_find),
            (evt.EVT_SOP_EXTENDED, self.handle_sop_extended),
        ]

    # -- SOP Class Extended Negotiation (PS3.4 §C.5.1.1) ----------------------------------
    def handle_sop_extended(self, event: Event) -> dict[str, bytes]:
        """Answer the Q/R FIND extended negotiation: byte 1 relational-queries (accepted
        when ``relational_queries``), byte 2 combined date-time matching (accepted), bytes
        3–4 fuzzy person-name matching and timezone adjustment (not supported)."""
        out: dict[str, bytes] = {}
        for uid, info in (event.app_info or {}).items():
            if str(uid) not in QR_FIND_SOP_CLASSES or not info:
                continue
            ours = [1 if self.settings.relational_queries else 0, 1, 0, 0]
            out[uid] = bytes(
                ours[i] if i < len(ours) and info[i] == 1 else 0 for i in range(min(len(info), 4))
            )
        return out

    def _negotiated(self, event: Event, sop_class: str) -> tuple[bool, bool]:
        """(relational, combined date-time) for this association and model."""
        relational = self.settings.relational_queries
        info = None
        try:
            info = event.assoc.requestor.sop_class_extended.get(sop_class)
        except Exception:
            info = None
        if info:
            relational = relational and info[0] == 1
            return relational, len(info) > 1 and info[1] == 1
        return relational, False

    # -- C-FIND -------------------------------------------------------------------------
    def handle_find(self, event: Event) -> Iterator[tuple[Any, Any]]:
        """pynetdicom's EVT_C_FIND handler (associations the lean acceptor does not serve)."""
        sop_class = str(event.request.AffectedSOPClassUID)
        relational, combined = self._negotiated(event, sop_class)
        yield from self.answer(
            event.assoc.requestor.ae_title.strip(),
            sop_class,
            lambda: event.identifier,
            relational=relational,
            combined=combined,
            is_cancelled=lambda: bool(event.is_cancelled),
        )

    def answer(
        self,
        calling: str,
        sop_class: str,
        identifier_of: Any,
        *,
        relational: bool,
        combined: bool,
        is_cancelled: Any,
        encode: Any = None,
    ) -> Iterator[tuple[Any, Any]]:
        """The C-FIND responses (PS3.4 §C.4.1.3.1) to one request, as (status, identifier)
        pairs: pending ones with the matches, then exactly one final status. Shared by the
        pynetdicom handler and the lean acceptor (``dicom/find_responder.py``).
        ``identifier_of()`` returns the request identifier (it may raise when it cannot be
        decoded); ``is_cancelled()`` says whether a C-CANCEL-RQ arrived (PS3.7 §9.3.2.3).
        ``encode(query, requested, row, charset)``, when given, replaces :meth:`response`
        for pending identifiers (the lean acceptor yields encoded bytes)."""
        build = encode or self.response
        started = time.monotonic()
        try:
            entry = self.archive.registry.get(calling)
        except Exception as exc:
            log.error("C-FIND from %s: AE registry unavailable: %s", calling, exc)
            yield _failure(STATUS_OUT_OF_RESOURCES, "AE registry unavailable"), None
            return
        if entry is None or not entry.enabled or not entry.allow_query:
            log.warning("C-FIND from %s refused: not allowed to query", calling)
            yield _failure(STATUS_NOT_AUTHORIZED, f"AE {calling} is not allowed to query"), None
            return
        model_name = QR_FIND_SOP_CLASSES.get(sop_class)
        if model_name is None:
            yield _failure(0x0122, "SOP class not supported"), None
            return
        model = Model(model_name)
        try:
            identifier = identifier_of()
            query, requested = build_query(
                identifier,
                model,
                relational=relational,
                pn_case_insensitive=self.settings.pn_case_insensitive,
                combined_datetime=combined,
            )
            charset_rq = _requested_charset(identifier)
        except QueryError as exc:
            log.warning("C-FIND from %s refused (%04X): %s", calling, exc.status, exc)
            yield _failure(exc.status, str(exc), exc.tag), None
            return
        except Exception as exc:
            log.warning("C-FIND from %s: identifier cannot be decoded: %s", calling, exc)
            yield _failure(STATUS_UNABLE_TO_PROCESS, f"cannot decode identifier: {exc}"), None
            return

        rows = self.engine.run(query)
        count = 0
        outcome = "stopped by the peer or the association"
        try:
            for row in rows:
                if is_cancelled():
                    outcome = "cancelled"
                    yield STATUS_CANCEL, None
                    return
                yield STATUS_PENDING, build(query, requested, row, charset_rq)
                count += 1
            if is_cancelled():
                outcome = "cancelled"
                yield STATUS_CANCEL, None
                return
            outcome = "completed"
        except QueryError as exc:
            outcome = "refused"
            yield _failure(exc.status, str(exc), exc.tag), None
            return
        except OperationalError as exc:
            outcome = "failed"
            log.error("C-FIND from %s: index unavailable: %s", calling, exc)
            yield _failure(STATUS_OUT_OF_RESOURCES, "index database unavailable"), None
            return
        except Exception as exc:
            outcome = "failed"
            log.exception("C-FIND from %s failed", calling)
            yield (
                _failure(STATUS_UNABLE_TO_PROCESS, f"unable to process: {type(exc).__name__}"),
                None,
            )
            return
        finally:
            rows.close()
            log.info(
                "C-FIND from %s %s %s level: %d matches, %s in %.0f ms",
                calling,
                model.value,
                query.level.name,
                count,
                outcome,
                (time.monotonic() - started) * 1000,
            )

    def response(
        self, query: Query, requested: list[DataElement], row: Row, charset_rq: list[str]
    ) -> Dataset:
        """The pending response's identifier: every requested key (zero-length when the
        index has no value for it), the unique keys of the levels down to the query level,
        Query/Retrieve Level, Retrieve AE Title, Instance Availability and the Specific
        Character Set that encodes the values."""
        values = row.values
        texts = [t for v in values.values() for t in _texts(v)]
        ds = Dataset()
        charset = response_charset(texts, charset_rq)
        if charset:
            ds.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
        ds.QueryRetrieveLevel = query.level.name
        done = {SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL}
        for elem in requested:
            tag = int(elem.tag)
            if tag in done:
                continue
            done.add(tag)
            keyword = elem.keyword
            if tag == RETRIEVE_AE_TITLE:
                ds.RetrieveAETitle = self.settings.ae_title
            elif tag == INSTANCE_AVAILABILITY:
                ds.InstanceAvailability = "ONLINE"
            elif keyword and keyword in values:
                vr = elem.VR if elem.VR != "UN" else dictionary_VR(tag)
                _set(ds, tag, vr, values[keyword])
            else:
                vr = elem.VR
                if vr == "UN" and keyword:
                    vr = dictionary_VR(tag)
                _set(ds, tag, vr, None)
        for keyword, value in values.items():  # unique keys of the levels, not asked for
            if keyword not in ds:
                tag = int(tag_for_keyword(keyword) or 0)
                _set(ds, tag, dictionary_VR(tag), value)
        if RETRIEVE_AE_TITLE not in done:
            ds.RetrieveAETitle = self.settings.ae_title
        if INSTANCE_AVAILABILITY not in done:
            ds.InstanceAvailability = "ONLINE"
        return ds
