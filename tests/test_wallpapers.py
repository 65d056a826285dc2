"""`vrrestore train wallpapers`: Debian wallpaper photographs for SR training, with a fake .deb built
here (dpkg-deb --build) and a fake download; the network is never touched."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_main import run_main

from vrrestore.train import wallpapers as wp

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None,
                                reason="needs dpkg-deb and dpkg (Debian/Ubuntu)")

PKG = "fake-wallpapers"
BIG = "usr/share/backgrounds/fake/Big_by_Someone.jpg"  # 1500x1300: downscaled to short side 1200
SMALL = "usr/share/backgrounds/fake/small.png"  # 300x200 RGBA PNG: kept at its size, alpha dropped
KDE = "usr/share/wallpapers/Lake/contents/images/1920x1080.jpg"  # a symlink, as in plasma-workspace-wallpapers
NOT_PHOTO = "usr/share/backgrounds/fake/gradient.png"  # in the package, not in the list
LISTED = {PKG: (BIG, SMALL, KDE)}

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake-wallpapers

Files: *
Copyright: 2020 The Fake Group
License: GPL-2+

Files: upstream/Big_by_Someone.jpg
Copyright: 2018, Some One
           2019 Another
License: CC-BY-4.0

Files: debian/*
Copyright: 2021 A Packager
License: GPL-2+
"""


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (max(2, h // 64), max(2, w // 64), 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    return cv2.add(img, rng.integers(0, 8, img.shape, dtype=np.uint8))


def build_deb(folder: Path, package: str = PKG, version: str = "1:2.0-3") -> Path:
    """A real .deb: two photographs, a symlinked KDE-style one, a non-photo and a DEP-5 copyright."""
    root = folder / f"{package}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <t@example.org>\n"
        "Description: fake wallpapers for a test\n")
    for inner in (BIG, SMALL, NOT_PHOTO, KDE):
        (root / inner).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / BIG), _photo(1300, 1500, 0), [cv2.IMWRITE_JPEG_QUALITY, 90])
    rgba = np.dstack([_photo(200, 300, 1), np.full((200, 300), 128, np.uint8)])
    cv2.imwrite(str(root / SMALL), rgba)
    cv2.imwrite(str(root / NOT_PHOTO), np.tile(np.arange(64, dtype=np.uint8)[None, :, None], (64, 1, 3)))
    kde = root / KDE
    cv2.imwrite(str(kde.with_name("2560x1600.jpg")), _photo(250, 400, 2))
    kde.symlink_to("2560x1600.jpg")
    doc = root / "usr/share/doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    deb = folder / f"{package}_{version.split(':')[-1]}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


class FakeApt:
    """Stands in for `apt-get download`: copies the prepared .deb into the folder, records each call."""

    def __init__(self, debs: dict[str, Path]) -> None:
        self.debs = debs
        self.calls: list[str] = []

    def __call__(self, package: str, folder: Path) -> None:
        self.calls.append(package)
        if package in self.debs:
            shutil.copy(self.debs[package], folder)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_deb(tmp_path_factory.mktemp("deb"))


