"""CPU training options: precision, LR schedule, critic width, adaptive-weight reuse, perceptual
backbone, one-line usage errors, an ETA that respects the time budget, the CPU presets' budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_main import run_main
from test_train import make_images

from vrrestore.train import loop
from vrrestore.train import stages as stages_mod
from vrrestore.train.config import PriorOptions, TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("cpu-data"), n=4, size=48)


def events(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_prior_cli_flags_reach_the_run(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, _, err = run_main(
        monkeypatch, capsys, "train", "prior", "--data", str(data), "--out", str(out), "--preset", "face-tiny",
        "--steps", "4", "--batch-size", "2", "--workers", "0", "--size", "32", "--lr", "0.001",
        "--precision", "fp32", "--warmup-steps", "2", "--cosine", "--disc-start", "0", "--disc-width", "8",
        "--adaptive-every", "3", "--perceptual", "alex",
    )
    assert code == 0, err
    ev = events(out)
    cfg = ev[0]["config"]
    assert (cfg["precision"], cfg["warmup_steps"], cfg["cosine"]) == ("fp32", 2, True)
    assert (cfg["prior"]["disc_width"], cfg["prior"]["adaptive_every"], cfg["prior"]["perceptual_net"]) == (8, 3, "alex")
    assert any(e.get("text") == "precision: fp32 (--precision fp32)" for e in ev)
    state = torch.load(out / "prior.pt", weights_only=True)
    assert state["nets"]["disc"]["net.0.weight"].shape[0] == 8  # critic width 8
    lrs = [e["lr"] for e in ev if e["event"] == "step"]
    assert lrs[-1] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi)).item())))  # cosine end


def test_code_and_fidelity_cli_take_precision_and_schedule(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    prior = tmp_path / "prior"
    common = ["--data", str(data), "--batch-size", "2", "--workers", "0", "--size", "32", "--steps", "2"]
    assert run_main(monkeypatch, capsys, "train", "prior", "--out", str(prior), "--preset", "face-tiny", *common)[0] == 0
    code = tmp_path / "code"
    rc, _, err = run_main(monkeypatch, capsys, "train", "code", "--out", str(code), "--prior", str(prior), *common,
                          "--precision", "bf16", "--warmup-steps", "5", "--constant")
    assert rc == 0, err
    cfg = events(code)[0]["config"]
    assert (cfg["precision"], cfg["warmup_steps"], cfg["cosine"]) == ("bf16", 5, False)
    assert [e["lr"] for e in events(code) if e["event"] == "step"][-1] == pytest.approx(1e-4 * 3 / 5)  # warm-up: the rate for the next step
    fid = tmp_path / "fid"
    rc, _, err = run_main(monkeypatch, capsys, "train", "fidelity", "--out", str(fid), "--code", str(code), *common,
                          "--precision", "fp32", "--disc-width", "8", "--adaptive-every", "2", "--perceptual", "alex",
                          "--disc-start", "0", "--fidelity-gain", "1.5", "--fusion-lr", "3e-4", "--gate-init", "0.25",
                          "--texture-fade", "--decoder-lr", "2e-5")
    assert rc == 0, err
    cfg = events(fid)[0]["config"]
    assert cfg["precision"] == "fp32" and cfg["fidelity"]["disc_width"] == 8 and cfg["fidelity"]["adaptive_every"] == 2
    assert cfg["fidelity"]["fidelity_gain"] == 1.5 and cfg["fidelity"]["fusion_lr"] == 3e-4 and cfg["fidelity"]["gate_init"] == 0.25
    assert cfg["fidelity"]["texture_fade"] is True and cfg["fidelity"]["decoder_lr"] == 2e-5


def test_adaptive_weight_is_recomputed_every_n_steps(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = stages_mod.adaptive_weight

    def counting(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(stages_mod, "adaptive_weight", counting)
    cfg = TrainConfig(stage="prior", data=(str(data),), out="", preset="face-tiny", batch_size=2, workers=0,
                      prior=PriorOptions(disc_start=0, adaptive_every=3, perceptual_weight=0.0))
    st = stages_mod.PriorStage(cfg, stages_mod.Runtime(torch.device("cpu"), say=lambda _s: None))
    batch = {"gt": torch.rand(2, 3, 64, 64)}
    weights = [st.train_step(batch, s)["d_weight"] for s in range(7)]
    assert len(calls) == 3  # steps 0, 3, 6
    assert weights[1] == weights[0] and weights[2] == weights[0]
    assert st.extra_state()["adaptive"] == pytest.approx(weights[6])


@pytest.mark.parametrize(("args", "needle"), [
    (["--preset", "face-huge"], "--preset face-huge: unknown preset"),
])
def test_unknown_preset_is_a_one_line_usage_error(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str], args: list[str], needle: str) -> None:
    code, _, err = run_main(monkeypatch, capsys, "train", "prior", "--data", str(data), "--out", str(tmp_path / "r"), *args)
    assert code == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_sr_recipe_on_a_face_prior_is_a_usage_error(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    prior = tmp_path / "prior"
    common = ["--data", str(data), "--batch-size", "2", "--workers", "0", "--size", "32", "--steps", "1"]
    assert run_main(monkeypatch, capsys, "train", "prior", "--out", str(prior), "--preset", "face-tiny", *common)[0] == 0
    code, _, err = run_main(monkeypatch, capsys, "train", "code", "--out", str(tmp_path / "c"), "--prior", str(prior),
                            "--recipe", "sr-x4", *common)
    assert code == 2 and "--recipe sr-x4 makes x4 inputs" in err and "Traceback" not in err
    assert not (tmp_path / "c" / "code.pt").exists()


def test_eta_follows_the_time_budget() -> None:
    assert loop.eta_text(600, 1.0, None, 0.0) == "ETA 0:10:00"
    assert loop.eta_text(60_000, 1.0, 180.0, 60.0) == "ETA 0:02:00 (budget)"  # 3-minute budget, 1 minute gone
    assert loop.eta_text(60, 1.0, 180.0, 60.0) == "ETA 0:01:00"  # the steps end first
    assert loop.eta_text(10, 0.0, None, 0.0) == "ETA -:--:--"


def test_cpu_presets_stay_within_their_flop_budgets() -> None:
    """Issue budget: face restorer <= 20 GFLOP at 256 px, x4 SR <= 10 GFLOP per 64x64 LR input."""
    from torch.utils.flop_counter import FlopCounterMode

    from vrrestore.models import build_model, preset

    for name, arch, side, budget in (("face-cpu", "FaceRestorer", 256, 20.0), ("sr-x4-cpu", "SRRestorer", 64, 10.0)):
        m = build_model(arch, preset(name)).requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            out = m(torch.rand(1, 3, side, side), 0.5)
        assert fc.get_total_flops() / 1e9 <= budget, name
        assert out.shape[-1] == (side if arch == "FaceRestorer" else 4 * side)


def test_training_bench_reports_rates_shares_and_uses_the_schedule_options() -> None:
    from vrrestore.train import bench

    prior, fid, batch = bench.schedule_options("face-cpu")
    assert (prior["disc_width"], prior["adaptive_every"], prior["perceptual_net"], batch) == (16, 4, "alex", 8)
    assert fid["disc_width"] == 16 and bench.schedule_options("face-tiny") == ({}, {}, None)
    rows = bench.bench(["face-tiny"], batch_size=2, steps=1, precisions=("fp32", "bf16"), say=lambda _s: None)
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    for r in rows:
        assert all(r[k] > 0 for k in ("prior", "code", "fidelity", "degrade"))  # type: ignore[operator]
        assert -1.0 < r["prior_share"] < 1.0 and -1.0 < r["fidelity_share"] < 1.0  # type: ignore[operator]


def test_export_refuses_an_existing_file_unless_overwrite(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "p"
    common = ["--data", str(data), "--batch-size", "2", "--workers", "0", "--size", "32", "--steps", "1"]
    assert run_main(monkeypatch, capsys, "train", "prior", "--out", str(run), "--preset", "face-tiny", *common)[0] == 0
    dst = tmp_path / "prior.safetensors"
    assert run_main(monkeypatch, capsys, "train", "export", str(run / "prior.pt"), "-o", str(dst))[0] == 0
    before = dst.read_bytes()
    code, _, err = run_main(monkeypatch, capsys, "train", "export", str(run / "prior.pt"), "-o", str(dst))
    assert code == 2 and "already exists" in err and "--overwrite" in err and dst.read_bytes() == before
    assert run_main(monkeypatch, capsys, "train", "export", str(run / "prior.pt"), "-o", str(dst), "--overwrite")[0] == 0
    assert dst.stat().st_mode & 0o044  # readable by others, not 0600


def test_max_pixels_flag_skips_big_training_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VRRESTORE_MAX_PIXELS", "0")  # the flag overwrites it; monkeypatch removes it after the test
    small = make_images(tmp_path / "d", n=4, size=32)
    make_images(tmp_path / "big", n=1, size=64, seed=3)
    (tmp_path / "big" / "im00.png").rename(small / "big.png")
    run = tmp_path / "r"
    code, _, err = run_main(monkeypatch, capsys, "train", "prior", "--data", str(small), "--out", str(run), "--preset",
                            "face-tiny", "--batch-size", "2", "--workers", "0", "--size", "32", "--steps", "3",
                            "--max-pixels", "2000")
    assert code == 0, err
    texts = [e.get("text", "") for e in events(run) if e["event"] == "message"]
    assert any("big.png" in t and "skipping" in t for t in texts)
    assert not any("im0" in t for t in texts)


def _bench(name: str):  # noqa: ANN202 - a bench script, imported as a module
    import importlib
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def _bf16_quality():  # noqa: ANN202
    return _bench("bf16_quality")


def test_bf16_quality_refuses_where_auto_would_not_pick_bf16(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from vrrestore import precision

    monkeypatch.setattr(precision, "decide", lambda *_a, **_k: precision.Verdict("fp32", "no AMX or AVX512-BF16 on this CPU"))
    assert _bf16_quality().main(["--steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "picks fp32 here (no AMX or AVX512-BF16 on this CPU)" in err


def test_bf16_quality_trains_the_release_prior_recipe_in_both_precisions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Same recipe (release prior options, seed, batch) and steps for both; the report says the gap and speed."""
    import importlib

    from vrrestore import precision
    from vrrestore.train import ckpt, release

    export = importlib.import_module("vrrestore.train.export")  # the package re-exports a function of that name
    monkeypatch.setattr(precision, "decide", lambda *_a, **_k: precision.Verdict("bf16", "probe"))
    seen: list[TrainConfig] = []

    def fake_train(cfg: TrainConfig, **_k: object) -> loop.TrainResult:
        seen.append(cfg)
        secs = 10.0 if cfg.precision == "bf16" else 25.0
        return loop.TrainResult(Path(cfg.out) / "prior.pt", cfg.steps, secs, "done", {}, cfg.steps * cfg.batch_size / secs)

    monkeypatch.setattr(loop, "train", fake_train)
    monkeypatch.setattr(ckpt, "load", lambda path, _stage: {"path": str(path)})
    monkeypatch.setattr(export, "export_prior", lambda _state, out, _dtype: Path(out))
    psnr = {"bf16.safetensors": 27.05, "fp32.safetensors": 27.15}
    monkeypatch.setattr(release, "evaluate_prior", lambda file, _s, _r: {
        "psnr_continuous": psnr[file.name], "ssim_continuous": 0.8, "psnr_quantized": 25.0, "ssim_quantized": 0.7,
        "images": 2, "codes_used": 9, "codebook_size": 1024})
    (tmp_path / "packs").mkdir()
    (tmp_path / "packs" / "faces_train_256.tar").write_bytes(b"")
    (tmp_path / "faces_hq" / "train").mkdir(parents=True)
    out = tmp_path / "q.json"
    assert _bf16_quality().main(["--steps", "7", "--data-root", str(tmp_path)]) == 2 and not seen  # no held-out faces yet
    (tmp_path / "faces_hq" / "test" / "london_canada_256").mkdir(parents=True)
    assert _bf16_quality().main(["--steps", "7", "--data-root", str(tmp_path), "--json", str(out), "--markdown", str(tmp_path / "q.md")]) == 0
    face = release.SCHEDULES["face"]
    prior = face.unit("prior")
    assert [c.precision for c in seen] == ["bf16", "fp32"]
    for c in seen:
        assert (c.steps, c.seed, c.batch_size, c.lr, c.cosine) == (7, face.seed, face.batch_size, prior.lr, prior.cosine)
        assert c.prior.disc_start == prior.options["disc_start"] and c.prior.continuous_prob == prior.options["continuous_prob"]
    rep = json.loads(out.read_text())
    assert rep["delta_db"] == pytest.approx(-0.1) and rep["speedup"] == pytest.approx(2.5)
    assert "-0.10 dB (within 0.2 dB)" in (tmp_path / "q.md").read_text()


