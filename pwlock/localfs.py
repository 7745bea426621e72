"""A local directory for Ray Tune whose files are written whole or not at all.

Tune copies its experiment state, trial results and error files into the store through a pyarrow
filesystem. Through pyarrow's own local filesystem a full disk leaves them cut off (an empty
experiment state: the experiment cannot be resumed; an empty error file: the driver dies reading
it). Here every file is written under a temporary name and renamed into place once closed whole;
a failed write removes the temporary file and leaves the previous version.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs


class _WholeFile:
    """A file written at `path + .tmp-*`, renamed to `path` by close() unless a write failed."""

    def __init__(self, path: str):
        self.path, self.failed, self.closed = path, False, True
        self.tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        os.makedirs(os.path.dirname(path), exist_ok=True)  # as pyarrow's local filesystem does
        self.f = open(self.tmp, "wb")
        self.closed = False

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except BaseException:
            self._abandon()
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except BaseException:
            self._abandon()
            raise

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.f.close()  # a full disk can surface only here, flushing the last bytes
        except BaseException:
            self._abandon()
            raise
        self.closed = True
        os.replace(self.tmp, self.path)

    def _abandon(self) -> None:
        """A failed write: the temporary file goes at once (its writer may never close it)."""
        self.failed = self.closed = True
        try:
            self.f.close()
        except OSError:
            pass
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __del__(self) -> None:  # never closed: an abandoned write
        if not self.closed:
            self._abandon()


class WholeFilesHandler(pafs.FileSystemHandler):
    """pyarrow's local filesystem, but output streams are `_WholeFile`s."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WholeFilesHandler)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "pwlock-local"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("pwlock's local filesystem does not empty the root directory")

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self.fs.open_input_stream(src) as f, self.open_output_stream(dest, None) as out:
            while chunk := f.read(8 << 20):
                out.write(chunk)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return pa.PythonFile(_WholeFile(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pa.NativeFile:
        return self.fs.open_append_stream(path, metadata=metadata)


def whole_files_filesystem() -> pafs.PyFileSystem:
    return pafs.PyFileSystem(WholeFilesHandler())