def test_keeps_only_the_listed_photos_downscaled_with_sources(deb: Path, tmp_path: Path) -> None:
    apt = FakeApt({PKG: deb})
    dest = tmp_path / "wallpapers"
    res = wp.prepare_wallpapers(dest, photos=LISTED, download=apt, say=lambda _s: None)
    assert apt.calls == [PKG] and res.downloaded == [PKG] and res.written == 3 and not res.missing
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["SOURCES.txt", f"{PKG}/Lake.jpg", f"{PKG}/fake_Big_by_Someone.jpg", f"{PKG}/fake_small.jpg"]
    assert sorted(res.photos) == sorted(dest / f for f in files[1:])
    shapes = {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape for p in res.photos}
    assert shapes["fake_Big_by_Someone.jpg"] == (1200, 1385, 3)  # short side 1300 -> 1200, aspect kept
    assert shapes["fake_small.jpg"] == (200, 300, 3)  # already small: size kept, alpha dropped
    assert shapes["Lake.jpg"] == (250, 400, 3)  # the symlink's target
    for p in res.photos:
        assert p.read_bytes()[:2] == b"\xff\xd8"  # JPEG
    assert res.total_bytes == sum(p.stat().st_size for p in res.photos)
    assert not [p for p in dest.rglob(".*") if p.is_file()]  # no temp files left behind
    rows = wp.read_sources(dest)
    big = rows[f"{PKG}/fake_Big_by_Someone.jpg"]
    assert big["package"] == PKG and big["version"] == "1:2.0-3" and big["source"] == BIG
    assert big["source_size"] == "1500x1300" and big["size"] == "1385x1200"
    assert big["licence"] == "CC-BY-4.0" and big["copyright"] == "2018, Some One; 2019 Another"
    assert rows[f"{PKG}/fake_small.jpg"]["licence"] == "GPL-2+"  # `Files: *`, not `debian/*`
    assert (dest / "SOURCES.txt").read_text().startswith("# Photographs from Debian wallpaper packages")


def test_second_run_downloads_nothing_and_a_lost_photo_is_fetched_again(deb: Path, tmp_path: Path) -> None:
    dest = tmp_path / "w"
    wp.prepare_wallpapers(dest, photos=LISTED, download=FakeApt({PKG: deb}), say=lambda _s: None)
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    apt = FakeApt({PKG: deb})
    res = wp.prepare_wallpapers(dest, photos=LISTED, download=apt, say=lambda _s: None)
    assert apt.calls == [] and res.downloaded == [] and res.written == 0 and len(res.photos) == 3
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()} == before  # nothing rewritten
    (dest / PKG / "fake_small.jpg").unlink()
    res = wp.prepare_wallpapers(dest, photos=LISTED, download=apt, say=lambda _s: None)
    assert apt.calls == [PKG] and res.written == 1 and len(res.photos) == 3
    assert len(wp.read_sources(dest)) == 3


def test_a_listed_file_the_package_lacks_is_reported_not_fatal(deb: Path, tmp_path: Path) -> None:
    listed = {PKG: (BIG, "usr/share/backgrounds/fake/gone.jpg")}
    res = wp.prepare_wallpapers(tmp_path / "w", photos=listed, download=FakeApt({PKG: deb}), say=lambda _s: None)
    assert res.missing == [f"{PKG}/usr/share/backgrounds/fake/gone.jpg"] and len(res.photos) == 1


def test_a_package_the_download_does_not_deliver_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(wp.UsageError) as err:
        wp.prepare_wallpapers(tmp_path / "w", photos={"nosuch-wallpapers": ("a.jpg",)}, download=FakeApt({}),
                              say=lambda _s: None)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("nosuch-wallpapers:") and "apt-get update" in msg


