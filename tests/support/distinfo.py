"""Distributions made by hand: real installable wheels, and dist-info directories written
directly into a site directory, as a broken, old or hostile installer leaves them."""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path


def _escaped(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name)


def wheel_file_name(name: str, version: str) -> str:
    return f"{_escaped(name)}-{version}-py3-none-any.whl"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_wheel(out: Path, name: str, files: Mapping[str, str], version: str = "1.0") -> Path:
    """A real, installable wheel (METADATA, WHEEL, RECORD with hashes) holding ``files``."""
    dist_info = f"{_escaped(name)}-{version}.dist-info"
    contents = dict(files)
    contents[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    contents[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: popcon-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [
        f"{path},{_record_hash(text.encode())},{len(text.encode())}"
        for path, text in contents.items()
    ]
    record.append(f"{dist_info}/RECORD,,")
    contents[f"{dist_info}/RECORD"] = "\n".join(record) + "\n"
    path = out / wheel_file_name(name, version)
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in contents.items():
            archive.writestr(member, text)
    return path


def write_dist_info(
    site_packages: Path,
    dir_name: str,
    metadata_name: str | None,
    files: Mapping[str, str] = {},
    record_extra: Iterable[str] = (),
    *,
    record: bool = True,
    top_level: str | None = None,
) -> Path:
    """Install a distribution by hand (no validation); returns its dist-info directory.

    ``metadata_name`` is written verbatim into METADATA's ``Name:`` header (None: no
    METADATA).  ``record=False`` leaves RECORD out, as old installers did;
    ``top_level`` writes top_level.txt.
    """
    for rel, text in files.items():
        target = site_packages / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    info = site_packages / dir_name
    info.mkdir()
    if metadata_name is not None:
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {metadata_name}\nVersion: 1.0\n", encoding="utf-8"
        )
    if top_level is not None:
        (info / "top_level.txt").write_text(top_level + "\n")
    if record:
        lines = [f"{rel},," for rel in files] + list(record_extra) + [f"{dir_name}/RECORD,,"]
        (info / "RECORD").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return info
