"""Read what the index needs from an encoded data set, stopping before Pixel Data.

Input is the data set exactly as received (PS3.5 §7, encoded in the negotiated transfer
syntax) or a Part-10 file (PS3.10 §7). Nothing after (7FE0,0010) is parsed and pixel data is
never decoded. The result carries the index columns and the DICOM JSON model (PS3.18 §F.2) of
the non-bulk top-level attributes.
"""

from __future__ import annotations

import binascii
import io
import json
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pydicom.valuerep
from pydicom import config as pydicom_config
from pydicom import hooks as pydicom_hooks
from pydicom.charset import decode_bytes, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import (
    ENCODED_VR,
    EXPLICIT_VR_LENGTH_32,
    convert_encodings,
    dcmread,
    read_dataset,
    read_sequence,
)
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import TEXT_VR_DELIMS
from pydicom.values import convert_PN, convert_string

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
PIXEL_DATA = Tag(0x7FE0, 0x0010)
_PIXEL_DATA_INT = 0x7FE00010
#: Values longer than this are left out of the stored JSON (they are bulk data).
BULK_THRESHOLD = 1024

pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


class HeaderError(ValueError):
    """The bytes are not a DICOM data set we can index (maps to C000 / A900)."""


def _stop_at_pixels(tag: Any, vr: Any, length: Any) -> bool:
    return int(tag) >= _PIXEL_DATA_INT


def _text_value(value: Any, maxlen: int) -> str:
    """Index text of a pydicom element value (multi-values joined with a backslash)."""
    if value is None or value == "":
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:maxlen]


def _int_value(value: Any) -> int | None:
    """Index integer of a pydicom element value (first of a multi-value; None if not one)."""
    if value is None or value == "":
        return None
    try:
        if type(value).__name__ == "MultiValue":
            value = value[0]
        return int(value)
    except (TypeError, ValueError):
        return None


def _text(ds: Dataset, keyword: str, maxlen: int = 64) -> str:
    return _text_value(ds.get(keyword), maxlen)


def _int(ds: Dataset, keyword: str) -> int | None:
    return _int_value(ds.get(keyword))


@dataclass
class InstanceHeader:
    """Index attributes of one instance (names follow the DICOM keywords)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient: dict[str, str] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)
    specific_character_set: str = ""
    attributes_json: str = "{}"


def _bulk(_elem: Any) -> str:
    return ""  # a BulkDataURI is added by WADO-RS when metadata is served


def _json_model(ds: Dataset) -> str:
    """The JSON model through pydicom's own conversion (used when pydicom is configured
    in a way the fast path does not reproduce; the fast path must give the same result)."""
    try:
        model = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=_bulk)
    except Exception:  # a malformed element must not stop indexing; keep what converts
        return _json_model_by_element(ds)
    return _dump_model(model)


def _json_model_by_element(ds: Dataset) -> str:
    """The JSON model of the elements that convert, each on its own."""
    model = {}
    for elem in ds:
        try:
            sub = Dataset()
            sub.add(elem)
            model.update(sub.to_json_dict(BULK_THRESHOLD, _bulk))
        except Exception:
            continue
    return _dump_model(model)


def _dump_model(model: dict[str, Any]) -> str:
    # Drop bulk placeholders: metadata consumers get BulkDataURIs from WADO-RS.
    for value in model.values():
        if value.get("BulkDataURI") == "":
            del value["BulkDataURI"]
    return json.dumps(model, separators=(",", ":"), ensure_ascii=False)


# --- Fast path -----------------------------------------------------------------------------
#
# pydicom turns every raw element into a DataElement (hooks, value classes such as DSfloat,
# PersonName, MultiValue, UID) before DataElement.to_json_dict renders it; that was most of
# the CPU spent per received instance. The fast path renders the JSON model (and the index
# values) straight from the raw bytes, reproducing pydicom 3's conversion rules VR by VR
# (pydicom.values.convert_*, DataElement.to_json_dict, jsonrep.convert_to_python_number).
# Whatever it does not reproduce exactly goes through pydicom for that one element:
# sequences (their items come back here), ambiguous VRs ("US or SS", ...), UN in explicit
# VR, unknown public tags in implicit VR, DS/IS strings that are not plain numbers, binary
# values of a wrong length, LUT descriptors, deferred values, elements already converted.
# tests/unit/test_header_fast.py checks both give identical results on pydicom's test files
# and on hand-made edge cases.

_DS_ITEM = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")
#: IS items pydicom makes an int of (≤ 15 digits: float(value) is exact, see IS.__new__)
_IS_ITEM = re.compile(r" *[+-]?[0-9]{1,15} *")
#: pydicom inlines binary values up to this many bytes (the base64 text then fits the
#: threshold); longer ones get a BulkDataURI
_INLINE_MAX = (BULK_THRESHOLD // 4) * 3
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
_NUMBER_CODES = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
_NUMBER_CODES.update({"SV": "q", "UV": "Q"})
_NUMBER_SIZE = {"H": 2, "h": 2, "L": 4, "l": 4, "f": 4, "d": 8, "q": 8, "Q": 8}
_SPECIFIC_CHARACTER_SET = 0x00080005
_UNDEFINED_LENGTH = 0xFFFFFFFF

try:  # the VR pydicom gives a private tag in implicit VR (private dictionary / creator)
    _private_vr_for_tag: Any = pydicom_hooks._private_vr_for_tag
except AttributeError:  # pragma: no cover - pydicom internals moved: use pydicom for those
    _private_vr_for_tag = None

_dictionary_vrs: dict[int, str | None] = {}
_json_keys: dict[int, str] = {}
_structs: dict[tuple[str, int], Any] = {}

#: handler result: the JSON attribute and, when asked for, the index value
_Result = tuple[dict[str, Any], "_Index | None"] | None


def _dictionary_vr(tag: int) -> str | None:
    """pydicom's dictionary_VR, cached; None for a tag it does not know."""
    try:
        return _dictionary_vrs[tag]
    except KeyError:
        pass
    try:
        vr: str | None = dictionary_VR(tag)
    except KeyError:
        vr = None
    if len(_dictionary_vrs) < 20000:
        _dictionary_vrs[tag] = vr
    return vr