def _fake_apt_get(bin_dir: Path, debs: Path) -> None:
    """An `apt-get` on PATH that serves .debs from a folder and fails like apt for anything else."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "apt-get"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = download ] || exit 2\n'
        f'for f in "{debs}/$2"_*.deb; do [ -f "$f" ] && cp "$f" . && exit 0; done\n'
        'echo "E: Unable to locate package $2" >&2\nexit 100\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_apt_download_failure_names_the_package_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_apt_get(tmp_path / "bin", tmp_path / "debs")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(wp.UsageError) as err:
        wp.apt_download("lomiri-wallpapers-20.04", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("lomiri-wallpapers-20.04:")
    assert "E: Unable to locate package lomiri-wallpapers-20.04" in msg and "apt-get update" in msg


def test_builtin_list_matches_the_crops_manifest(tmp_path: Path) -> None:
    manifest = Path(os.environ.get("VRRESTORE_DATA", Path(__file__).parents[2] / "shared/data")) / "sr_hq/train_crops_manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"{manifest} not on this machine")
    assert wp.photos_from_manifest(manifest) == {k: tuple(sorted(v)) for k, v in wp.PHOTOS.items()}
    assert sum(map(len, wp.PHOTOS.values())) == 30
    names = [f"{k}/{wp.output_name(i)}" for k, v in wp.PHOTOS.items() for i in v]
    assert len(set(names)) == len(names)  # no two photographs share an output file


def test_copyright_matching() -> None:
    paras = wp.parse_copyright(COPYRIGHT + "\nFiles: 16.04/Dragonfly_by_Bolly.jpg\nCopyright: \"Bolly\", 2018\nLicense: CC-BY-SA-4.0\n")
    assert wp.licence_of("usr/share/backgrounds/Dragonfly_by_Bolly.jpg", paras) == ("CC-BY-SA-4.0", '"Bolly", 2018')
    assert wp.licence_of("usr/share/backgrounds/other.jpg", paras) == ("GPL-2+", "2020 The Fake Group")
    assert wp.licence_of("x.jpg", []) == ("", "")


# ------------------------------------------------------------------------------------------------
# the command line


def _manifest(path: Path, sources: list[str]) -> Path:
    path.write_text("location,source\n" + "".join(f"pack.tar:x{i}.jpg,{s}\n" for i, s in enumerate(sources)))
    return path


def test_cli_dest_and_default_cache(deb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    debs = tmp_path / "debs"
    debs.mkdir()
    shutil.copy(deb, debs)
    _fake_apt_get(tmp_path / "bin", debs)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "cache"))
    man = _manifest(tmp_path / "m.csv", [f"deb:{PKG}/{BIG}", f"deb:{PKG}/{SMALL}", "repo+x:data/a.png"])
    code, _, err = run_main(monkeypatch, capsys, "train", "wallpapers", "--dest", str(tmp_path / "d"), "--manifest", str(man))
    assert code == 0, err
    assert "wallpapers: 2 photos (2 new" in err and f"downloaded {PKG}" in err
    assert sorted(p.name for p in (tmp_path / "d" / PKG).iterdir()) == ["fake_Big_by_Someone.jpg", "fake_small.jpg"]
    code, _, err = run_main(monkeypatch, capsys, "train", "wallpapers", "--dest", str(tmp_path / "d"), "--manifest", str(man))
    assert code == 0 and "downloaded nothing (all present)" in err
    code, _, err = run_main(monkeypatch, capsys, "train", "wallpapers", "--manifest", str(man))  # default: the cache
    assert code == 0 and (tmp_path / "cache" / "data" / "wallpapers" / PKG / "fake_Big_by_Someone.jpg").is_file()


def test_cli_missing_package_and_bad_manifest_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _fake_apt_get(tmp_path / "bin", tmp_path / "debs")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    man = _manifest(tmp_path / "m.csv", ["deb:nosuch-wallpapers/usr/share/backgrounds/a.jpg"])
    code, _, err = run_main(monkeypatch, capsys, "train", "wallpapers", "--dest", str(tmp_path / "d"), "--manifest", str(man))
    lines = [x for x in err.splitlines() if x.strip() and "downloading" not in x]
    assert code == 2 and len(lines) == 1 and "nosuch-wallpapers" in lines[0] and "apt-get update" in lines[0]
    code, _, err = run_main(monkeypatch, capsys, "train", "wallpapers", "--manifest", str(tmp_path / "none.csv"))
    assert code == 2 and "--manifest" in err and "no such file" in err
    bad = _manifest(tmp_path / "bad.csv", ["repo+x:data/a.png"])
    code, _, err = run_main(monkeypatch, capsys, "train", "wallpapers", "--dest", str(tmp_path / "d"), "--manifest", str(bad))
    assert code == 2 and "no 'deb:<package>/<path>' sources" in err