def test_fidelity_variants_train_the_release_unit_with_each_variants_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Every variant starts from the committed code/prior files with the unit's recipe, seed and options,
    only the named fields replaced; bad variants and missing files are one-line errors (exit 2)."""
    import importlib

    from vrrestore.train import release

    mod = _bench("fidelity_variants")
    export_mod = importlib.import_module("vrrestore.train.export")
    seen: list[tuple[TrainConfig, dict]] = []

    def fake_train(cfg: TrainConfig, **k: object) -> loop.TrainResult:
        seen.append((cfg, k["init_state"]))  # type: ignore[arg-type]
        return loop.TrainResult(Path(cfg.out) / "fidelity.pt", cfg.steps, 20.0, "done", {}, 1.0)

    monkeypatch.setattr(loop, "train", fake_train)
    monkeypatch.setattr(export_mod, "export", lambda _ckpt, out, _dtype: Path(out))
    monkeypatch.setattr(release, "code_state_from_files", lambda code, prior, _cfg: {"code": code.name, "prior": prior.name})
    scores = iter([25.0, 25.5, 26.0, 25.1, 26.1, 26.9])

    def fake_eval(_file: Path, _s: object, _r: object, ws: tuple[float, ...]) -> dict:
        ev: dict = {"images": 2, "recipe": "face-eval", "input": {"psnr": 25.13, "ssim": 0.75, "lpips_alex": 0.57}}
        for w in ws:
            ev[f"w{w:g}"] = {"psnr": next(scores), "ssim": 0.76, "lpips_alex": 0.15}
        return ev

    monkeypatch.setattr(release, "evaluate_restorer", fake_eval)
    with pytest.raises(SystemExit):
        mod.main(["--variant", "decoder_rate=1e-4"])
    assert "decoder_rate=1e-4" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main(["--variant", "texture_fade=maybe"])
    rel = tmp_path / "release"
    data = tmp_path / "data"
    for d in ("packs", "faces_hq/train", "faces_hq/test/london_canada_256"):
        (data / d).mkdir(parents=True)
    (data / "packs" / "faces_train_256.tar").write_bytes(b"")
    assert mod.main(["--release", str(rel), "--data-root", str(data)]) == 2 and not seen
    assert "code-vr.safetensors: not found" in capsys.readouterr().err
    (rel / "face").mkdir(parents=True)
    for f in ("code-vr", "prior"):
        (rel / "face" / f"{f}.safetensors").write_bytes(b"")
    out = tmp_path / "v.json"
    assert mod.main(["--release", str(rel), "--data-root", str(data), "--steps", "5", "--variant", "base",
                     "--variant", "decoder_lr=1e-4,texture_fade=false", "--json", str(out)]) == 0
    unit = release.SCHEDULES["face"].unit("fidelity-vr")
    (base, init0), (dec, _) = seen
    assert init0 == {"code": "code-vr.safetensors", "prior": "prior.safetensors"}
    for c in (base, dec):
        assert (c.steps, c.seed, c.lr, c.fidelity.recipe) == (5, 0, unit.lr, "face-mix")
        assert c.fidelity.fusion_lr == unit.options["fusion_lr"] and c.fidelity.gate_init == unit.options["gate_init"]
    assert (base.fidelity.decoder_lr, base.fidelity.texture_fade) == (0.0, True)
    assert (dec.fidelity.decoder_lr, dec.fidelity.texture_fade) == (1e-4, False)
    table = capsys.readouterr().out
    assert "| base | 2.0 | 25.00 / 25.50 / 26.00 |" in table and "| decoder_lr=1e-4,texture_fade=false | 2.0 | 25.10 / 26.10 / 26.90 |" in table
    assert "| input | | 25.13 |" in table
    rows = json.loads(out.read_text())["rows"]
    assert rows[1]["options"] == {"decoder_lr": 1e-4, "texture_fade": False}
