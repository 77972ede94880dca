"""Reading ``multipart/form-data`` uploads into memory.

Starlette's own form parser spools files over 1 MB to a temporary file on disk; an
uploaded radiograph must never touch the disk, so the service parses the stream itself
with python-multipart into ``bytes`` (the request-size middleware bounds how many). The
client's file name is kept only as a display name (its last path component, printable
characters, at most 120 of them): it is never used as a path and never logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from starlette.requests import Request

from cxr.errors import CxrError

__all__ = ["FormError", "Upload", "UploadForm", "display_name", "read_form"]

_MAX_FIELD_BYTES = 64 * 1024  # a text field (labels, top_k, method)
_MAX_FIELDS = 32
_MAX_NAME = 120
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class FormError(CxrError):
    """A request whose body is not the expected form: ``status`` (400, 413 or 415)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Upload:
    """One uploaded file: ``field`` (the form field), ``name`` (display only) and ``data``."""

    field: str
    name: str
    data: bytes


@dataclass
class UploadForm:
    files: list[Upload] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)

    def value(self, name: str) -> str | None:
        """The field's values joined by commas (``labels=A&labels=B`` = ``A,B``), or None."""
        values = self.fields.get(name)
        return None if values is None else ",".join(values)


def display_name(raw: str, index: int) -> str:
    """The client's file name as a label: last path component, printable, <= 120 chars."""
    name = _UNPRINTABLE.sub("", raw.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if name in ("", ".", ".."):
        return f"upload-{index + 1}"
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - 3] + "..."


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    name: str = ""
    filename: str | None = None


async def read_form(request: Request, max_files: int) -> UploadForm:
    """The files and text fields of a ``multipart/form-data`` request, in memory.

    Raises :class:`FormError`: 415 for another content type, 400 for a malformed body,
    413 for more than ``max_files`` files.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise FormError(
            415,
            "send the image file(s) as multipart/form-data (curl -F); got "
            + (f"Content-Type {ctype.decode('latin-1')!r}" if ctype else "no Content-Type"),
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise FormError(400, "the multipart/form-data Content-Type has no boundary")
    form = UploadForm()
    parts: list[_Part] = []
    header: list[bytes] = [b"", b""]
    n_files = n_fields = 0

    def on_part_begin() -> None:
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        parts[-1].headers[header[0].strip().lower()] = header[1].strip()
        header[0] = header[1] = b""

    def on_headers_finished() -> None:
        nonlocal n_files, n_fields
        part = parts[-1]
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise FormError(400, "a multipart part has no Content-Disposition name")
        part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            n_files += 1
            if n_files > max_files:
                raise FormError(413, f"at most {max_files} files per request")
            part.filename = options[b"filename"].decode("utf-8", "replace")
        else:
            n_fields += 1
            if n_fields > _MAX_FIELDS:
                raise FormError(413, f"at most {_MAX_FIELDS} form fields per request")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part.data += data[start:end]
        if part.filename is None and len(part.data) > _MAX_FIELD_BYTES:
            raise FormError(413, f"a form field is longer than {_MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        part = parts[-1]
        if part.filename is not None:
            form.files.append(
                Upload(part.name, display_name(part.filename, len(form.files)), bytes(part.data))
            )
        else:
            text = part.data.decode("utf-8", "replace")
            form.fields.setdefault(part.name, []).append(text)
        parts[-1] = _Part()  # the bytes are in the Upload now; drop the buffer

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError as err:
        raise FormError(400, f"malformed multipart/form-data body: {err}") from None
    return form