def _json_key(tag: int) -> str:
    key = f"{tag:08X}"
    if len(_json_keys) < 20000:
        _json_keys[tag] = key
    return key


class _Index:
    """What the index needs of one element, mirroring the pydicom value it stands for.

    kind "s": the strings (str of each item), "n": numbers of a binary VR (a list when more
    than one), "ds"/"is": the stripped DS/IS strings, "pn": the PersonName strings, "py": the
    pydicom value itself.
    """

    __slots__ = ("items", "kind")

    def __init__(self, kind: str, items: Any) -> None:
        self.kind = kind
        self.items = items

    def text(self, maxlen: int) -> str:
        if self.kind == "py":
            return _text_value(self.items, maxlen)
        return "\\".join(map(str, self.items)).strip()[:maxlen]

    def integer(self) -> int | None:
        kind, items = self.kind, self.items
        if kind == "py":
            return _int_value(items)
        if not items or kind == "pn":  # int(PersonName) is a TypeError
            return None
        if kind == "n" and len(items) > 1:  # a list of numbers: int(list) is a TypeError
            return None
        try:
            if kind == "ds":
                return int(float(items[0]))  # int(DSfloat)
            return int(items[0])
        except (TypeError, ValueError):
            return None


_EMPTY = _Index("s", [])


class _Context:
    """The data set being rendered: whether it is the top level, its text encodings."""

    __slots__ = ("_encodings", "_key", "ds", "top")

    def __init__(self, ds: Dataset, top: bool) -> None:
        self.ds = ds
        self.top = top
        self._encodings: list[str] | None = None
        self._key: tuple[str, ...] | None = None

    def encodings(self, tag: int) -> list[str]:
        """The Python encodings pydicom decodes text with (see Dataset.__getitem__)."""
        if tag == _SPECIFIC_CHARACTER_SET:
            return [default_encoding]
        if self._encodings is None:
            ds = self.ds
            encodings = ds.original_character_set or ds._character_set
            if not encodings:
                encodings = [default_encoding]
            elif isinstance(encodings, str):
                encodings = [encodings]
            self._encodings = list(encodings)
        return self._encodings

    def encodings_key(self) -> tuple[str, ...]:
        """The encodings as a hashable value (for the result cache)."""
        if self._key is None:
            self._key = tuple(self.encodings(0))
        return self._key


#: Top-level element results, (tag, VR, value, little endian, encodings) → (JSON attribute,
#: index value). The results are never modified after they are made, so instances share
#: them. Bounded: cleared when full.
_RESULTS: dict[tuple[Any, ...], Any] = {}
_CACHE_SIZE = 8192
_CACHE_VALUE_MAX = 256


def _strings(vr: str, items: list[str], want: bool) -> _Result:
    """A string VR's attribute: pydicom's str (VM 0 when empty) or MultiValue of str."""
    if len(items) == 1 and not items[0]:
        return {"vr": vr}, (_EMPTY if want else None)
    return {"vr": vr, "Value": items}, (_Index("s", items) if want else None)


def _binary(ctx: _Context, tag: int, vr: str, raw: RawDataElement, want: bool) -> _Result:
    """OB, OD, OF, OL, OV, OW, UN: inline base64, or a bulk data placeholder."""
    value = raw.value
    if len(value) > _INLINE_MAX:
        return ({"vr": vr} if ctx.top else {"vr": vr, "BulkDataURI": ""}), None
    return {"vr": vr, "InlineBinary": binascii.b2a_base64(value, newline=False).decode()}, None


