"""Context caching (``sample(..., cache_refresh=k)``, issue 22): the uncached sampler unchanged, refreshing at every
step equal to it, the local trunk call equal to a full forward where nothing it caches changed, and the trunk cost
of local steps."""

import hashlib

import pytest
import torch

from halton.conditions import Labels, TextEmbeddings
from halton.models import MaskTransformer, TextMaskTransformer, from_official_checkpoint
from halton.models.cache import (
    TrunkCache,
    patch_index,
    patch_tokens,
    recomputed_count,
    recomputed_patches,
)
from halton.options import SamplingOptions
from halton.options.rules import Invalid
from halton.sampling import build_scheduler, sample, tokens_per_step

SCHEDULERS = [("halton", {}), ("halton", {"randomize": False}), ("random", {}), ("confidence", {}),
              ("confidence", {"mode": "reference"})]
SCHEDULER_IDS = ["halton", "halton-fixed", "random", "confidence", "confidence-reference"]
# sha256 of every code the sampler of commit a91255c (before caching) drew in _digest: the released-format
# fixture models, each scheduler, CFG 0 and 2, with and without an edit, a fill step and a temperature ramp.
UNCACHED_DIGESTS = {"c2i": "b4c09410b5a0ddc29dae286c5fc4ef0a2759e508cbbf9dbd8629c0b1e2a4e8ff",
                    "t2i": "729ed132f96ff02aa77e3e7c9502ef2af48159ba50db59d4734e4ab0d7f66b4e"}


