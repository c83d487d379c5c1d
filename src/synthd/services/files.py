"""``/v1/files``: uploads parsed from the multipart stream as it arrives, written straight to disk.

The route hands over the raw body stream (so the API key is checked before any byte is parsed), and
each chunk is parsed and written in a worker thread (the event loop never waits on the disk). The
file's bytes are counted as they come: past the limit the upload stops with ``PayloadTooLarge`` and
its partial file is removed; a client or server dying mid-upload leaves no listed file.
"""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from synthd.errors import InvalidRequest, NotFound, PayloadTooLarge
from synthd.protocol.fine_tuning import FileObject
from synthd.services.projects import OPERATOR, Principal, visible_or_raise
from synthd.store.files import Upload
from synthd.store.models import FileRecord
from synthd.store.repository import Repository

FILE_PURPOSES = ("fine-tune", "assistants", "batch", "user_data", "evals", "vision")
FIELD_LIMIT_BYTES = 4096
MULTIPART_ENVELOPE_BYTES = 1024 * 1024
"""Multipart overhead (boundaries, part headers, small fields) allowed on top of the file limit, by
the parser here and by the body cap of ``POST /v1/files`` (``synthd.api.limits``), so both refuse
the same body; the file part itself is counted exactly (``file_too_large``)."""


def file_object(record: FileRecord) -> FileObject:
    """Wire form of a stored file."""
    return FileObject(
        id=record.id, bytes=record.bytes, created_at=record.created_at, filename=record.filename, purpose=record.purpose
    )


def file_not_found(file_id: str, param: str = "file_id") -> NotFound:
    """An unknown file."""
    return NotFound(f"No file with id '{file_id}'.", param=param, code="file_not_found")


class MultipartUpload:
    """A ``multipart/form-data`` body parsed incrementally: the ``file`` part streams into an
    ``Upload``, other fields (``purpose``) are kept up to ``FIELD_LIMIT_BYTES``.

    Raises:
        InvalidRequest: not multipart, malformed, a second file, an oversized field.
        PayloadTooLarge: the body is far larger than the file limit allows.
    """

    def __init__(self, content_type: str | None, upload: Upload) -> None:
        kind, options = parse_options_header(content_type or "")
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidRequest(
                "Upload the file as multipart/form-data with the fields 'file' and 'purpose'.", param="file"
            )
        self.upload = upload
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.received = 0
        self._headers: dict[bytes, bytes] = {}
        self._header = (b"", b"")
        self._field: tuple[str, bytearray] | None = None
        self._in_file = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def write(self, chunk: bytes) -> None:
        """Parse one chunk of the body."""
        self.received += len(chunk)
        if self.received > self.upload.limit_bytes + MULTIPART_ENVELOPE_BYTES:
            raise PayloadTooLarge(
                f"File is larger than the limit of {self.upload.limit_bytes} bytes.",
                param="file",
                code="file_too_large",
            )
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidRequest(f"Malformed multipart body: {exc}", param="file") from None

    def finish(self) -> None:
        """End of the body."""
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise InvalidRequest(f"Malformed multipart body: {exc}", param="file") from None

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0] + data[start:end], self._header[1])

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header = (self._header[0], self._header[1] + data[start:end])

    def _header_end(self) -> None:
        self._headers[self._header[0].lower()] = self._header[1]
        self._header = (b"", b"")

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode(errors="replace")
        if name == "file" and b"filename" in options:
            if self.filename is not None:
                raise InvalidRequest("Send one file per upload.", param="file")
            self.filename = options[b"filename"].decode(errors="replace")[:512] or "upload.jsonl"
            self._in_file = True
        else:
            self._field = (name, bytearray())

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.upload.write(data[start:end])
            return
        assert self._field is not None
        self._field[1].extend(data[start:end])
        if len(self._field[1]) > FIELD_LIMIT_BYTES:
            raise InvalidRequest(
                f"Form field '{self._field[0]}' is longer than {FIELD_LIMIT_BYTES} bytes.", param=self._field[0] or None
            )

    def _part_end(self) -> None:
        if self._field is not None:
            self.fields[self._field[0]] = self._field[1].decode(errors="replace")
        self._field, self._in_file = None, False


class FilesService:
    """Uploads, lists, reads and deletes files."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo

    async def upload(
        self, content_type: str | None, body: AsyncIterator[bytes], limit_bytes: int, principal: Principal = OPERATOR
    ) -> FileObject:
        """Stream a multipart upload (``file``, ``purpose``) to disk and record it, owned by
        ``principal``'s project.

        Raises:
            InvalidRequest: bad purpose, no file, malformed body. PayloadTooLarge: over ``limit_bytes``.
        """
        upload = await asyncio.to_thread(self.repo.open_upload, limit_bytes)
        try:
            form = MultipartUpload(content_type, upload)
            async for chunk in body:
                await asyncio.to_thread(form.write, chunk)
            await asyncio.to_thread(form.finish)
            purpose = form.fields.get("purpose")
            if purpose not in FILE_PURPOSES:
                raise InvalidRequest(
                    f"Invalid purpose '{purpose}'; expected one of {', '.join(FILE_PURPOSES)}.", param="purpose"
                )
            if form.filename is None:
                raise InvalidRequest("No file: send it as the multipart field 'file'.", param="file")
            record = await asyncio.to_thread(self.repo.commit_upload, upload, form.filename, purpose, principal.project)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(upload.abort))
            raise
        return file_object(record)

    def list(
        self, purpose: str | None, after: str | None, limit: int, principal: Principal = OPERATOR
    ) -> tuple[list[FileObject], bool]:
        """A page of the files ``principal`` may see, newest first, after the file id ``after``."""
        records, more = self.repo.list_files(after, limit, purpose, principal.scope)
        return [file_object(r) for r in records], more

    def get(self, file_id: str, principal: Principal = OPERATOR) -> FileRecord:
        """A file record ``principal`` may see. Raises NotFound."""
        return visible_or_raise(self.repo.get_file(file_id), principal, file_not_found(file_id))

    def content_path(self, file_id: str, principal: Principal = OPERATOR) -> Path:
        """Where a file's bytes are. Raises NotFound."""
        return Path(self.get(file_id, principal).path)

    def delete(self, file_id: str, principal: Principal = OPERATOR) -> None:
        """Delete a file and its bytes. Raises NotFound."""
        if not self.repo.delete_file(self.get(file_id, principal).id):
            raise file_not_found(file_id)