def _unpack(value: bytes, little: bool, code: str) -> list[Any] | None:
    count, rest = divmod(len(value), _NUMBER_SIZE[code])
    if rest:
        return None  # pydicom raises BytesLengthException (or truncates AT): let it
    key = ("<" if little else ">") + code, count
    unpack = _structs.get(key)
    if unpack is None:
        unpack = struct.Struct(f"{key[0][0]}{count}{code}").unpack
        if len(_structs) < 2000:
            _structs[key] = unpack
    return list(unpack(value))


def _number(ctx: _Context, tag: int, vr: str, raw: RawDataElement, want: bool) -> _Result:
    """US, SS, UL, SL, FL, FD, SV, UV (pydicom.values.convert_numbers)."""
    if tag in _LUT_DESCRIPTORS:
        return None  # pydicom corrects the first value
    numbers = _unpack(raw.value, raw.is_little_endian, _NUMBER_CODES[vr])
    if numbers is None:
        return None
    return {"vr": vr, "Value": numbers}, (_Index("n", numbers) if want else None)


def _at(ctx: _Context, tag: int, vr: str, raw: RawDataElement, want: bool) -> _Result:
    """AT (pydicom.values.convert_ATvalue), rendered as "ggggeeee"."""
    value = raw.value
    if want or len(value) % 4:
        return None  # (pydicom drops a partial tag)
    half = _unpack(value, raw.is_little_endian, "H")
    if half is None:
        return None
    tags = [f"{half[i]:04X}{half[i + 1]:04X}" for i in range(0, len(half), 2)]
    return {"vr": vr, "Value": tags}, None


def _ui(ctx: _Context, tag: int, vr: str, raw: RawDataElement, want: bool) -> _Result:
    """UI (pydicom.values.convert_UI; UID() strips each value)."""
    items = raw.value.decode("latin-1").rstrip("\x00 ").split("\\")
    return _strings(vr, [item.strip() for item in items], want)


def _ascii(ctx: _Context, tag: int, vr: str, raw: RawDataElement, want: bool) -> _Result:
    """AS, CS, DA, DT, TM (pydicom.values.convert_string, datetime_conversion off)."""
    return _strings(vr, raw.value.decode("latin-1").rstrip(" \x00").split("\\"), want)


def _ae(ctx: _Context, tag: int, vr: str, raw: RawDataElement, want: bool) -> _Result:
    """AE (pydicom.values.convert_AE_string: each value stripped)."""
    items = [item.strip() for item in raw.value.decode("latin-1").split("\\")]
    return _strings(vr, items, want)


def _ur(ctx: _Context, tag: int, vr: str, raw: RawDataElement, want: bool) -> _Result:
    """UR: one value (pydicom.values.convert_UR_string)."""
    return _strings(vr, [raw.value.decode("latin-1").rstrip()], want)


def _text_vr(ctx: _Context, tag: int, vr: str, raw: RawDataElement, want: bool) -> _Result:
    """LO, SH, UC (pydicom.values.convert_text)."""
    decoded = decode_bytes(raw.value, ctx.encodings(tag), TEXT_VR_DELIMS)
    return _strings(vr, [item.rstrip("\x00 ") for item in decoded.split("\\")], want)


def _single_text(ctx: _Context, tag: int, vr: str, raw: RawDataElement, want: bool) -> _Result:
    """LT, ST, UT: one value, backslashes included (pydicom.values.convert_single_string)."""
    decoded = decode_bytes(raw.value, ctx.encodings(tag), TEXT_VR_DELIMS)
    return _strings(vr, [decoded.rstrip("\x00 ")], want)


def _ds(ctx: _Context, tag: int, vr: str, raw: RawDataElement, want: bool) -> _Result:
    """DS: DSfloat of each item (pydicom.values.convert_DS_string), rendered as float."""
    items = raw.value.decode("latin-1").strip().rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0]:
        return {"vr": vr}, (_EMPTY if want else None)
    match = _DS_ITEM.fullmatch
    for item in items:
        if match(item) is None:
            return None  # empty items, nan, ...: pydicom decides
    numbers = [float(item) for item in items]
    return {"vr": vr, "Value": numbers}, (
        _Index("ds", [item.strip() for item in items]) if want else None
    )


def _is(ctx: _Context, tag: int, vr: str, raw: RawDataElement, want: bool) -> _Result:
    """IS: IS (int) of each item (pydicom.values.convert_IS_string)."""
    items = raw.value.decode("latin-1").rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0]:
        return {"vr": vr}, (_EMPTY if want else None)
    match = _IS_ITEM.fullmatch
    for item in items:
        if match(item) is None:
            return None  # "1.0", empty items, huge numbers, ...: pydicom decides
    numbers = [int(item) for item in items]
    return {"vr": vr, "Value": numbers}, (
        _Index("is", [item.strip() for item in items]) if want else None
    )


