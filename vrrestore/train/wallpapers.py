"""SR training photographs from Debian's wallpaper packages (the ``sr`` release schedule's second source).

    vrrestore train wallpapers [--dest DIR] [--manifest CSV]

downloads the packages with ``apt-get download`` (into a temp folder; nothing is installed), unpacks
them with ``dpkg -x``, keeps only the photographs picked by eye for the SR crops pack (the ``deb:``
rows of ``sr_hq/train_crops_manifest.csv``; the same list is built in as ``PHOTOS``), downscales each
so its short side is at most 1200 px (INTER_AREA) and writes ``DEST/<package>/<name>.jpg`` (JPEG q95,
atomically) plus ``DEST/SOURCES.txt`` (package, version, file, licence and copyright from the
package's debian/copyright). The training loader crops 256 px patches from these at training time;
pre-shrinking keeps a 2-core data loader from decoding 4K JPEGs per sample.

Idempotent: a package whose photographs and SOURCES.txt rows are all present is not downloaded again.
Never commit the output: it is data, rebuilt by this command on any Debian/Ubuntu machine.
"""

from __future__ import annotations

import csv
import fnmatch
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import cache_dir
from ..errors import InputError, UsageError

MAX_SHORT_SIDE = 1200
JPEG_QUALITY = 95
SOURCES_FILE = "SOURCES.txt"

# The photographs (not drawings, gradients or logos) picked by eye from each package: the ``deb:``
# sources of ../shared/data/sr_hq/train_crops_manifest.csv, for machines without that file.
_BG = "usr/share/backgrounds"
_KDE = "usr/share/wallpapers"
PHOTOS: dict[str, tuple[str, ...]] = {
    "plasma-workspace-wallpapers": tuple(
        f"{_KDE}/{name}/contents/images/1920x1080.jpg"
        for name in ("BytheWater", "ColdRipple", "EveningGlow", "FallenLeaf", "Grey", "OneStandsOut", "Path", "summer_1am")
    ),
    "mate-backgrounds": tuple(
        f"{_BG}/mate/nature/{name}.jpg"
        for name in ("Aqua", "Blinds", "Dune", "Garden", "GreenMeadow", "LadyBird", "TwoWings", "YellowFlower")
    ),
    "lomiri-wallpapers-20.04": (f"{_BG}/Kleiber_by_Lukas_Baubkus.jpg",),
    "lomiri-wallpapers-16.04": tuple(
        f"{_BG}/{name}.jpg"
        for name in (
            "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
            "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "analogpattern_by_Peter_Nerlich",
            "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "life_by_Aitzol_Berasategi",
            "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi",
        )
    ),
}

# download(package, folder): put ``<package>_<version>_<arch>.deb`` into ``folder``; the test seam.
Download = Callable[[str, Path], None]

_COLUMNS = ("file", "package", "version", "source", "source_size", "size", "licence", "copyright")


def default_dest() -> Path:
    return cache_dir("data", "wallpapers")


@dataclass
class WallpaperResult:
    dest: Path
    photos: list[Path] = field(default_factory=list)  # every listed photograph present in dest
    written: int = 0  # written by this call
    downloaded: list[str] = field(default_factory=list)  # packages fetched by this call
    missing: list[str] = field(default_factory=list)  # "package/path" listed but not in the package

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.photos)


# ------------------------------------------------------------------------------------------------
# the photo list


