"""DIMSE command sets as bytes (PS3.7 §6.3, §9.3, §E): group-0000 elements in Implicit VR
Little Endian, shared by the lean acceptor, the lean C-STORE requestor and the C-FIND
responder."""

from __future__ import annotations

import struct


def cmd_element(number: int, value: bytes) -> bytes:
    """One group-0000 element of a command set (Implicit VR LE, PS3.7 §6.3.1)."""
    return struct.pack("<HHI", 0x0000, number, len(value)) + value


def pad_ui(value: str) -> bytes:
    """A UI value padded to even length with NUL (PS3.5 §6.2)."""
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def pad_ae(value: str) -> bytes:
    """An AE value (at most 16 characters) padded to even length with a space."""
    raw = value.encode("ascii", "replace")[:16]
    return raw + b" " if len(raw) % 2 else raw


def comment_value(text: str) -> bytes:
    """An Error Comment (0000,0902) value: LO, at most 64 characters, no backslash."""
    raw = text.replace("\\", "/")[:64].encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


def command_set(body: list[bytes]) -> bytes:
    """The elements of ``body`` preceded by Command Group Length (0000,0000)."""
    payload = b"".join(body)
    return cmd_element(0x0000, struct.pack("<I", len(payload))) + payload