def _pn_json(names: list[Any]) -> list[dict[str, str]] | None:
    """The PN attribute values of the component groups of each name; None if pydicom's
    to_json_dict fails (an empty name in a multi-value has no components[0])."""
    out = []
    for groups in names:
        if not groups:
            return None
        comps = {"Alphabetic": groups[0]}
        if len(groups) > 1:
            comps["Ideographic"] = groups[1]
        if len(groups) > 2:
            comps["Phonetic"] = groups[2]
        out.append(comps)
    return out


def _pn(ctx: _Context, tag: int, vr: str, raw: RawDataElement, want: bool) -> _Result:
    """PN as pydicom.values.convert_PN: decode, split values at "\\", groups at "="."""
    encodings = ctx.encodings(tag)
    value = raw.value
    decoded = decode_bytes(value.rstrip(b"\x00 "), encodings, TEXT_VR_DELIMS)
    if not decoded.isascii():  # pydicom re-encodes such names (warnings, RAISE mode)
        return _pn_pydicom(value, encodings, want)
    names = []
    for name in decoded.split("\\"):
        groups = name.split("=")
        while groups and not groups[-1]:
            groups.pop()
        names.append(groups)
    if len(names) == 1 and not names[0]:
        return {"vr": vr}, (_EMPTY if want else None)
    rendered = _pn_json(names)
    if rendered is None:
        return None
    return {"vr": vr, "Value": rendered}, (
        _Index("pn", ["=".join(groups) for groups in names]) if want else None
    )


def _pn_pydicom(value: bytes, encodings: list[str], want: bool) -> _Result:
    """A non-ASCII PN value through pydicom's own PN converter."""
    converted = convert_PN(value, encodings)
    if isinstance(converted, MultiValue):
        names = list(converted)
    elif converted:
        names = [converted]
    else:
        return {"vr": "PN"}, (_EMPTY if want else None)
    rendered = _pn_json([name.components for name in names])
    if rendered is None:
        return None
    return {"vr": "PN", "Value": rendered}, (
        _Index("pn", [str(name) for name in names]) if want else None
    )


_HANDLERS: dict[str, Any] = {
    **dict.fromkeys(("OB", "OD", "OF", "OL", "OV", "OW", "UN"), _binary),
    **dict.fromkeys(("US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"), _number),
    **dict.fromkeys(("AS", "CS", "DA", "DT", "TM"), _ascii),
    **dict.fromkeys(("LO", "SH", "UC"), _text_vr),
    **dict.fromkeys(("LT", "ST", "UT"), _single_text),
    "AE": _ae,
    "AT": _at,
    "DS": _ds,
    "IS": _is,
    "PN": _pn,
    "UI": _ui,
    "UR": _ur,
}


def _fast_supported() -> bool:
    """pydicom is configured as the fast path assumes (defaults, validation not RAISE)."""
    cfg = pydicom_config
    hooks = pydicom_hooks.hooks
    return (
        cfg.data_element_callback is None
        and not hooks.raw_element_kwargs
        and hooks.raw_element_vr is pydicom_hooks.raw_element_vr
        and hooks.raw_element_value is pydicom_hooks.raw_element_value
        and not cfg.datetime_conversion
        and not cfg.use_DS_numpy
        and not cfg.use_IS_numpy
        and pydicom.valuerep.DSclass is pydicom.valuerep.DSfloat
        and not cfg.use_none_as_empty_text_VR_value
        and cfg.settings.reading_validation_mode != cfg.RAISE
        and _private_vr_for_tag is not None
    )


def _element_pydicom(ds: Dataset, tag: int) -> tuple[Any, Any]:
    """Convert one element with pydicom: (DataElement, a callable giving its JSON attribute).

    Conversion errors are raised here, JSON errors when the callable is called. Sequence
    items come back to the fast path.
    """
    elem = ds[tag]

    def render() -> dict[str, Any]:
        if elem.VR == "SQ":
            return {"vr": "SQ", "Value": [_model(item, None) for item in elem.value]}
        return elem.to_json_dict(_bulk, BULK_THRESHOLD)

    return elem, render


class _Abandon(Exception):
    """A top-level element failed: finish as _json_model does after a failure."""


def _vr_of(ds: Dataset, raw: RawDataElement) -> str:
    """The VR pydicom gives an element read in implicit VR, or read as UN in explicit VR
    (hooks.raw_element_vr, then DataElement.__init__ for a public tag still UN)."""
    tag = raw.tag
    private = tag.group & 1
    if raw.VR is None:  # implicit VR
        vr = _dictionary_vr(int(tag))
        if vr is not None:
            return vr
        if not private:
            return "UL" if tag.element == 0 else "UN"  # group length; unknown tags: UN
    elif not pydicom_config.replace_un_with_known_vr:
        return "UN"
    elif not private:  # UN in explicit VR where the dictionary knows better
        vr = _dictionary_vr(int(tag)) if len(raw.value or b"") < 0xFFFF else None
        return vr or "UN"
    try:  # the private dictionary, by the private creator (read through pydicom)
        return _private_vr_for_tag(ds, tag)  # type: ignore[no-any-return]
    except Exception as exc:
        raise _Abandon from exc