def photos_from_manifest(path: Path) -> dict[str, tuple[str, ...]]:
    """``{package: (path inside the package, ...)}`` from the ``source`` column's ``deb:PKG/PATH`` rows."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise UsageError(f"--manifest {path}: cannot read ({err.strerror or err})") from None
    if rows and "source" not in rows[0]:
        raise UsageError(f"--manifest {path}: no 'source' column (expected sr_hq/train_crops_manifest.csv)")
    out: dict[str, list[str]] = {}
    for row in rows:
        src = (row.get("source") or "").strip()
        if not src.startswith("deb:") or "/" not in src:
            continue
        pkg, inner = src[4:].split("/", 1)
        if inner not in out.setdefault(pkg, []):
            out[pkg].append(inner)
    if not out:
        raise UsageError(f"--manifest {path}: no 'deb:<package>/<path>' sources in it")
    return {pkg: tuple(sorted(paths)) for pkg, paths in out.items()}


def output_name(inner: str) -> str:
    """``usr/share/wallpapers/Path/contents/images/1920x1080.jpg`` -> ``Path.jpg`` (a KDE wallpaper's
    file is named by a screen size it does not always have); ``usr/share/backgrounds/mate/nature/Aqua.jpg``
    -> ``mate_nature_Aqua.jpg``."""
    parts = list(Path(inner).parts)
    if parts[:2] == ["usr", "share"]:
        parts = parts[3:] or parts[-1:]
    parts = [p for p in parts[:-1] if p not in ("contents", "images")] + [Path(parts[-1]).stem]
    if len(parts) > 1 and re.fullmatch(r"\d+x\d+", parts[-1]):
        parts = parts[:-1]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "_".join(parts)) + ".jpg"


# ------------------------------------------------------------------------------------------------
# SOURCES.txt


def read_sources(dest: Path) -> dict[str, dict[str, str]]:
    """The rows of DEST/SOURCES.txt by output file (relative to DEST); {} when absent."""
    path = dest / SOURCES_FILE
    if not path.is_file():
        return {}
    rows: dict[str, dict[str, str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) == len(_COLUMNS) and cells[0] != "file":
            rows[cells[0]] = dict(zip(_COLUMNS, cells, strict=True))
    return rows


def write_sources(dest: Path, rows: Mapping[str, Mapping[str, str]]) -> None:
    from ..io import atomic_write

    head = [
        "# Photographs from Debian wallpaper packages for SR training (vrrestore train wallpapers).",
        f"# Short side downscaled to <= {MAX_SHORT_SIDE} px (INTER_AREA), JPEG q{JPEG_QUALITY}; sizes are WxH.",
        "# Licence and copyright as the package's debian/copyright states them. Data: never commit it.",
        "\t".join(_COLUMNS),
    ]
    body = ["\t".join(_clean(rows[k].get(c, "")) for c in _COLUMNS) for k in sorted(rows)]
    text = "\n".join(head + body) + "\n"
    atomic_write(dest / SOURCES_FILE, lambda f: f.write(text.encode("utf-8")))


def _clean(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def parse_copyright(text: str) -> list[tuple[list[str], str, str]]:
    """(patterns, licence, copyright) per ``Files:`` paragraph of a DEP-5 debian/copyright, in order."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields:
            lic = fields.get("license", "").split("\n", 1)[0].strip()
            cop = "; ".join(x.strip() for x in fields.get("copyright", "").split("\n") if x.strip())
            out.append((fields["files"].split(), lic, cop))
    return out


def licence_of(inner: str, paragraphs: Sequence[tuple[list[str], str, str]]) -> tuple[str, str]:
    """(licence, copyright) of an installed file: the last ``Files:`` paragraph that matches it.

    The patterns name files in the source tree, not where they are installed, so a pattern matches
    the installed path's tail, or (when its last part has no wildcard) the file name alone."""
    found = ("", "")
    name = Path(inner).name
    for patterns, lic, cop in paragraphs:
        for pat in patterns:
            base = pat.rsplit("/", 1)[-1]
            if (fnmatch.fnmatchcase(inner, pat) or fnmatch.fnmatchcase(inner, "*/" + pat)
                    or (not any(c in base for c in "*?[") and base == name)):
                found = (lic, cop)
                break
    return found


# ------------------------------------------------------------------------------------------------
# downloading and unpacking


_FIX = "run `apt-get update` (as root) on this Debian/Ubuntu machine and retry"


