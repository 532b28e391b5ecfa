import json
import os
import math
import multiprocessing
import re

import numpy as np
import pytest
import torch
from conftest import TINY_NET, assert_logged, run, run_in_process

from halton.evaluation import ReferenceStats, ResultsFile, fid, generative_metrics, inception_score, precision_recall
from halton.evaluation.diagnostics import step_diagnostics
from halton.evaluation.features import DigitsFeatures, InceptionFeatures
from halton.evaluation.metrics import feature_statistics
from halton.evaluation.prompts import balanced_labels
from halton.evaluation.runner import batch_seed
from halton.sampling import HaltonScheduler, SamplingResult, sample, tokens_per_step


def features(n=400, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def reference_of(feats, extractor="test-extractor", size=(8, 8)):
    return ReferenceStats(feature_statistics(feats), feats.float(), extractor, size, len(feats), "test")


# ------------------------------------------------------------------ metrics on known inputs
def test_identical_sets_give_zero_fid_and_full_precision_recall():
    feats = features()
    assert abs(fid(feature_statistics(feats), feature_statistics(feats))) < 1e-6
    assert precision_recall(feats, feats) == (1.0, 1.0)


def test_shifted_set_fid_is_the_closed_form_and_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = features()
    shifted = real + 0.5  # same covariance, mean moved by 0.5 in each of 16 dimensions: FID = 16 * 0.25
    value = fid(feature_statistics(shifted), feature_statistics(real))
    assert value == pytest.approx(4.0, abs=1e-6)

    class Identity(torch.nn.Module):  # features in, features out: torchmetrics computes FID on them as they are
        num_features = 16

        def forward(self, x):
            return x.reshape(x.shape[0], -1)[:, :16].double()

    metric = FrechetInceptionDistance(feature=Identity(), normalize=False)
    metric.update(real, real=True)
    metric.update(shifted, real=False)
    assert metric.compute().item() == pytest.approx(value, abs=1e-4)


def test_precision_recall_of_disjoint_sets_is_zero():
    real = features()
    far = real + 100.0
    assert precision_recall(far, real) == (0.0, 0.0)


def test_inception_score_on_known_logits():
    assert inception_score(torch.zeros(100, 10)) == pytest.approx(1.0)  # every sample uniform: IS 1
    confident = torch.full((100, 10), -50.0)
    confident[torch.arange(100), torch.arange(100) % 10] = 50.0
    assert inception_score(confident, splits=1) == pytest.approx(10.0, rel=1e-4)  # sure, balanced, 10 classes


def test_generative_metrics_names_carry_the_extractor_prefix():
    feats = features()
    metrics = generative_metrics(feats.float(), torch.zeros(len(feats), 10), reference_of(feats), "digits_")
    assert set(metrics) == {"digits_fid", "digits_is", "digits_precision", "digits_recall"}
    assert metrics["digits_precision"] == 1.0
    no_features = reference_of(feats)
    no_features.features = None
    assert math.isnan(generative_metrics(feats.float(), torch.zeros(len(feats), 10), no_features)["precision"])


# ------------------------------------------------------------------ reference statistics
def test_reference_round_trip_and_mismatch_refused(tmp_path):
    feats = features()
    path = reference_of(feats, "digits-mlp-v1-seed0-steps600", (8, 8)).save(tmp_path / "ref.npz")
    loaded = ReferenceStats.load(path)
    np.testing.assert_allclose(loaded.stats["sigma"], feature_statistics(feats)["sigma"])
    assert loaded.extractor == "digits-mlp-v1-seed0-steps600" and loaded.image_size == (8, 8)

    class Extractor:
        name = "digits-mlp-v1-seed0-steps600"

    loaded.check(Extractor(), (8, 8))
    with pytest.raises(ValueError, match=r"image.*\[8, 8\].*this run generates \[16, 16\]"):
        loaded.check(Extractor(), (16, 16))
    Extractor.name = "inception-v3-compat"
    with pytest.raises(ValueError, match="made with extractor 'digits-mlp-v1-seed0-steps600'; this run uses "
                                         "'inception-v3-compat'"):
        loaded.check(Extractor(), (8, 8))


def test_precomputed_statistics_formats(tmp_path):
    feats = features()
    stats = feature_statistics(feats)
    np.savez(tmp_path / "adm.npz", mu=stats["mu"], sigma=stats["sigma"])  # ADM-style
    torch.save({"mu": torch.from_numpy(stats["mu"]), "cov": torch.from_numpy(stats["sigma"])}, tmp_path / "s.pt")
    for name in ("adm.npz", "s.pt"):
        loaded = ReferenceStats.load(tmp_path / name)
        assert loaded.extractor is None and loaded.features is None
        assert fid(stats, loaded.stats) == pytest.approx(0.0, abs=1e-6)
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="has no mu/sigma"):
        ReferenceStats.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="reference statistics not found"):
        ReferenceStats.load(tmp_path / "missing.npz")