def _model(ds: Dataset, index: dict[int, _Index] | None) -> dict[str, Any]:
    """JSON model of a data set; with ``index`` (the top level) also its index values.

    At the top level, bulk data placeholders are dropped. Failures follow _json_model: an
    element pydicom cannot convert or render raises _Abandon (the caller then redoes the data
    set element by element, exactly as _json_model does), except an index attribute that
    cannot be converted, whose error propagates (as Dataset.get raises it). In a sequence
    item any failure propagates to the top-level sequence.
    """
    top = index is not None
    ctx = _Context(ds, top)
    model: dict[str, Any] = {}
    handlers = _HANDLERS
    dictionary_vrs = _dictionary_vrs
    index_tags = _INDEX_TAGS if top else frozenset()
    cache = _RESULTS
    cache_get = cache.get
    for key_tag, raw in list(ds._dict.items()):
        tag = int(key_tag)  # a plain int: no BaseTag.__eq__ in the lookups below
        key = _json_keys.get(tag) or _json_key(tag)
        want = tag in index_tags
        done = None
        length = raw.length if type(raw) is RawDataElement else _UNDEFINED_LENGTH
        # (a value not read yet is None; so is an empty one, whose length is 0)
        if length != _UNDEFINED_LENGTH and (length == 0 or raw.value is not None):
            vr = raw.VR
            if vr is None:  # implicit VR: the dictionary's (cached), else _vr_of decides
                vr = dictionary_vrs.get(tag) or _vr_of(ds, raw)
            elif vr == "UN":
                vr = _vr_of(ds, raw)
            handler = handlers.get(vr)  # type: ignore[arg-type]
            if handler is not None:
                value = raw.value
                if not value:  # no value (or a truncated one in an item): VM 0 for every VR
                    done = {"vr": vr}, (_EMPTY if want else None)
                elif top and len(value) <= _CACHE_VALUE_MAX:
                    # The result depends only on these (the handlers read nothing else of
                    # the data set); instances of a series repeat most of their attributes.
                    ckey = (tag, vr, value, raw.is_little_endian, ctx.encodings_key())
                    done = cache_get(ckey)
                    if done is None:
                        done = handler(ctx, tag, vr, raw, want)
                        if done is not None:
                            if len(cache) >= _CACHE_SIZE:
                                cache.clear()
                            cache[ckey] = done
                else:
                    done = handler(ctx, tag, vr, raw, want)
        if done is not None:
            model[key] = done[0]
            if want:
                index[tag] = done[1] or _Index("py", ds[tag].value)  # type: ignore[index]
            continue
        if not top:
            model[key] = _element_pydicom(ds, tag)[1]()
            continue
        if want:
            elem, render = _element_pydicom(ds, tag)
            index[tag] = _Index("py", elem.value)  # type: ignore[index]
        else:
            try:
                elem, render = _element_pydicom(ds, tag)
            except Exception as exc:
                raise _Abandon from exc
        try:
            attr = render()
        except Exception as exc:
            raise _Abandon from exc
        if attr.get("BulkDataURI") == "":
            del attr["BulkDataURI"]
        model[key] = attr
    return model


_INDEX_KEYWORDS = [
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "InstitutionName",
    "Modality",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "SeriesDescription",
    "BodyPartExamined",
    "StationName",
    "ProtocolName",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "InstanceNumber",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentDate",
    "ContentTime",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "NumberOfFrames",
]
_TAG = {keyword: int(tag_for_keyword(keyword) or 0) for keyword in _INDEX_KEYWORDS}
_INDEX_TAGS = frozenset(_TAG.values())