def apt_download(package: str, folder: Path) -> None:
    """The real download: ``apt-get download PACKAGE`` in ``folder`` (needs apt's package lists)."""
    if shutil.which("apt-get") is None:
        raise UsageError(f"{package}: apt-get not found; `vrrestore train wallpapers` needs a Debian/Ubuntu machine with apt")
    proc = subprocess.run(["apt-get", "download", package], cwd=folder, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [x.strip() for x in (proc.stderr + "\n" + proc.stdout).splitlines() if x.strip()]
        why = next((x for x in lines if x.startswith("E:")), lines[-1] if lines else f"exit code {proc.returncode}")
        raise UsageError(f"{package}: `apt-get download {package}` failed ({why}); {_FIX}")


def _run(cmd: list[str], what: str) -> str:
    if shutil.which(cmd[0]) is None:
        raise UsageError(f"{what}: {cmd[0]} not found; `vrrestore train wallpapers` needs a Debian/Ubuntu machine (dpkg)")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise UsageError(f"{what}: `{' '.join(cmd[:2])}` failed ({last})")
    return proc.stdout


def _fetch(package: str, tmp: Path, download: Download) -> tuple[Path, str]:
    """Download + unpack one package into ``tmp``; (root of its files, version)."""
    folder = tmp / "debs" / package
    folder.mkdir(parents=True)
    download(package, folder)
    debs = sorted(folder.glob(f"{package}_*.deb"))
    if not debs:
        raise UsageError(f"{package}: the download produced no {package}_*.deb; {_FIX}")
    deb = debs[-1]
    version = _run(["dpkg-deb", "-f", str(deb), "Version"], package).strip()
    root = tmp / "root" / package
    root.mkdir(parents=True)
    _run(["dpkg", "-x", str(deb), str(root)], package)
    deb.unlink()  # the biggest is ~94 MB; keep the temp folder small
    return root, version


def _copyright(root: Path, package: str) -> list[tuple[list[str], str, str]]:
    path = root / "usr/share/doc" / package / "copyright"
    try:
        return parse_copyright(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []


def _inside(root: Path, inner: str) -> Path | None:
    """The file ``inner`` of an unpacked package, following (relative) symlinks that stay inside it."""
    p = root / inner
    try:
        real = p.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_file() or not real.is_relative_to(root.resolve()):
        return None
    return real


def shrink(img: np.ndarray, max_short: int = MAX_SHORT_SIDE) -> np.ndarray:
    """Downscale (INTER_AREA) so the short side is at most ``max_short``; smaller images unchanged."""
    import cv2

    h, w = img.shape[:2]
    if min(h, w) <= max_short:
        return img
    f = max_short / min(h, w)
    size = (max_short, round(h * f)) if w <= h else (round(w * f), max_short)
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _write_photo(src: Path, out: Path) -> tuple[str, str]:
    """Read, shrink and write one photograph as JPEG q95 (atomically); (source WxH, output WxH)."""
    import cv2

    from ..io import atomic_write

    img = cv2.imdecode(np.fromfile(src, np.uint8), cv2.IMREAD_COLOR)  # 8-bit BGR, EXIF-upright, alpha dropped
    if img is None:
        raise InputError(f"{src.name}: not an image OpenCV can decode")
    small = shrink(img)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise InputError(f"{out}: JPEG encoding failed")
    atomic_write(out, lambda f: f.write(buf.tobytes()))
    return f"{img.shape[1]}x{img.shape[0]}", f"{small.shape[1]}x{small.shape[0]}"


# ------------------------------------------------------------------------------------------------
# the command


def prepare_wallpapers(
    dest: Path | None = None, photos: Mapping[str, Sequence[str]] | None = None, manifest: Path | None = None,
    download: Download = apt_download, say: Callable[[str], None] = print,
) -> WallpaperResult:
    """Fill ``dest`` (default: the vrrestore cache's data/wallpapers) with the listed photographs.

    ``photos`` ({package: paths inside it}) wins over ``manifest`` (a train_crops_manifest.csv),
    which wins over the built-in ``PHOTOS``. ``download`` fetches one package's .deb into a folder.
    """
    dest = Path(dest) if dest is not None else default_dest()
    wanted = dict(photos) if photos is not None else (photos_from_manifest(manifest) if manifest else PHOTOS)
    dest.mkdir(parents=True, exist_ok=True)
    rows = read_sources(dest)
    result = WallpaperResult(dest)
    todo = [pkg for pkg, inners in wanted.items()
            if not all((dest / pkg / output_name(i)).is_file() and f"{pkg}/{output_name(i)}" in rows for i in inners)]
    if todo:
        with tempfile.TemporaryDirectory(prefix="vrrestore-wallpapers-") as tmp_s:
            tmp = Path(tmp_s)
            for pkg in todo:
                say(f"{pkg}: downloading")
                root, version = _fetch(pkg, tmp, download)
                result.downloaded.append(pkg)
                paragraphs = _copyright(root, pkg)
                for inner in wanted[pkg]:
                    rel = f"{pkg}/{output_name(inner)}"
                    src = _inside(root, inner)
                    if src is None:
                        result.missing.append(f"{pkg}/{inner}")
                        say(f"{pkg} {version}: {inner} is not in the package; skipped")
                        continue
                    out = dest / rel
                    if out.is_file() and rel in rows:
                        continue
                    src_size, size = _write_photo(src, out)
                    result.written += 1
                    lic, cop = licence_of(inner, paragraphs)
                    rows[rel] = {"file": rel, "package": pkg, "version": version, "source": inner,
                                 "source_size": src_size, "size": size, "licence": lic, "copyright": cop}
                write_sources(dest, rows)  # after each package, so an interrupted run keeps its records
                shutil.rmtree(root, ignore_errors=True)
    result.photos = [dest / pkg / output_name(i) for pkg, inners in wanted.items() for i in inners
                     if (dest / pkg / output_name(i)).is_file()]
    return result
