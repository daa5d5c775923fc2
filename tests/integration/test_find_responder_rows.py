"""The lean C-FIND path's row encoder (dicom/find_responder.RowEncoder) writes, for every
row of real queries, exactly the bytes of the data set FindSCP.response builds (PS3.4
§C.4.1.1.3.2) — ASCII rows through the direct path, the others through pydicom."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsbox.archive.query import Model, QueryEngine
from pacsbox.dicom.find_responder import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    RowEncoder,
    encode_identifier,
)
from pacsbox.dicom.scp.find import FindSCP, build_query
from tests.integration.test_query_db import _populate


def _ident(level: str, charset: str | None = None, **keys: object) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _identifiers() -> list[tuple[Model, Dataset]]:
    code = Dataset()
    code.RequestedProcedureID = ""
    with_private = _ident("STUDY", PatientName="", StudyInstanceUID="")
    with_private.add_new(0x00091010, "LO", "")
    return [
        (
            Model.STUDY_ROOT,
            _ident(
                "STUDY",
                StudyInstanceUID="",
                PatientName="",
                PatientID="",
                StudyDate="",
                AccessionNumber="",
                ModalitiesInStudy="",
                NumberOfStudyRelatedInstances="",
                NumberOfStudyRelatedSeries="",
                StudyDescription="",
                RetrieveAETitle="",
                InstanceAvailability="",
            ),
        ),
        (Model.STUDY_ROOT, _ident("STUDY", "ISO_IR 100", PatientName="", StudyDate="")),
        (Model.STUDY_ROOT, _ident("STUDY", "ISO_IR 192", PatientName="M*", PatientID="")),
        (Model.STUDY_ROOT, _ident("SERIES", Modality="", SeriesNumber="", SeriesInstanceUID="")),
        (Model.STUDY_ROOT, _ident("IMAGE", SOPInstanceUID="", InstanceNumber="", Rows="")),
        (Model.PATIENT_ROOT, _ident("PATIENT", PatientID="", PatientBirthDate="")),
        (
            Model.STUDY_ROOT,
            _ident("IMAGE", SOPInstanceUID="", RequestAttributesSequence=Sequence([code])),
        ),
        (Model.STUDY_ROOT, with_private),
    ]


@pytest.mark.parametrize("ts", [IMPLICIT_LE, EXPLICIT_LE])
def test_row_encoder_bytes_equal_response_dataset(sqlite_archive, ts: str) -> None:  # noqa: ANN001
    _populate(sqlite_archive)
    scp = FindSCP(sqlite_archive)
    rows_seen = fast_rows = 0
    for model, identifier in _identifiers():
        query, requested = build_query(identifier, model, relational=True, pn_case_insensitive=True)
        charset = (
            [str(identifier.SpecificCharacterSet)] if "SpecificCharacterSet" in identifier else []
        )
        encoder = RowEncoder(scp, ts)
        rows = QueryEngine(sqlite_archive.engine).run(query)
        try:
            for row in rows:
                expected = encode_identifier(scp.response(query, requested, row, charset), ts)
                assert encoder(query, requested, row, charset) == expected, (identifier, row)
                rows_seen += 1
                fast_rows += encoder.fast and encoder._fast(row) is not None
        finally:
            rows.close()  # type: ignore[attr-defined]
    assert rows_seen >= 15
    assert 0 < fast_rows < rows_seen  # both paths were compared