def _build_header(text: Any, integer: Any, charset: str, attributes_json: str) -> InstanceHeader:
    """The header from text(keyword, maxlen) and integer(keyword) lookups."""
    hdr = InstanceHeader(
        sop_class_uid=text("SOPClassUID", 64),
        sop_instance_uid=text("SOPInstanceUID", 64),
        study_instance_uid=text("StudyInstanceUID", 64),
        series_instance_uid=text("SeriesInstanceUID", 64),
        specific_character_set=charset,
    )
    hdr.patient = {
        "patient_id": text("PatientID", 64),
        "issuer_of_patient_id": text("IssuerOfPatientID", 64),
        "patient_name": text("PatientName", 324),
        "patient_birth_date": text("PatientBirthDate", 8),
        "patient_birth_time": text("PatientBirthTime", 16),
        "patient_sex": text("PatientSex", 16),
    }
    hdr.study = {
        "study_date": text("StudyDate", 8),
        "study_time": text("StudyTime", 16),
        "accession_number": text("AccessionNumber", 64),
        "study_id": text("StudyID", 64),
        "study_description": text("StudyDescription", 256),
        "referring_physician_name": text("ReferringPhysicianName", 324),
        "patient_age": text("PatientAge", 8),
        "patient_size": text("PatientSize", 16),
        "patient_weight": text("PatientWeight", 16),
        "institution_name": text("InstitutionName", 128),
    }
    hdr.series = {
        "modality": text("Modality", 16),
        "series_number": integer("SeriesNumber"),
        "series_date": text("SeriesDate", 8),
        "series_time": text("SeriesTime", 16),
        "series_description": text("SeriesDescription", 256),
        "body_part_examined": text("BodyPartExamined", 64),
        "station_name": text("StationName", 64),
        "protocol_name": text("ProtocolName", 64),
        "performed_procedure_step_start_date": text("PerformedProcedureStepStartDate", 8),
        "performed_procedure_step_start_time": text("PerformedProcedureStepStartTime", 16),
    }
    hdr.instance = {
        "instance_number": integer("InstanceNumber"),
        "instance_creation_date": text("InstanceCreationDate", 8),
        "instance_creation_time": text("InstanceCreationTime", 16),
        "content_date": text("ContentDate", 8),
        "content_time": text("ContentTime", 16),
        "rows": integer("Rows"),
        "columns": integer("Columns"),
        "samples_per_pixel": integer("SamplesPerPixel"),
        "bits_allocated": integer("BitsAllocated"),
        "bits_stored": integer("BitsStored"),
        "pixel_representation": integer("PixelRepresentation"),
        "photometric_interpretation": text("PhotometricInterpretation", 16),
        "number_of_frames": integer("NumberOfFrames"),
    }
    hdr.attributes_json = attributes_json
    return hdr


def _header_fast(ds: Dataset) -> InstanceHeader:
    index: dict[int, _Index] = {}
    try:
        model = _model(ds, index)
    except _Abandon:  # a malformed element: pydicom's way, element by element
        hdr = _header_pydicom(ds)
        hdr.attributes_json = _json_model_by_element(ds)
        return hdr
    attributes_json = json.dumps(model, separators=(",", ":"), ensure_ascii=False)
    get = index.get
    tags = _TAG

    def text(keyword: str, maxlen: int) -> str:
        found = get(tags[keyword])
        return "" if found is None else found.text(maxlen)

    def integer(keyword: str) -> int | None:
        found = get(tags[keyword])
        return None if found is None else found.integer()

    found = get(_SPECIFIC_CHARACTER_SET)
    if found is None:
        charset = ""
    elif found.kind == "s":  # a str or a MultiValue of str
        charset = "\\".join(found.items)
    else:  # any other kind of value: as the reference does it
        value = ds.get("SpecificCharacterSet", "")
        charset = value if isinstance(value, str) else "\\".join(value)
    return _build_header(text, integer, charset, attributes_json)


def _header_pydicom(ds: Dataset) -> InstanceHeader:
    charset = ds.get("SpecificCharacterSet", "")
    charset = "\\".join(charset) if not isinstance(charset, str) else charset
    return _build_header(
        lambda keyword, maxlen: _text(ds, keyword, maxlen),
        lambda keyword: _int(ds, keyword),
        charset,
        "",
    )


def header_from_dataset(ds: Dataset) -> InstanceHeader:
    """Map a (partially read) data set to index attributes; raise HeaderError if unusable."""
    try:
        if _fast_supported() and isinstance(getattr(ds, "_dict", None), dict):
            return _header_fast(ds)
        hdr = _header_pydicom(ds)
        hdr.attributes_json = _json_model(ds)
        return hdr
    except HeaderError:
        raise
    except Exception as exc:  # any decode problem in an index attribute
        raise HeaderError(f"cannot read data set attributes: {exc}") from exc


def read_dataset_bytes(data: bytes | memoryview, transfer_syntax_uid: str) -> Dataset:
    """Decode the elements before Pixel Data of a bare data set in ``transfer_syntax_uid``."""
    raw: bytes | memoryview = data
    if transfer_syntax_uid == DEFLATED:
        try:
            raw = zlib.decompressobj(-zlib.MAX_WBITS).decompress(bytes(data))
        except zlib.error as exc:
            raise HeaderError(f"deflated data set does not inflate: {exc}") from exc
    implicit = transfer_syntax_uid == IMPLICIT_VR_LE
    little = transfer_syntax_uid != BIG_ENDIAN
    fast = _read_raw_until_pixels(bytes(raw), implicit, little)
    if fast is not None:
        ds, _reached, complete = fast
        if not complete:
            raise HeaderError("data set is truncated (an element is shorter than its length)")
    else:
        try:
            ds = read_dataset(
                io.BytesIO(raw),
                is_implicit_VR=implicit,
                is_little_endian=little,
                stop_when=_stop_at_pixels,
            )
        except Exception as exc:
            raise HeaderError(f"data set cannot be parsed: {exc}") from exc
        if not _complete(ds):
            raise HeaderError("data set is truncated (an element is shorter than its length)")
    return ds


