"""On-disk file formats: one name/version check, one atomic write and one provenance stamp for every rram-hil file.

Each format (run file, noise profile, plan, model file, read-path calibration, simulator ground truth)
declares a `FileFormat`; writers store `stamp()` and write through `atomic_write`, readers call
`check` and get the same one-line wording for a foreign file, an unreadable version or a newer one.
It lives in the base layer (standard library only) because sim_backend, calibration and hil all use it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import operator
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsIndex

_DOTTED = re.compile(r"(\d+)\.(\d+)")
_WHOLE = re.compile(r"\d+")


@dataclass(frozen=True)
class FileFormat:
    """A file format's name and version, where a file stores them, and how messages call such a file.

    `version` is "MAJOR.MINOR", or "MAJOR" for formats that store a whole number (the model file, the
    read-path calibration). `version_key=None` means the version is part of the name ("name/MAJOR").
    `what` is the file's noun phrase with its article, as messages use it ("an rram-hil run file").
    """

    name: str
    version: str
    what: str
    name_key: str = "format"
    version_key: str | None = "format_version"

    def __post_init__(self) -> None:
        if not (_DOTTED.fullmatch(self.version) or _WHOLE.fullmatch(self.version)):
            raise ValueError(f"file format version must be 'MAJOR.MINOR' or 'MAJOR', got {self.version!r}")
        if self.version_key is None and not _WHOLE.fullmatch(self.version):
            raise ValueError(f"a version kept in the format name must be a whole number, got {self.version!r}")

    @property
    def major(self) -> int:
        """The major version this software reads (files of a higher major are refused)."""
        return int(self.version.split(".")[0])

    @property
    def dotted(self) -> bool:
        """True when the version is stored as a "MAJOR.MINOR" string, False for a whole number."""
        return "." in self.version

    @property
    def _example(self) -> str | int:
        """This software's version as a file stores it (for messages)."""
        return self.version if self.dotted or self.version_key is None else int(self.version)

    def stamp(self) -> dict[str, str | int]:
        """The attributes (or dict keys) that identify a file of this format, in the order they are written."""
        if self.version_key is None:
            return {self.name_key: f"{self.name}/{self.version}"}
        return {self.name_key: self.name, self.version_key: self.version if self.dotted else int(self.version)}

    def check(self, attrs: Mapping[str, object], source: str, error_cls: type[Exception] = ValueError) -> str:
        """The version of the file whose attributes are `attrs`; `error_cls` (one line) if this software cannot read it.

        Refuses a file of another format, one whose version is unreadable, and one of a newer major
        version; `source` (usually the path) starts every message.
        """
        got = _text(attrs.get(self.name_key))
        if self.version_key is None:
            prefix = f"{self.name}/"
            if not (isinstance(got, str) and got.startswith(prefix)):
                raise error_cls(f"{source} is not {self.what}")
            raw: object = got[len(prefix) :]
        else:
            if got != self.name:
                raise error_cls(f"{source} is not {self.what}")
            raw = attrs.get(self.version_key)
        version, major = self._parse(raw)
        if version is None:
            expected = "major.minor" if self.dotted else "a whole number"
            raise error_cls(
                f"{source} is {self.what} with an unreadable format version {raw!r} (expected {expected}, like {self._example!r})"
            )
        if major > self.major:
            raise error_cls(
                f"{source} is {self.what} of format {version}, newer than this software reads ({self.version}); update rram-hil"
            )
        return version

    def _parse(self, raw: object) -> tuple[str | None, int]:
        """(version text, major) of a stored version, or (None, 0) when it is not of this format's kind."""
        raw = _text(raw)
        if isinstance(raw, str):
            m = (_DOTTED if self.dotted else _WHOLE).fullmatch(raw)
            return (raw, int(raw.split(".")[0])) if m else (None, 0)
        if self.dotted or isinstance(raw, bool) or not isinstance(raw, SupportsIndex):
            return None, 0
        number = operator.index(raw)  # any integer, numpy's included
        return (str(number), number) if number >= 0 else (None, 0)


def _text(value: object) -> object:
    """HDF5 attributes may come back as bytes; compare them as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], *, force: bool, refusal: str = "use --force to replace it"
) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`; on success it becomes `path` in one step, on error it is removed.

    An existing `path` is refused (FileExistsError "{path} already exists ({refusal})") unless `force`;
    the temporary name carries the process id and a random token, so concurrent writers never share one.
    Without `force` the final step also refuses a file that appeared while writing.
    """
    target = Path(path)
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists ({refusal})")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"folder {target.parent} does not exist")
    tmp = temporary_path(target)
    try:
        yield tmp
        _commit(tmp, target, force, refusal)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_path(target: Path) -> Path:
    """A name beside `target` that no other writer uses: target name + pid + random token + ".tmp"."""
    return target.with_name(f"{target.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")


def _commit(tmp: Path, target: Path, force: bool, refusal: str) -> None:
    if force:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # fails if target exists: no check-then-replace race between writers
    except FileExistsError:
        raise FileExistsError(f"{target} already exists ({refusal})") from None
    except OSError:  # a file system without hard links
        os.replace(tmp, target)


def utc_now() -> str:
    """The current time as ISO-8601 UTC with seconds, e.g. "2026-12-01T09:00:00+00:00" (creation stamps)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def software_version() -> str:
    """The installed rram-hil version (for provenance); "unknown" when running from an uninstalled source tree."""
    from importlib import metadata  # here, not at the top: only writers need it, and it costs ~20 ms at start-up

    try:
        return metadata.version("rram-hil")
    except metadata.PackageNotFoundError:
        return "unknown"


def json_text(value: Any, indent: int | None = None) -> str:
    """``value`` as strict JSON: NaN and +-inf become null, numpy/torch values plain numbers or lists, paths text.

    Mappings keep their order (keys as text); tuples and sets become lists; anything else is written as its str().
    """
    return json.dumps(_plain(value), indent=indent, allow_nan=False)


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return _plain(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)