def _digest(kind: str, fixtures, cache_refresh) -> str:
    model = from_official_checkpoint(fixtures / f"official_{kind}_tiny.pth", heads=4)
    g = torch.Generator().manual_seed(1)
    condition = (Labels(torch.tensor([3, 7])) if kind == "c2i" else
                 TextEmbeddings(torch.randn(2, 5, model.text_dim, generator=g)))
    edit = torch.randint(0, model.codebook_size, (2, 8, 8), generator=g)
    edit[:, 2:6, 1:5] = model.mask_id
    digest = hashlib.sha256()
    for name, options in SCHEDULERS:
        for cfg_weight in (0.0, 2.0):
            for init_codes in (None, edit):
                result = sample(model, build_scheduler(name, **options), condition, steps=6, cfg_weight=cfg_weight,
                                seed=5, init_codes=init_codes, fill_steps=(2,), temp_max=1.5,
                                cache_refresh=cache_refresh)
                assert result.full_per_step == [True] * 6
                digest.update(result.codes.numpy().tobytes())
                digest.update(result.filled[2].numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("cache_refresh", [None, 1])
@pytest.mark.parametrize("kind", ["c2i", "t2i"])
def test_uncached_and_refresh_every_step_draw_the_codes_of_the_sampler_before_caching(kind, cache_refresh, fixtures):
    assert _digest(kind, fixtures, cache_refresh) == UNCACHED_DIGESTS[kind]


def class_model(depth=3, patch_size=1, registers=1, grid=4):
    torch.manual_seed(0)
    model = MaskTransformer(12, grid, 32, depth, 4, num_classes=3, registers=registers, patch_size=patch_size)
    for block in model.transformer.layers:  # AdaLN-zero starts as the identity: make every block matter
        torch.nn.init.normal_(block.mlp[1].weight, std=0.2)
    return model.eval()


def text_model(depth=3, patch_size=1, grid=4):
    torch.manual_seed(0)
    model = TextMaskTransformer(12, grid, c=16, hidden_dim=32, text_dim=8, depth=depth, heads=4, mlp_dim=48,
                                patch_size=patch_size)
    for block in model.transformer.layers:  # the reference starts with zero text projections: make text matter
        torch.nn.init.normal_(block.mlp[0].weight, std=0.3)
    return model.eval()


def conditions(model, batch=3):
    if isinstance(model, MaskTransformer):
        return Labels(torch.arange(batch) % model.num_classes)
    g = torch.Generator().manual_seed(2)
    return TextEmbeddings(torch.randn(batch, 4, model.text_dim, generator=g),
                          torch.tensor([[True, True, False, False]] * batch))


MODELS = {"class": class_model, "class-patch2": lambda **k: class_model(patch_size=2, **k),
          "text": text_model, "text-patch2": lambda **k: text_model(patch_size=2, **k)}


def edit_codes(model, batch=3):
    codes = torch.randint(0, model.codebook_size, (batch, *model.grid), generator=torch.Generator().manual_seed(4))
    codes[:, 1:3, :] = model.mask_id
    return codes


def history(result):
    return [torch.stack(result.codes_per_step), torch.stack(result.predictions_per_step),
            torch.stack(result.entropy_per_step), torch.stack(result.unmasked_per_step)]


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=SCHEDULER_IDS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_refresh_every_step_equals_uncached(model_name, scheduler):
    model = MODELS[model_name]()
    condition = conditions(model)
    for extra in ({"cfg_weight": 0.0}, {"cfg_weight": 2.0, "cfg_interval": [0.2, 0.7]},
                  {"cfg_weight": 1.0, "init_codes": edit_codes(model)}):
        runs = [sample(model, build_scheduler(scheduler[0], **scheduler[1]), condition, steps=5, seed=7,
                       return_history=True, fill_steps=(1, 3), cache_refresh=k, **extra) for k in (None, 1)]
        assert torch.equal(runs[0].codes, runs[1].codes)
        assert all(torch.equal(a, b) for a, b in zip(history(runs[0]), history(runs[1])))
        assert all(torch.equal(runs[0].filled[s], runs[1].filled[s]) for s in (1, 3))
        assert runs[0].position_layers_per_step == runs[1].position_layers_per_step


def _gathered(hidden, positions):
    return hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def _prepared(model, batch=2):
    return conditions(model, batch).prepare(model, torch.tensor([False, True]))


@pytest.mark.parametrize("model_name", list(MODELS))
def test_a_local_call_equals_a_full_forward_where_nothing_changed_since_the_refresh(model_name):
    """Same codes as at the full call: the cached keys and values are exact, so the local call's logits at any
    positions are the full forward's (to float tolerance); the recomputed positions need not be distinct."""
    model = MODELS[model_name]()
    cond = _prepared(model)
    codes = torch.randint(0, model.codebook_size + 1, (2, model.num_tokens), generator=torch.Generator().manual_seed(3))
    positions = torch.tensor([[5, 0, 15, 4], [9, 9, 2, 3]])
    with torch.no_grad():
        expected = model.logits(model.trunk_conditioned(codes, cond), positions)
        cache = TrunkCache()
        model.trunk_conditioned(codes, cond, cache=cache)
        local = model.logits(model.trunk_conditioned(codes, cond, cache=cache, positions=positions), positions)
    torch.testing.assert_close(local, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_name", list(MODELS))
def test_a_local_call_recomputes_the_changed_positions(model_name):
    """One block: the keys and values of the positions that did not change depend only on their own input, so the
    local call at the changed positions equals the full forward of the new codes there. With three blocks the
    cached keys and values are stale, and the local call differs (the approximation is really taken)."""
    results = []
    for depth in (1, 3):
        model = MODELS[model_name](depth=depth)
        cond = _prepared(model)
        codes = torch.full((2, model.num_tokens), model.mask_id)
        changed = torch.tensor([[1, 6, 11], [0, 7, 13]])
        new = codes.scatter(1, changed, torch.tensor([[2, 5, 8], [3, 3, 0]]))
        with torch.no_grad():
            expected = model.logits(model.trunk_conditioned(new, cond), changed)
            cache = TrunkCache()
            model.trunk_conditioned(codes, cond, cache=cache)
            local = model.logits(model.trunk_conditioned(new, cond, cache=cache, positions=changed), changed)
        results.append((local, expected))
    torch.testing.assert_close(*results[0], rtol=1e-5, atol=1e-5)
    assert (results[1][0] - results[1][1]).abs().max() > 1e-3


def test_a_local_call_needs_a_filled_cache():
    model = class_model()
    codes, positions = torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="needs the cache of a full call"):
        model.trunk_conditioned(codes, _prepared(model), positions=positions)
    with pytest.raises(RuntimeError, match="needs a full call"):
        model.trunk_conditioned(codes, _prepared(model), cache=TrunkCache(), positions=positions)


def test_patch_positions_and_their_tokens():
    positions = torch.tensor([[0, 5, 10, 15]])  # a 4x4 grid in 2x2 patches: patches 0, 0, 3, 3
    assert patch_index(positions, (4, 4), 2).tolist() == [[0, 0, 3, 3]]
    assert patch_tokens(torch.tensor([[1, 2]]), (4, 4), 2).tolist() == [[2, 3, 6, 7, 8, 9, 12, 13]]
    assert torch.equal(patch_index(positions, (4, 4), 1), positions)
    # a local call runs each patch once, marked ones first, in a fixed shape: min(tokens, patches) per sample
    assert recomputed_patches(torch.tensor([[0, 5, 10], [0, 1, 4]]), (4, 4), 2).tolist() == [[0, 3, 1], [0, 1, 2]]
    assert recomputed_patches(torch.tensor([[0, 5, 10, 15, 2]]), (4, 4), 2).tolist() == [[0, 1, 3, 2]]
    assert recomputed_count(5, (4, 4), 2) == 4 and recomputed_count(5, (4, 4), 1) == 5


@pytest.mark.parametrize("scheduler", SCHEDULERS, ids=SCHEDULER_IDS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_one_block_cached_sampling_is_exact(model_name, scheduler):
    """With one block a local step's cached keys and values are those a full evaluation would compute, so every
    refresh period draws the uncached codes: the local path (positions, the cache, CFG halves, edits, fill steps)
    end to end."""
    model = MODELS[model_name](depth=1)
    condition = conditions(model)
    for extra in ({"cfg_weight": 2.0}, {"cfg_weight": 1.0, "init_codes": edit_codes(model)}):
        runs = [sample(model, build_scheduler(scheduler[0], **scheduler[1]), condition, steps=6, seed=11,
                       fill_steps=(2,), cache_refresh=k, **extra) for k in (None, 3, 6)]
        for run in runs[1:]:
            assert torch.equal(run.codes, runs[0].codes) and torch.equal(run.filled[2], runs[0].filled[2])
            # Halton and Random always have local steps here; Confidence's may need every patch (then run full)
            assert scheduler[0] == "confidence" or not all(run.full_per_step)


def test_local_steps_cost_only_the_recomputed_positions():
    model = class_model()  # 16 tokens and a register, 3 blocks: a full pass is 17 x 3 = 51 position-layers
    counts = tokens_per_step(16, 8).tolist()
    result = sample(model, build_scheduler("halton"), torch.tensor([0, 1]), steps=8, cfg_weight=2.0, cache_refresh=4)
    assert result.full_per_step == [True, False, False, False] * 2
    decoded = [sum(counts[:i]) for i in range(9)]
    expected = [2 * 51 if i % 4 == 0 else 2 * 3 * (decoded[i + 1] - decoded[i - i % 4]) for i in range(8)]
    assert result.position_layers_per_step == expected
    assert result.position_layers_per_image < sample(model, build_scheduler("halton"), torch.tensor([0, 1]), steps=8,
                                                     cfg_weight=2.0).position_layers_per_image == 8 * 2 * 51
    assert result.nfe_per_step == [2] * 8  # a local step is still a network evaluation
    # Confidence recomputes every position masked at the refresh: its local steps cost more
    confident = sample(model, build_scheduler("confidence", guidance="constant"), torch.tensor([0, 1]), steps=8,
                       cfg_weight=2.0, cache_refresh=4)
    assert confident.position_layers_per_step == [
        2 * 51 if i % 4 == 0 else 2 * 3 * (16 - decoded[i - i % 4]) for i in range(8)]


def test_a_step_that_turns_guidance_on_or_off_refreshes():
    model = class_model()
    # s = 1 - d/16 with arccos counts over 8 steps: guided inside (0.2, 0.7]
    result = sample(model, build_scheduler("halton"), torch.tensor([0]), steps=8, cfg_weight=2.0,
                    cfg_interval=[0.2, 0.7], cache_refresh=100)
    switches = [i == 0 or a != b for i, (a, b) in enumerate(zip(result.nfe_per_step, [0] + result.nfe_per_step))]
    assert result.full_per_step == switches and 1 < sum(switches) < 8
    ramp = sample(model, build_scheduler("confidence"), torch.tensor([0]), steps=6, cfg_weight=2.0, cache_refresh=3)
    assert ramp.full_per_step == [True, True, False, False, True, False]  # step 0 unguided, then guided


@pytest.mark.parametrize("value", [0, -2, 1.5, "4"])
def test_cache_refresh_is_checked(value):
    with pytest.raises(Invalid, match=f"cache_refresh={value!r}" if isinstance(value, str) else "cache_refresh="):
        SamplingOptions(cache_refresh=value)
    with pytest.raises(Invalid, match="allowed: >= 1"):
        sample(class_model(), build_scheduler("halton"), torch.tensor([0]), steps=4, cache_refresh=value)


# ---- the option on the command line, in results files, reports and the app ------------------------------------------


def test_the_command_lines_take_cache_refresh():
    from test_configs import compose_job

    for entry in ("sample", "evaluate", "app"):  # conf/sampling, typed by the schema
        cfg = compose_job(entry, ["experiment=digits", "cache_refresh=4"])
        assert SamplingOptions.from_config(cfg).cache_refresh == 4
        assert SamplingOptions.from_config(compose_job(entry, ["experiment=digits"])).cache_refresh is None
    from halton.cli import composed_runs

    sweep = composed_runs(["-m", "experiment=digits", "cache_refresh=null,2,4"], "evaluate")  # a quality sweep
    assert [SamplingOptions.from_config(cfg).cache_refresh for cfg in sweep] == [None, 2, 4]


def test_bad_cache_refresh_on_the_command_line_is_one_line_exit_2():
    from conftest import run_in_process

    result = run_in_process("evaluate.py", "experiment=digits", "cache_refresh=0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        ("error: cache_refresh=0 is out of range; allowed: >= 1 (a full trunk evaluation every k steps, cached local "
         "steps between; 1: exact; null: off)")]


def test_results_and_reports_never_confuse_a_cached_run_with_an_exact_one(tmp_path):
    from halton.evaluation.report import settings_of
    from halton.evaluation.results import KEY_COLUMNS, ResultsFile, file_stem, row_key

    assert "cache_refresh" in KEY_COLUMNS
    old = {"experiment": "digits", "scheduler": "halton", "steps": "8", "cfg_weight": "1.0", "eval_step": "8"}
    assert row_key(old) == row_key({**old, "cache_refresh": None}) == row_key({**old, "cache_refresh": ""})
    assert row_key(old) != row_key({**old, "cache_refresh": 4})
    assert file_stem("halton", 8, 1.0, 0) == "halton_steps8_cfg1_seed0"
    assert file_stem("halton", 8, 1.0, 0, "0.1,0.3", cache_refresh=4) == "halton_steps8_cfg1_interval0.1-0.3_cache4_seed0"
    row = {**old, "scheduler_options": "randomize=True", "cfg_interval": "", "temp_min": 1.0, "temp_max": 1.0,
           "temp_pow": 1.0, "temp_warmup": 0, "top_k": None, "schedule": "arccos", "seed": 0, "num_images": 10,
           "extractor": "digits", "prompts": "", "tokens_fraction": 1.0, "nfe_per_image": 16, "digits_fid": 3.0,
           "digits_is": 2.0, "digits_precision": 0.5, "digits_recall": 0.5, "seconds": 1.0, "images_per_s": 10.0}
    results = ResultsFile(tmp_path / "results.csv")
    exact = {k: v for k, v in row.items() if k != "cache_refresh"}  # as an older evaluate.py wrote it
    results.write([exact, {**row, "cache_refresh": 4, "position_layers_per_image": 400, "digits_fid": 3.5}])
    rows = results.rows()
    assert [(r["cache_refresh"], r["digits_fid"]) for r in rows] == [("", "3.0"), ("4", "3.5")]
    assert results.has([{**row, "cache_refresh": None}]) and results.has([{**row, "cache_refresh": 4}])
    assert not results.has([{**row, "cache_refresh": 2}])
    assert [(s.label, s.mean("digits_fid")) for s in settings_of(rows)] == [("halton", 3.0), ("halton cache=4", 3.5)]


def test_the_app_samples_with_the_command_lines_cache_refresh():
    from test_app import settings, studio_for, tiny_net

    studio = studio_for(tiny_net())
    exact_grid, _, exact = studio.generate(settings(studio, seed=3))
    studio.options = SamplingOptions(cache_refresh=1)
    grid, _, summary = studio.generate(settings(studio, seed=3))
    assert "cached (a full evaluation every 1 steps: 520 trunk position-layers per image)" in summary
    assert "cached" not in exact and (grid == exact_grid).all()  # 4 guided steps x 2 passes x 65 positions x 1 block


@pytest.mark.slow  # evaluate.py and sample.py end to end; the option, the results key and the sampling are tested above
def test_evaluate_sweeps_cache_refresh_and_sample_names_its_file(tiny_run):
    from conftest import TINY_NET, run

    from halton.evaluation.report import main as report
    from halton.evaluation.results import ResultsFile

    ckpt = tiny_run / "tiny" / "checkpoints" / "last.ckpt"
    common = [f"checkpoint={ckpt}", *TINY_NET, f"paths.runs_dir={tiny_run}", f"paths.data_dir={tiny_run / 'data'}",
              "name=cached", "scheduler=halton", "steps=4"]
    run("evaluate.py", "-m", "experiment=digits", *common, "num_images=20", "batch_size=20", "cache_refresh=null,2")
    rows = ResultsFile(tiny_run / "cached" / "eval" / "results.csv").rows()
    found = {r["cache_refresh"]: (r["nfe_per_image"], r["position_layers_per_image"]) for r in rows}
    # 8x8 tokens and a register, one block, CFG: a full step costs 2 x 65; the local steps 2 and 4 run their tokens
    counts = tokens_per_step(64, 4).tolist()
    local = [2 * (counts[0] + counts[1]), 2 * (counts[2] + counts[3])]
    assert found == {"": ("8", str(4 * 130)), "2": ("8", str(2 * 130 + sum(local)))}
    grids = sorted(p.name for p in (tiny_run / "cached" / "eval" / "grids").iterdir())
    assert grids == ["halton_steps4_cfg1_cache2_seed0.png", "halton_steps4_cfg1_seed0.png"]
    report([str(tiny_run / "cached" / "eval" / "results.csv")])
    table = (tiny_run / "cached" / "eval" / "report.md").read_text()
    assert "| halton cache=2 | 4 |" in table and "| halton | 4 |" in table
    run("sample.py", "experiment=digits", *common, "cache_refresh=2", "per_class=1", "classes=[3]")
    assert (tiny_run / "cached" / "samples" / "halton_steps4_cfg1_cache2_seed0.png").is_file()