def read_header_bytes(data: bytes | memoryview, transfer_syntax_uid: str) -> InstanceHeader:
    return header_from_dataset(read_dataset_bytes(data, transfer_syntax_uid))


#: Bytes tried first when the data set arrives in fragments; the header nearly always fits.
_HEAD_BYTES = 256 * 1024


def read_header_chunks(
    chunks: Sequence[bytes | memoryview], transfer_syntax_uid: str
) -> InstanceHeader:
    """Like read_header_bytes for a data set held as fragments, joining as little as possible.

    The first fragments (≥ 256 KiB) are parsed; if Pixel Data was not reached and more bytes
    remain, everything is joined and parsed again.
    """
    if len(chunks) == 1:
        return read_header_bytes(chunks[0], transfer_syntax_uid)
    if transfer_syntax_uid != DEFLATED:
        head: list[bytes | memoryview] = []
        size = 0
        for chunk in chunks:
            head.append(chunk)
            size += len(chunk)
            if size >= _HEAD_BYTES:
                break
        if len(head) < len(chunks):
            ds, complete = _read_until_pixels(b"".join(head), transfer_syntax_uid)
            if complete:
                return header_from_dataset(ds)
    return read_header_bytes(b"".join(chunks), transfer_syntax_uid)


def read_header_prefix(raw: bytes, transfer_syntax_uid: str) -> InstanceHeader:
    """Index attributes from the first bytes of a (large) data set; Pixel Data must be there."""
    ds, complete = _read_until_pixels(raw, transfer_syntax_uid)
    if not complete:
        raise HeaderError(f"no complete header within the first {len(raw)} bytes")
    return header_from_dataset(ds)


_ELEMENT_STRUCTS = {
    (implicit, little): struct.Struct(("<" if little else ">") + ("HHL" if implicit else "HH2sH"))
    for implicit in (True, False)
    for little in (True, False)
}
_LENGTH32 = {True: struct.Struct("<L"), False: struct.Struct(">L")}
_LONG_VR_NAMES = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_VR_NAMES = {vr: vr.decode(default_encoding) for vr in ENCODED_VR if len(vr) == 2}


def _read_raw_until_pixels(
    raw: bytes, implicit: bool, little: bool
) -> tuple[Dataset, bool, bool] | None:
    """pydicom's ``read_dataset(..., stop_when=tag >= Pixel Data)`` for the common case.

    Builds the same Dataset (the same RawDataElements, undefined-length sequences parsed by
    pydicom's own ``read_sequence``, the same original encoding) without pydicom's
    per-element generator, which was a third of the header cost of every received instance.
    Returns (data set, Pixel Data reached, no element shorter than its length — what
    ``_complete`` checks), or None whenever the input needs one of
    pydicom's special cases (VR switch heuristics, unknown VRs, undefined-length values that
    are not explicit SQ, a delimiter at the top level, a header cut short, non-default
    configuration): the caller then uses pydicom itself, so the result never differs.
    tests/unit/test_header.py compares both on pydicom's test files and on cut data.
    """
    try:
        return _read_raw_elements(raw, implicit, little)
    except Exception:  # an odd value (e.g. of Specific Character Set): pydicom decides
        return None


def _read_raw_elements(
    raw: bytes, implicit: bool, little: bool
) -> tuple[Dataset, bool, bool] | None:
    """The work of _read_raw_until_pixels (which see); may raise."""
    if not _fast_supported() or pydicom_config.debugging:
        return None
    n = len(raw)
    if n >= 6:  # pydicom's _is_implicit_vr: a top-level VR switch is left to pydicom
        found_implicit = not (0x40 < raw[4] < 0x5B and 0x40 < raw[5] < 0x5B)
        if found_implicit != implicit:
            return None
    unpack = _ELEMENT_STRUCTS[(implicit, little)].unpack_from
    length32 = _LENGTH32[little].unpack_from
    vr_names = _VR_NAMES
    long_vrs = _LONG_VR_NAMES
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    encoding: Any = default_encoding
    reached = truncated = False
    pos = 0
    vr: str | None = None
    while pos + 8 <= n:
        if implicit:
            group, elem, length = unpack(raw, pos)
            value_at = pos + 8
        else:
            group, elem, vr_bytes, length = unpack(raw, pos)
            vr = vr_names.get(vr_bytes)
            if vr is None:
                return None
            if vr in long_vrs:
                if pos + 12 > n:
                    return None
                length = length32(raw, pos + 8)[0]
                value_at = pos + 12
            else:
                value_at = pos + 8
        if group == 0xFFFE:  # a delimiter or item at the top level: pydicom's cases
            return None
        tag = group << 16 | elem
        if tag >= 0x7FE00010:
            reached = True
            break
        if length == 0xFFFFFFFF:
            if vr != "SQ" or implicit:
                return None
            fp = io.BytesIO(raw)
            fp.seek(value_at)
            seq = read_sequence(fp, implicit, little, length, encoding)
            elements[BaseTag(tag)] = DataElement(
                BaseTag(tag), vr, seq, value_at, is_undefined_length=True
            )
            pos = fp.tell()
            continue
        value = raw[value_at : value_at + length] if length else empty_value_for_VR(vr, raw=True)
        if value_at + length > n:
            truncated = True
        if tag == 0x00080005:
            encoding = convert_encodings(convert_string(value or b"", little))
        key = BaseTag(tag)
        elements[key] = RawDataElement(key, vr, length, value, value_at, implicit, little)
        pos = value_at + length
    ds = Dataset(elements, parent_encoding=default_encoding)
    charset = elements.get(BaseTag(0x00080005))
    if charset is not None:
        ds.set_original_encoding(
            implicit, little, convert_encodings(convert_raw_data_element(charset).value)
        )
    else:
        ds.set_original_encoding(implicit, little, default_encoding)
    return ds, reached, not truncated


