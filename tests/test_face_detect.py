"""Face detection: yuface on real photos, face selection, RetinaFace network/weights/decoding (no download)."""

from __future__ import annotations

import importlib.util
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vrrestore.errors import UsageError, WeightsError
from vrrestore.face import detect as D
from vrrestore.face import retinaface as R
from vrrestore.face.detect import DetectorUnavailable, Face, draw_faces, make_detector, resolve_detector, select_faces


pytestmark = pytest.mark.usefixtures("yuface_one_omp_thread")

skdata = pytest.importorskip("skimage.data")

# Hand-checked on an 8x nearest-neighbour zoom of skimage's astronaut with a 5 px grid (x, y):
# pupil centres, nose tip highlight, mouth corners.
ASTRONAUT_POINTS = np.array([[202, 101], [246, 103], [223, 128], [202, 140], [244, 140]], dtype=np.float32)
# grace_hopper.jpg (matplotlib sample data): dlib-68 / MediaPipe FaceMesh consensus from shared/notes/deps.md
# (not hand-checked here: matplotlib is not installed in this venv, so that case is skipped).
GRACE_POINTS = np.array([[223, 192], [306, 188], [267, 240], [232, 281], [301, 277]], dtype=np.float32)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty vrrestore cache, and a network that fails the test if anything tries to download."""
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path / "cache"))

    def no_network(*args, **kwargs):
        raise AssertionError(f"unexpected download: {args[0] if args else kwargs}")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path / "cache"


def yu():
    pytest.importorskip("yuface")
    return make_detector("yuface")


# ------------------------------------------------------------------------------------------- yuface


def test_yuface_finds_astronaut_landmarks_within_a_few_pixels():
    faces = yu().detect(skdata.astronaut())
    assert len(faces) == 1
    f = faces[0]
    assert f.score > 0.8
    assert f.landmarks.shape == (5, 2) and f.landmarks.dtype == np.float32
    err = np.linalg.norm(f.landmarks - ASTRONAUT_POINTS, axis=1)
    assert err.max() < 6.0, err
    x1, y1, x2, y2 = f.box
    assert (f.landmarks[:, 0] > x1).all() and (f.landmarks[:, 0] < x2).all()
    assert (f.landmarks[:, 1] > y1).all() and (f.landmarks[:, 1] < y2).all()
    assert 70 < f.width < 120 and 80 < f.height < 130


def test_yuface_on_grace_hopper_if_matplotlib_is_installed():
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        pytest.skip("matplotlib (which ships grace_hopper.jpg) is not installed")
    path = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    faces = yu().detect(rgb)
    assert len(faces) == 1
    err = np.linalg.norm(faces[0].landmarks - GRACE_POINTS, axis=1)
    assert err[:3].max() < 8.0, err  # eyes, nose
    assert err[3:].max() < 16.0, err  # yuface puts mouth corners ~12 px high here (deps.md)


def test_yuface_grayscale_photo_and_no_face_photo():
    det = yu()
    gray = skdata.camera()  # (512, 512) uint8, a man with a camera
    faces = det.detect(gray)
    assert len(faces) == 1
    assert 180 < faces[0].center[0] < 270 and 110 < faces[0].center[1] < 200
    assert det.detect(skdata.coffee()) == []


def test_yuface_large_image_is_shrunk_and_results_scaled_back():
    det = yu()
    big = cv2.resize(skdata.astronaut(), (1280, 1280), interpolation=cv2.INTER_CUBIC)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # yuface warns above 960 px: we must never hand it such an image
        faces = det.detect(big)
    assert len(faces) == 1
    expected = (ASTRONAUT_POINTS + 0.5) * 2.5 - 0.5
    assert np.linalg.norm(faces[0].landmarks - expected, axis=1).max() < 6.0 * 2.5


def test_yuface_threshold_filters():
    pytest.importorskip("yuface")
    assert make_detector("yuface", threshold=0.99).detect(skdata.astronaut()) == []
    assert len(make_detector("yuface", threshold=0.3).detect(skdata.astronaut())) == 1


# ------------------------------------------------------------------------------------------- selection


def _face(x, y, size, score=0.9) -> Face:
    box = np.array([x, y, x + size, y + size], dtype=np.float32)
    pts = np.array([[x + 0.3 * size, y + 0.4 * size]] * 5, dtype=np.float32)
    return Face(box, pts, score)


def test_select_faces_modes_sizes_and_order():
    faces = [_face(0, 0, 20), _face(300, 300, 50), _face(900, 0, 80), _face(480, 480, 30)]
    hw = (1000, 1000)
    assert [f.size for f in select_faces(faces, hw)] == [80, 50, 30, 20]  # largest first
    assert [f.size for f in select_faces(faces, hw, mode="largest")] == [80]
    assert [f.size for f in select_faces(faces, hw, mode="center")] == [30]  # centre (495, 495)
    assert [f.size for f in select_faces(faces, hw, min_size=30)] == [80, 50, 30]
    assert [f.size for f in select_faces(faces, hw, max_faces=2)] == [80, 50]
    assert select_faces(faces, hw, min_size=100) == []
    with pytest.raises(UsageError):
        select_faces(faces, hw, mode="smallest")  # type: ignore[arg-type]


def test_draw_faces_draws_on_a_copy():
    img = np.zeros((200, 200, 3), np.uint8)
    out = draw_faces(img, [_face(50, 50, 100)])
    assert img.max() == 0
    assert out[50, 50:150].max() > 0 and out[100, 100].max() == 0  # box edge drawn, inside left alone
    assert out[int(50 + 40), int(50 + 30)].max() > 0  # landmark dot


# ------------------------------------------------------------------------------------------- choosing


def test_auto_picks_retinaface_only_when_its_weights_are_cached(cache, monkeypatch):
    monkeypatch.setattr(D, "yuface_available", lambda: True)
    assert resolve_detector("auto")[0] == "yuface"
    (cache / "facexlib").mkdir(parents=True)
    (cache / "facexlib" / "detection_mobilenet0.25_Final.pth").write_bytes(b"x")
    assert resolve_detector("auto")[0] == "retinaface-mobile"
    (cache / "facexlib" / "detection_Resnet50_Final.pth").write_bytes(b"x")
    backend, why = resolve_detector("auto")
    assert backend == "retinaface" and "cache" in why
    assert resolve_detector("yuface") == ("yuface", "")
    with pytest.raises(UsageError):
        resolve_detector("mtcnn")


def test_auto_without_yuface_or_cached_weights_is_a_one_line_error(cache, monkeypatch):
    def missing():
        raise DetectorUnavailable("no yuface")

    monkeypatch.setattr(D, "_import_yuface", missing)
    with pytest.raises(DetectorUnavailable) as exc:
        resolve_detector("auto")
    assert "\n" not in str(exc.value) and "--detector retinaface" in str(exc.value)
    assert isinstance(exc.value, WeightsError)


# ------------------------------------------------------------------------------------------- RetinaFace


MOBILE_SHAPES = {  # parameter shapes of facexlib's detection_mobilenet0.25_Final.pth
    "body.stage1.0.0.weight": (8, 3, 3, 3),
    "body.stage1.1.0.weight": (8, 1, 3, 3),
    "body.stage1.1.3.weight": (16, 8, 1, 1),
    "body.stage2.0.3.weight": (128, 64, 1, 1),
    "body.stage3.1.3.weight": (256, 256, 1, 1),
    "fpn.output3.0.weight": (64, 256, 1, 1),
    "fpn.merge1.0.weight": (64, 64, 3, 3),
    "ssh1.conv3X3.0.weight": (32, 64, 3, 3),
    "ssh1.conv7x7_3.0.weight": (16, 16, 3, 3),
    "ClassHead.0.conv1x1.weight": (4, 64, 1, 1),
    "BboxHead.1.conv1x1.weight": (8, 64, 1, 1),
    "LandmarkHead.2.conv1x1.weight": (20, 64, 1, 1),
}
RESNET_SHAPES = {  # torchvision resnet50 names under body., as in detection_Resnet50_Final.pth
    "body.conv1.weight": (64, 3, 7, 7),
    "body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "body.layer2.0.conv2.weight": (128, 128, 3, 3),
    "body.layer4.2.bn3.running_var": (2048,),
    "fpn.output1.0.weight": (256, 512, 1, 1),
    "fpn.output3.0.weight": (256, 2048, 1, 1),
    "ssh3.conv5X5_2.1.weight": (64,),
    "ClassHead.2.conv1x1.weight": (4, 256, 1, 1),
    "LandmarkHead.0.conv1x1.bias": (20,),
}


@pytest.mark.parametrize(
    ("variant", "shapes", "n_keys", "n_params"),
    [("mobilenet0.25", MOBILE_SHAPES, 300, 426_608), ("resnet50", RESNET_SHAPES, 456, 27_293_600)],
)
def test_network_keys_match_facexlib_files(variant, shapes, n_keys, n_params):
    net = R.RetinaFaceNet(variant)
    state = net.state_dict()
    assert len(state) == n_keys
    assert sum(p.numel() for p in net.parameters()) == n_params
    for k, shape in shapes.items():
        assert tuple(state[k].shape) == shape, k
    assert not any("fc" in k or "avg" in k for k in state)  # facexlib drops the classifier


@pytest.mark.parametrize("variant", ["mobilenet0.25", "resnet50"])
def test_prior_count_and_order_match_the_heads(variant):
    net = R.RetinaFaceNet(variant).eval()
    with torch.inference_mode():
        loc, logits, landm = net(torch.zeros(1, 3, 100, 150))
    priors = R.prior_boxes(100, 150, net.cfg)
    assert loc.shape == (1, priors.shape[0], 4) and logits.shape[-1] == 2 and landm.shape[-1] == 10
    # ceil(100/8)*ceil(150/8)*2 anchors of 16 and 32 px first, row-major, anchor fastest
    assert priors.shape[0] == 2 * (13 * 19 + 7 * 10 + 4 * 5)
    torch.testing.assert_close(priors[0], torch.tensor([4 / 150, 4 / 100, 16 / 150, 16 / 100]))
    torch.testing.assert_close(priors[1], torch.tensor([4 / 150, 4 / 100, 32 / 150, 32 / 100]))
    torch.testing.assert_close(priors[2, :2], torch.tensor([12 / 150, 4 / 100]))


def _save_random(path: Path, variant: str = "mobilenet0.25", prefix: str = "module.") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = R.RetinaFaceNet(variant)
    state = {prefix + k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_local_weights_load_with_weights_only_and_no_download(cache, monkeypatch):
    state = _save_random(cache / "facexlib" / "detection_mobilenet0.25_Final.pth")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert resolve_detector("auto")[0] == "retinaface-mobile"
    det = make_detector("auto")
    assert det.name == "retinaface-mobile" and calls == [True]
    loaded = det.net.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(loaded[k[len("module.") :]], v)
    faces = det.detect(skdata.astronaut())  # random weights: anything goes, but it must run and parse
    assert all(f.landmarks.shape == (5, 2) and 0.8 < f.score <= 1.0 for f in faces)


def test_missing_weights_without_network_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DetectorUnavailable) as exc:
        make_detector("retinaface")
    msg = str(exc.value)
    assert "\n" not in msg and "detection_Resnet50_Final.pth" in msg and "--detector yuface" in msg
    assert R.WEIGHT_URLS["resnet50"] in msg
    assert list((tmp_path / "facexlib").iterdir()) == []  # no partial file left behind
    with pytest.raises(DetectorUnavailable, match="not in the cache"):
        R.ensure_weights("resnet50", download=False)


def test_download_is_atomic_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VRRESTORE_CACHE", str(tmp_path))
    src = tmp_path / "src.pth"
    _save_random(src)
    seen = []

    def fake_urlopen(url, timeout=None):
        seen.append(url)
        return open(src, "rb")  # noqa: SIM115 - closed by the caller's with-block

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    logs: list[str] = []
    path = R.ensure_weights("mobilenet0.25", log=logs.append)
    assert seen == [R.WEIGHT_URLS["mobilenet0.25"]] and len(logs) == 1
    assert path == tmp_path / "facexlib" / "detection_mobilenet0.25_Final.pth"
    assert path.read_bytes() == src.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert R.ensure_weights("mobilenet0.25") == path and len(seen) == 1  # cached: no second download


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_bad_weight_files_are_refused(cache):
    path = cache / "facexlib" / "detection_mobilenet0.25_Final.pth"
    path.parent.mkdir(parents=True)
    torch.save({"body.stage1.0.0.weight": _Evil()}, path)
    with pytest.raises(DetectorUnavailable, match="not a loadable RetinaFace weight file"):
        make_detector("retinaface-mobile")
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(DetectorUnavailable, match="do not match RetinaFace-mobilenet0.25"):
        make_detector("retinaface-mobile")
    _save_random(path, "resnet50")
    with pytest.raises(DetectorUnavailable, match="delete the file"):
        make_detector("retinaface-mobile")


def test_decoding_turns_planted_outputs_into_boxes_and_landmarks(cache, monkeypatch):
    _save_random(cache / "facexlib" / "detection_mobilenet0.25_Final.pth", prefix="")
    det = make_detector("retinaface-mobile", threshold=0.5)
    h, w = 320, 480  # short side 320 < 640: the detector runs the net on a x2 image
    priors = R.prior_boxes(2 * h, 2 * w, det.net.cfg)
    n = priors.shape[0]
    logits = torch.tensor([4.0, -4.0]).repeat(n, 1)
    loc, landm = torch.zeros(n, 4), torch.zeros(n, 10)
    # stride-16 level, row 10, column 20, 64 px anchor: index after the whole stride-8 level
    fh8, fw8 = -(-2 * h // 8), -(-2 * w // 8)
    fw16 = -(-2 * w // 16)
    a = 2 * fh8 * fw8 + 2 * (10 * fw16 + 20)
    b = a + 2  # the next column's 64 px anchor: same box after the offset below, lower score
    c = 2 * fh8 * fw8 + 2 * (30 * fw16 + 45) + 1  # a separate face on a 128 px anchor
    logits[a] = torch.tensor([-3.0, 3.0])
    logits[b] = torch.tensor([-1.0, 1.0])
    logits[c] = torch.tensor([-2.0, 2.0])
    loc[a] = torch.tensor([0.5, -0.5, float(np.log(1.5)) / 0.2, 0.0])
    loc[b] = torch.tensor([0.5 - 16 / (0.1 * 64), -0.5, float(np.log(1.5)) / 0.2, 0.0])
    pts = torch.tensor([-2.0, -1.0, 2.0, -1.0, 0.0, 0.0, -1.5, 1.5, 1.5, 1.5])
    landm[a] = pts
    landm[b] = pts
    landm[c] = pts  # all-zero offsets would put the 5 points on one spot: not a face, and dropped
    planted = (loc[None], logits[None], landm[None])
    seen = []

    def fake_forward(x):
        seen.append(tuple(x.shape))
        return planted

    monkeypatch.setattr(det.net, "forward", fake_forward)
    faces = det.detect(np.zeros((h, w, 3), np.uint8))
    assert seen == [(1, 3, 2 * h, 2 * w)]
    assert len(faces) == 2  # b was suppressed by NMS (same box as a, lower score)
    f = faces[0]
    # prior a in network pixels: centre (20.5*16, 10.5*16) = (328, 168), size 64; then / 2 for the resize
    cx, cy = 328 + 0.5 * 0.1 * 64, 168 - 0.5 * 0.1 * 64
    bw, bh = 64 * 1.5, 64
    np.testing.assert_allclose(f.box, np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]) / 2, atol=1e-3)
    assert f.score == pytest.approx(float(torch.softmax(torch.tensor([-3.0, 3.0]), 0)[1]), abs=1e-6)
    expected = (np.array([[328, 168]]) + pts.numpy().reshape(5, 2) * 0.1 * 64) / 2
    np.testing.assert_allclose(f.landmarks, expected, atol=1e-3)
    g = faces[1]
    np.testing.assert_allclose(g.center, [(45.5 * 16) / 2, (30.5 * 16) / 2], atol=1e-3)
    assert g.width == pytest.approx(128 / 2, abs=1e-3)


def test_nms_keeps_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.6], dtype=np.float32)
    assert R.nms(boxes, scores, 0.4).tolist() == [1, 2]
    assert R.nms(boxes, scores, 0.99).tolist() == [1, 0, 2, 3]
