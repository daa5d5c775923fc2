"""sendtopacs: turn photos, PDFs and videos into DICOM and send them to any PACS (SPEC S1–S7).

This version sends existing DICOM files as they are (S3) and echoes destinations (S5); the
converters, worklist lookup, folder monitor and service arrive with their issue.
"""