def _read_until_pixels(raw: bytes, ts: str) -> tuple[Dataset, bool]:
    """Parse a prefix of a data set; complete=True when Pixel Data (or later) was reached."""
    fast = _read_raw_until_pixels(raw, ts == IMPLICIT_VR_LE, ts != BIG_ENDIAN)
    if fast is not None:
        ds, reached_fast, complete = fast
        return ds, reached_fast and complete
    reached = False

    def stop(tag: Any, vr: Any, length: Any) -> bool:
        nonlocal reached
        if int(tag) >= _PIXEL_DATA_INT:  # int(): BaseTag's comparisons are slow Python
            reached = True
            return True
        return False

    try:
        ds = read_dataset(
            io.BytesIO(raw),
            is_implicit_VR=ts == IMPLICIT_VR_LE,
            is_little_endian=ts != BIG_ENDIAN,
            stop_when=stop,
        )
    except Exception:
        return Dataset(), False
    return ds, reached and _complete(ds)


def _complete(ds: Dataset) -> bool:
    """No top-level element shorter than its declared length (a truncated data set)."""
    # The stored elements as they are (what get_item(keep_deferred=True) returns), without
    # Dataset's per-tag look-ups.
    for elem in list(ds._dict.values()):
        value = getattr(elem, "value", None)
        length = getattr(elem, "length", None)
        if (
            isinstance(value, bytes | bytearray | memoryview)
            and length is not None
            and length != 0xFFFFFFFF
            and len(value) != length
        ):
            return False
    return True


@dataclass
class Part10Info:
    """What a Part-10 file says about itself: meta, offset of the data set, header."""

    transfer_syntax_uid: str
    dataset_offset: int
    header: InstanceHeader
    has_meta: bool


def read_part10(path: Path | BinaryIO) -> Part10Info:
    """Parse a file (Part-10 with meta, or a bare data set) up to Pixel Data."""
    try:
        ds = dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise HeaderError(f"not a DICOM file: {exc}") from exc
    except Exception as exc:
        raise HeaderError(f"not a DICOM file: {exc}") from exc
    meta = ds.file_meta
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    has_meta = bool(meta) and "TransferSyntaxUID" in meta
    if not ts:
        ts = IMPLICIT_VR_LE if ds.original_encoding[0] else "1.2.840.10008.1.2.1"
        if not ds.original_encoding[1]:
            ts = BIG_ENDIAN
    if len(ds) == 0 or (not has_meta and "SOPClassUID" not in ds):
        raise HeaderError("not a DICOM file: no file meta and no SOP Class UID")
    if not _complete(ds):
        raise HeaderError("data set is truncated (an element is shorter than its length)")
    offset = 0
    if has_meta:
        if isinstance(path, Path | str):
            with open(path, "rb") as fh:
                offset = dataset_offset(fh)
        else:
            path.seek(0)
            offset = dataset_offset(path)
    return Part10Info(ts, offset, header_from_dataset(ds), has_meta)


_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


def dataset_offset(fh: BinaryIO) -> int:
    """Byte offset where the data set starts in a Part-10 file (after preamble and group 2).

    Walks the File Meta elements (always Explicit VR Little Endian, PS3.10 §7.1) rather than
    trusting (0002,0000), which some writers get wrong or omit.
    """
    fh.seek(0)
    head = fh.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        return 0
    pos = 132
    while True:
        fh.seek(pos)
        tag = fh.read(8)
        if len(tag) < 8 or int.from_bytes(tag[0:2], "little") != 0x0002:
            return pos
        vr = tag[4:6]
        if vr in _LONG_VRS:
            ext = fh.read(4)
            if len(ext) < 4:
                return pos
            pos += 12 + int.from_bytes(ext, "little")
        else:
            pos += 8 + int.from_bytes(tag[6:8], "little")
