"""Binary COPY framing: the header rides on the first row's message, the trailer alone."""

from __future__ import annotations

import pytest

from sync.wire import BINARY_HEADER, BINARY_TRAILER, strip_binary_header


def test_header_is_stripped_from_the_first_message_and_an_empty_copy_leaves_the_trailer() -> None:
    row = b"\x00\x01\x00\x00\x00\x04\x00\x00\x00\x2a"          # one int4 field: 42
    assert strip_binary_header(BINARY_HEADER + row) == row
    assert strip_binary_header(BINARY_HEADER + BINARY_TRAILER) == BINARY_TRAILER
    extension = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x03" + b"abc"
    assert strip_binary_header(extension + row) == row      # a header extension is skipped


def test_a_message_without_the_signature_is_refused() -> None:
    with pytest.raises(ValueError, match="PGCOPY signature"):
        strip_binary_header(b"not a binary copy")