# ------------------------------------------------------------------ extractors
def test_digits_classifier_is_cached_and_accurate(digits_features):
    from halton.data.digits.in_memory import load_digits_split

    folder, first = digits_features  # trained in an empty folder, once for the test run
    assert len(list(folder.glob("*.safetensors"))) == 1
    _, (images, labels) = load_digits_split()
    assert first.accuracy(images, labels) > 0.93
    again = DigitsFeatures(folder)  # loaded from the cache
    torch.testing.assert_close(again(images)["features"], first(images)["features"])
    out = first(images[:5])
    assert out["features"].shape == (5, 64) and out["logits"].shape == (5, 10)


def test_inception_loads_local_weights(tmp_path, monkeypatch):
    """torch-fidelity's real Inception-v3, with random weights saved in its own format (no download here)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    with monkeypatch.context() as patch:  # build once without loading anything, to write a weights file
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        skeleton = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(skeleton.state_dict(), tmp_path / "inception.pth")
    extractor = InceptionFeatures(str(tmp_path / "inception.pth"))
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    out = extractor(images)
    assert out["features"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    with pytest.raises(FileNotFoundError, match="Inception weights not found"):
        InceptionFeatures(str(tmp_path / "missing.pth"))


def test_inception_download_error_names_the_url_and_file_it_needs(monkeypatch):
    import urllib.error

    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    def offline(url, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", offline)
    url = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
    assert tf_inception.URL_INCEPTION_V3 == url  # the file torch-fidelity downloads, in the format it loads
    with pytest.raises(ValueError) as error:
        InceptionFeatures()
    assert f"download {url} and pass inception_weights=PATH/weights-inception-2015-12-05-6726825d.pth" in str(error.value)


# ------------------------------------------------------------------ results file
def _write_row(path, scheduler):
    ResultsFile(path).write([{"experiment": "e", "scheduler": scheduler, "steps": 8, "eval_step": 8, "fid": 1.0}])


def test_results_file_concurrent_writers_lose_no_row(tmp_path):
    path = tmp_path / "results.csv"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.starmap(_write_row, [(path, f"s{i}") for i in range(24)])
    rows = ResultsFile(path).rows()
    assert sorted(r["scheduler"] for r in rows) == sorted(f"s{i}" for i in range(24))


def test_results_file_replaces_same_cell_and_survives_a_crash(tmp_path, monkeypatch):
    results = ResultsFile(tmp_path / "results.csv")
    results.write([{"scheduler": "halton", "steps": 8, "eval_step": 8, "fid": 2.0}])
    results.write([{"scheduler": "halton", "steps": 8, "eval_step": 8, "fid": 1.5}])
    assert [r["fid"] for r in results.rows()] == ["1.5"]
    assert results.has([{"scheduler": "halton", "steps": 8, "eval_step": 8}])
    assert not results.has([{"scheduler": "random", "steps": 8, "eval_step": 8}])
    import halton.evaluation.results as module

    def crash(path, write):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(module, "atomic_write", crash)
    with pytest.raises(RuntimeError):
        results.write([{"scheduler": "random", "steps": 8, "eval_step": 8, "fid": 9.0}])
    assert [r["fid"] for r in results.rows()] == ["1.5"]


# ------------------------------------------------------------------ generation pieces
def test_cells_are_keyed_by_the_weights_not_the_checkpoints_path(tiny_run, tmp_path):
    """A retrained last.ckpt (same path, new weights) is evaluated again; the same weights under another path are
    not; each version of a file is hashed once (the digest cache, by path, size and modification time)."""
    import shutil

    from halton.models.loading import weights_digest
    from halton.utils.checkpoint import read_checkpoint

    last, cache = tmp_path / "last.ckpt", tmp_path / "cache" / "weights_digests.json"
    shutil.copy(tiny_run / "tiny" / "checkpoints" / "last.ckpt", last)
    first = weights_digest(last, cache)
    shutil.copy(last, tmp_path / "elsewhere.ckpt")
    assert weights_digest(tmp_path / "elsewhere.ckpt", cache) == first and len(json.loads(cache.read_text())) == 2
    state = read_checkpoint(last)
    state["optimizer_states"] = []  # what is not the model's weights does not count
    torch.save(state, tmp_path / "resaved.ckpt")
    assert weights_digest(tmp_path / "resaved.ckpt", cache) == first
    state["state_dict"]["model.head.bias"] = state["state_dict"]["model.head.bias"] + 1  # "retrained"
    torch.save(state, tmp_path / "new.ckpt")
    os.replace(tmp_path / "new.ckpt", last)  # as train.py saves: renamed into place (the old file stays mapped)
    retrained = weights_digest(last, cache)
    assert retrained != first and json.loads(cache.read_text())[str(last.resolve())]["digest"] == retrained
    known = json.loads(cache.read_text())
    known[str(last.resolve())]["digest"] = "remembered"
    cache.write_text(json.dumps(known))
    assert weights_digest(last, cache) == "remembered"  # unchanged since: not read again

    results = ResultsFile(tmp_path / "results.csv")
    cell = {"experiment": "tiny", "scheduler": "halton", "steps": 8, "cfg_weight": 1.0, "seed": 0, "num_images": 40,
            "extractor": "digits", "eval_step": 8}
    results.write([{**cell, "checkpoint": str(last), "weights": first, "digits_fid": 1.0, "seconds": 1.0,
                    "images_per_s": 40.0}])
    assert results.has([{**cell, "checkpoint": str(tmp_path / "elsewhere.ckpt"), "weights": first}])
    assert not results.has([{**cell, "checkpoint": str(last), "weights": retrained}])


def test_balanced_labels():
    labels = balanced_labels(50, 10)
    assert torch.bincount(labels).tolist() == [5] * 10
    assert torch.bincount(labels[:10]).tolist() == [1] * 10
    with pytest.raises(ValueError, match="num_images=55 is not a multiple of the 10 classes"):
        balanced_labels(55, 10)
    assert batch_seed(0, 3) != batch_seed(1, 3)


def test_step_diagnostics_on_a_known_schedule():
    # 2x2 grid: step 1 unmasks the diagonal, step 2 the anti-diagonal.
    first = torch.tensor([[[True, False], [False, True]]])
    second = ~first
    result = SamplingResult(codes=torch.zeros(1, 2, 2, dtype=torch.long), unmasked_per_step=[first, second],
                            entropy_per_step=[torch.tensor([0.5]), torch.tensor([1.5])])
    out = step_diagnostics(result)
    assert out["entropy"][:, 0].tolist() == [0.5, 1.5]
    assert out["distance_within_step"][:, 0].tolist() == pytest.approx([math.sqrt(2), math.sqrt(2)])
    assert math.isnan(out["distance_to_unmasked"][0, 0]) and out["distance_to_unmasked"][1, 0] == pytest.approx(1.0)


def test_fill_steps_complete_the_partial_codes():
    from halton.models import MaskTransformer

    torch.manual_seed(0)
    model = MaskTransformer(17, 8, 32, 1, 2, num_classes=10)
    result = sample(model, HaltonScheduler(), torch.arange(4), steps=8, cfg_weight=1.0, return_history=True,
                    fill_steps=(1, 3))
    assert sorted(result.filled) == [1, 3]
    for step, filled in result.filled.items():
        partial = result.codes_per_step[step]
        decoded = partial != model.mask_id
        assert (filled != model.mask_id).all()
        assert torch.equal(filled[decoded], partial[decoded])
    assert len(result.entropy_per_step) == 8 and result.entropy_per_step[0].shape == (4,)


# ------------------------------------------------------------------ evaluate.py end to end
def evaluate_args(runs, *args) -> list[str]:
    ckpt = runs / "tiny" / "checkpoints" / "last.ckpt"
    return ["experiment=digits", f"checkpoint={ckpt}", *TINY_NET, f"paths.runs_dir={runs}",
            f"paths.data_dir={runs / 'data'}", "num_images=40", "batch_size=20", "name=tiny", *args]


def evaluate(runs, *args, check=True):
    return run("evaluate.py", *evaluate_args(runs, *args), check=check)


def test_evaluate_writes_rows_grids_and_diagnostics_then_skips(tiny_run):
    result = evaluate(tiny_run, "scheduler=confidence", "steps=8", "intermediate_steps=[2,4]")
    results = ResultsFile(tiny_run / "tiny" / "eval" / "results.csv")
    rows = [r for r in results.rows() if r["scheduler"] == "confidence"]
    assert sorted(int(r["eval_step"]) for r in rows) == [2, 4, 8]
    final = next(r for r in rows if r["eval_step"] == "8")
    assert final["extractor"] == "digits" and final["num_images"] == "40" and final["tokens_fraction"] == "1.0"
    assert float(final["digits_fid"]) > 0 and 0 <= float(final["digits_precision"]) <= 1
    assert "fid" not in final  # digits-classifier numbers are never labelled as Inception FID
    eval_dir = tiny_run / "tiny" / "eval"
    assert (eval_dir / "grids" / "confidence_steps8_cfg1_seed0.png").is_file()
    saved = json.loads((eval_dir / "diagnostics" / "confidence_steps8_cfg1_seed0.json").read_text())
    assert saved["cell"]["scheduler"] == "confidence" and saved["cell"]["steps"] == 8
    assert saved["cell"]["scheduler_options"] == "r_temp=4.5 guidance=ramp mode=keep"
    assert len(saved["curves"]["entropy"]) == 8 and len(saved["curves"]["distance_within_step"]) == 8
    assert "digits_fid" in result.stdout
    log_file = next(p for p in (eval_dir / "logs").rglob("evaluate.log") if "digits_fid" in p.read_text())
    assert_logged(result.stdout, log_file)

    again = evaluate(tiny_run, "scheduler=confidence", "steps=8", "intermediate_steps=[2,4]")
    assert "skipping confidence, 8 steps: already in" in again.stdout
    forced = evaluate(tiny_run, "scheduler=confidence", "steps=8", "intermediate_steps=[2,4]", "force=true")
    assert "skipping" not in forced.stdout
    assert len([r for r in results.rows() if r["scheduler"] == "confidence"]) == 3
    from halton.models.loading import weights_digest

    assert {r["weights"] for r in rows} == {weights_digest(tiny_run / "tiny" / "checkpoints" / "last.ckpt")}


def test_evaluate_sweep_and_report(tiny_run, tmp_path):
    run("evaluate.py", "-m", "experiment=digits", f"checkpoint={tiny_run / 'tiny/checkpoints/last.ckpt'}",
        *TINY_NET, f"paths.runs_dir={tiny_run}", f"paths.data_dir={tiny_run / 'data'}", "num_images=20",
        "batch_size=20", "name=sweep", "scheduler=halton,random", "steps=2,4")
    results = tiny_run / "sweep" / "eval" / "results.csv"
    cells = {(r["scheduler"], r["steps"]) for r in ResultsFile(results).rows()}
    assert cells == {("halton", "2"), ("halton", "4"), ("random", "2"), ("random", "4")}
    from halton.evaluation.report import main as report

    report([str(results), "--out", str(tmp_path)])
    table = (tmp_path / "report.md").read_text()
    assert "| halton | 4 | 1 | 1 | 20 |" in table and "digits_fid" in table
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", table)  # the report shows its pictures, by relative links
    assert "digits_fid_vs_steps.png" in links and "diagnostics_steps4.png" in links
    assert all((tmp_path / link).is_file() for link in links)
    rates = [line.split("|")[-2].strip() for line in table.splitlines() if line.startswith("| halton |")]
    assert rates and all(re.fullmatch(r"\d+\.\d", rate) for rate in rates)  # images/s: one decimal


def test_report_averages_seeds_and_tabulates_cfg_weights(tmp_path):
    from halton.evaluation.report import main as report

    rows = []
    for scheduler, options, base in [("halton", "randomize=True", 5.0), ("confidence", "r_temp=4.5 guidance=ramp", 7.0),
                                     ("confidence", "r_temp=4.5 guidance=constant", 6.0)]:
        for cfg_weight, shift in [(0.0, 1.0), (1.0, 0.0)]:
            for seed, noise in [(0, -0.5), (1, 0.5)]:
                rows.append({"experiment": "e", "checkpoint": "c", "scheduler": scheduler, "scheduler_options": options,
                             "steps": 16, "cfg_weight": cfg_weight, "seed": seed, "num_images": 100,
                             "eval_step": 16, "tokens_fraction": 1.0, "digits_fid": base + shift + noise,
                             "digits_is": 9.0, "digits_precision": 0.8, "digits_recall": 0.7, "images_per_s": 12.345})
    ResultsFile(tmp_path / "results.csv").write(rows)
    report([str(tmp_path / "results.csv")])
    text = (tmp_path / "report.md").read_text()
    # two seeds per setting: mean ± sample standard deviation (0.5 and -0.5 around the mean: 0.707)
    assert "| halton | 16 | 0 | 2 | 100 | 6.000 ± 0.707 | 9.000 ± 0.000 |" in text
    # options that vary between rows name the scheduler; the best CFG weight of each row is in bold
    assert "| confidence guidance=constant | 16 | 7.000 ± 0.707 | **6.000 ± 0.707** | 1 |" in text
    assert "| confidence guidance=ramp | 16 | 8.000 ± 0.707 | **7.000 ± 0.707** | 1 |" in text
    assert "| 12.3 |" in text
    assert (tmp_path / "digits_fid_vs_cfg.png").is_file() and "(digits_fid_vs_cfg.png)" in text


@pytest.mark.slow  # about 20-30 s; the default run stays under 10 minutes on 2 cores
def test_two_processes_give_the_same_numbers_as_one(tiny_run):
    one = evaluate(tiny_run, "scheduler=halton", "steps=4", "name=one", "accelerator=cpu", "devices=1")
    two = evaluate(tiny_run, "scheduler=halton", "steps=4", "name=two", "accelerator=cpu", "devices=2")
    assert two.returncode == 0
    rows = [ResultsFile(tiny_run / name / "eval" / "results.csv").rows()[0] for name in ("one", "two")]
    for metric in ("digits_fid", "digits_is", "digits_precision", "digits_recall"):
        assert float(rows[0][metric]) == pytest.approx(float(rows[1][metric]), rel=1e-6, abs=1e-9), metric


def test_mismatched_reference_file_is_refused(tiny_run, tmp_path):
    feats = features(d=64)
    path = reference_of(feats, "inception-v3-compat", (299, 299)).save(tmp_path / "inception_ref.npz")
    result = evaluate(tiny_run, "scheduler=halton", "steps=4", "reference.kind=file",
                      f"reference.path={path}", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: reference statistics {path} were made with extractor 'inception-v3-compat'; this run uses "
        "'digits-mlp-v1-seed0-steps600'"]


@pytest.mark.parametrize("args,message", [
    (["scheduler=maskgit"], "error: unknown scheduler 'maskgit'; allowed: confidence, halton, random"),
    (["num_images=15"], "error: num_images=15 is not a multiple of the 10 classes (class-balanced samples); "
                        "allowed: 10, 20, ..."),
    (["extractor=clip"], "error: extractor='clip' is not one of the choices; allowed: inception, digits"),
    (["intermediate_steps=[9]", "steps=8"], "error: intermediate_steps=9 is out of range; allowed: 1 to 8"),
])
def test_evaluate_rejects_bad_values(tiny_run, args, message):
    result = run_in_process("evaluate.py", *evaluate_args(tiny_run, *args))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[0].startswith(message)


@pytest.mark.slow  # evaluate.py end to end; the schedules are tested in-process
def test_evaluate_records_a_parameterised_sampling_schedule(tiny_run):
    evaluate(tiny_run, "scheduler=halton", "steps=4", "intermediate_steps=[2]", "schedule=poly", "schedule_power=2",
             "diagnostics=false", "results=${paths.runs_dir}/poly.csv")
    rows = {r["eval_step"]: r for r in ResultsFile(tiny_run / "poly.csv").rows()}
    cumulative = tokens_per_step(64, 4, "poly", power=2.0).cumsum(0).tolist()
    assert cumulative != tokens_per_step(64, 4, "poly").cumsum(0).tolist()
    assert {r["schedule"] for r in rows.values()} == {"poly-power=2"}
    assert float(rows["2"]["tokens_fraction"]) == round(cumulative[1] / 64, 4)
    assert (tiny_run / "grids" / "halton_poly-power=2_steps4_cfg1_seed0.png").is_file()
