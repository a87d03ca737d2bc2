"""Fetch the open MIMIC-IV Clinical Database Demo 2.2 from PhysioNet, checked against its published sums.

The demo (100 patients, 140 ICU stays, ODC Open Database License) needs no credentials. Only the
tables carebench reads are fetched, with the release's LICENSE.txt and README.txt and its
`SHA256SUMS.txt`; every file is hashed while it streams and must match the published sum. The
download goes into a partial directory that is renamed into place only when every file matched, so
a failed or interrupted download leaves nothing behind. Nothing here runs unless called: the build
never reaches the network.

>>> demo_files()[:3]
['hosp/patients.csv.gz', 'hosp/admissions.csv.gz', 'icu/icustays.csv.gz']
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import carebench_data
from carebench_data.errors import CarebenchDataError
from carebench_data.raw import MIMIC_IV_TABLES

logger = logging.getLogger(__name__)

DEMO_BASE_URL = "https://physionet.org/files/mimic-iv-demo/2.2/"
"""Where PhysioNet publishes the demo's files and SHA256SUMS.txt."""
SUMS_FILE = "SHA256SUMS.txt"
RELEASE_NOTES = ("LICENSE.txt", "README.txt")
"""Fetched with the tables when the release lists them: the licence travels with the data."""
_TIMEOUT_SECONDS = 60
_READ_BYTES = 1 << 20


class DownloadError(CarebenchDataError):
    """The demo could not be fetched (network, URL, or a listing that is not the MIMIC-IV demo)."""


class ChecksumError(CarebenchDataError):
    """A fetched file does not match its published SHA-256 sum."""


def demo_files() -> list[str]:
    """Relative paths of the demo files carebench reads (the csv.gz form of each MIMIC-IV table)."""
    return [f"{spec.folder}/{spec.name}.csv.gz" for spec in MIMIC_IV_TABLES.values()]


def parse_sums(text: str) -> dict[str, str]:
    r"""`sha256sum` lines (`<hex digest>  <relpath>`, optional `*` or `./`) → {relpath: digest}.

    >>> parse_sums("ab12  hosp/patients.csv.gz\ncd34 *./LICENSE.txt\n")
    {'hosp/patients.csv.gz': 'ab12', 'LICENSE.txt': 'cd34'}
    """
    sums = {}
    for line in text.splitlines():
        if line.strip():
            digest, relpath = line.split(maxsplit=1)
            sums[relpath.strip().lstrip("*").removeprefix("./")] = digest.lower()
    return sums


def fetch_mimic_iv_demo(
    dest: Path,
    *,
    base_url: str = DEMO_BASE_URL,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download the demo's tables into `dest` (hosp/, icu/, LICENSE.txt, README.txt, SHA256SUMS.txt).

    Args:
        dest: the new MIMIC-IV root; it must not exist, or be an empty directory.
        base_url: the release folder (`https://...`, or `file://...` for a local copy); it must hold
            `SHA256SUMS.txt` and the files it lists, under their relative paths.
        progress: optional callback `(files done, files total)`.

    Returns:
        `dest`, ready for `carebench data build --mimic-iv dest --no-cxr`.

    Raises:
        DownloadError: `dest` is not empty, the URL cannot be read, or the listing lacks a table.
        ChecksumError: a file differs from its published sum (nothing is left behind).
    """
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DownloadError(f"{dest} already exists and is not empty; choose a new directory for the demo")
    base = base_url if base_url.endswith("/") else base_url + "/"
    if urllib.parse.urlsplit(base).scheme not in {"https", "http", "file"}:
        raise DownloadError(f"unsupported URL {base_url!r}: use https://, http:// or file://")
    published = parse_sums(_read_url(base + SUMS_FILE).decode("utf-8", errors="replace"))
    missing = [relpath for relpath in _required_files() if relpath not in published]
    if missing:
        raise DownloadError(
            f"{base}{SUMS_FILE} does not list {', '.join(missing)}: is {base} the MIMIC-IV demo release?"
        )
    wanted = [relpath for relpath in [*demo_files(), *RELEASE_NOTES] if relpath in published]
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.parent / f".{dest.name}.partial-{secrets.token_hex(4)}"
    partial.mkdir()
    try:
        for done, relpath in enumerate(wanted):
            _fetch_checked(base + relpath, partial / relpath, expected=published[relpath], relpath=relpath)
            if progress is not None:
                progress(done + 1, len(wanted))
        listing = "".join(f"{published[relpath]}  {relpath}\n" for relpath in sorted(published))
        (partial / SUMS_FILE).write_text(listing)
        if dest.exists():
            dest.rmdir()
        os.replace(partial, dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("fetched %d files of the MIMIC-IV demo from %s into %s", len(wanted), base, dest)
    return dest


def _required_files() -> list[str]:
    return [f"{spec.folder}/{spec.name}.csv.gz" for spec in MIMIC_IV_TABLES.values() if spec.required]


def _open(url: str) -> Any:
    """The opened response (a context manager with `read`); failures become one-line `DownloadError`s."""
    request = urllib.request.Request(url, headers={"User-Agent": f"carebench/{carebench_data.__version__}"})
    try:
        return urllib.request.urlopen(request, timeout=_TIMEOUT_SECONDS)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"cannot fetch {url} ({reason}); check the network or --base-url") from None


def _read_url(url: str) -> bytes:
    with _open(url) as response:
        return bytes(response.read())


def _fetch_checked(url: str, target: Path, *, expected: str, relpath: str) -> None:
    """Stream `url` into `target`, hashing as it goes; a digest other than `expected` raises."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with _open(url) as response, open(target, "wb") as handle:
        try:
            while chunk := response.read(_READ_BYTES):
                digest.update(chunk)
                handle.write(chunk)
        except OSError as error:
            raise DownloadError(f"download of {url} failed ({error}); try again") from None
    actual = digest.hexdigest()
    if actual != expected:
        raise ChecksumError(
            f"{relpath}: SHA-256 {actual[:12]}… does not match the published {expected[:12]}… ({url}); "
            "the download was discarded, nothing was written"
        )
