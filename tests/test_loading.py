"""halton.models.loading: every kind of checkpoint told apart once, checked against a composed config with one
line per mismatch, loaded to the very weights it holds; halton.build: the parts sample.py, evaluate.py and the app
draw with; and the package's imports form no circle."""

import ast
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY_NET
from hydra.utils import instantiate
from test_configs import compose_job
from test_hub import hub_cache

from halton.build import build_from_config
from halton.conditions import ClassKind
from halton.models import MaskTransformer, TextMaskTransformer
from halton.models.loading import Kind, check_fits, kind_of_path, load_model, read
from halton.models.official import strip_prefixes


def digits_config(*overrides):
    return compose_job("sample", ["experiment=digits", *TINY_NET, *overrides])


def save_trained(path, net, extra=None):
    """A checkpoint laid out as train.py's (Lightning's ``state_dict`` with the model under ``model.``)."""
    state = {f"model.{k}": v for k, v in net.state_dict().items()} | (extra or {})
    torch.save({"state_dict": state, "global_step": 4, "epoch": 0}, path)
    return path


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    net = instantiate(digits_config().model.net)
    return save_trained(tmp_path / "last.ckpt", net), net


def assert_same_weights(model, expected: dict):
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_every_kind_is_told_apart_and_loads_the_weights_it_holds(trained, tmp_path, fixtures, monkeypatch):
    from huggingface_hub import constants

    path, net = trained
    assert kind_of_path(str(path)) is None  # a file: its contents tell
    checkpoint = read(str(path))
    assert (checkpoint.kind, checkpoint.config, checkpoint.shapes()) == (Kind.TRAINED, None, {})
    assert_same_weights(load_model(checkpoint, digits_config().model.net), net.state_dict())

    for kind, model_class, shapes in (("c2i", MaskTransformer, {"num_classes": 10}),
                                      ("t2i", TextMaskTransformer, {"text width": 48})):
        released = read(fixtures / f"official_{kind}_tiny.pth")
        assert released.kind is Kind.RELEASED
        assert released.shapes() == {"grid tokens": 64, "codebook_size": 32} | shapes
        model = load_model(released, official_heads=4)
        assert type(model) is model_class and not model.training
        assert_same_weights(model, strip_prefixes(released.state["model_state_dict"]))

    folder = tmp_path / "folder"
    net.save_pretrained(folder)
    assert kind_of_path(str(folder)) is Kind.FOLDER
    saved = read(str(folder))
    assert saved.kind is Kind.FOLDER and saved.config["hidden_dim"] == 32 and saved.state is None
    assert saved.shapes() == {"grid tokens": 64, "codebook_size": 17, "num_classes": 10}
    assert_same_weights(load_model(str(folder)), net.state_dict())

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    hub_cache(cache, "someone/digits", {p.name: p for p in folder.iterdir()})
    hub_cache(cache, "someone/released", {"tiny.pth": fixtures / "official_c2i_tiny.pth"})
    assert kind_of_path("hf://someone/digits") is Kind.HUB
    assert read("hf://someone/digits").kind is Kind.HUB
    assert_same_weights(load_model("hf://someone/digits"), net.state_dict())
    assert kind_of_path("hf://someone/released/tiny.pth") is None  # a file on the hub: read, then told
    assert read("hf://someone/released/tiny.pth").kind is Kind.RELEASED
    assert kind_of_path("hf://malformed") is None


def test_what_is_no_model_checkpoint_is_one_line(tmp_path, fixtures):
    with pytest.raises(ValueError) as error:
        read(fixtures / "official_c2i_tiny_expected.pt")  # a dict of tensors, but no model
    assert str(error.value) == (f"checkpoint {fixtures / 'official_c2i_tiny_expected.pt'} is neither a train.py "
                                "checkpoint (state_dict) nor a released Halton-MaskGIT one (model_state_dict)")
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')  # a folder of some other library's model
    with pytest.raises(ValueError, match=r"config.json is not the config of a halton model \(no codebook_size\)$"):
        read(str(tmp_path))


def test_a_checkpoint_of_another_configuration_is_refused_in_one_line(trained, tmp_path, fixtures):
    path, net = trained
    cfg = digits_config()
    check_fits(read(path), cfg)  # fits

    wider = save_trained(tmp_path / "wider.ckpt", instantiate(digits_config("model.net.hidden_dim=64").model.net))
    with pytest.raises(ValueError) as error:
        check_fits(read(wider), cfg)
    assert str(error.value) == (f"checkpoint {wider} is of another configuration: cls_emb.weight is [11, 64] there, "
                                "[11, 32] in this model config (20 weights differ)")

    deeper = save_trained(tmp_path / "deeper.ckpt", instantiate(digits_config("model.net.depth=2").model.net))
    with pytest.raises(ValueError) as error:
        check_fits(read(deeper), cfg)
    assert str(error.value) == (f"checkpoint {deeper} is of another configuration: 0 weights of this model config "
                                "missing there, 11 unknown (e.g. transformer.layers.1.attn.wk.weight)")

    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {"ema.decay": torch.tensor(0.999)}}, empty)
    with pytest.raises(ValueError) as error:
        check_fits(read(empty), cfg)
    assert str(error.value) == f"checkpoint {empty} holds no model weights (no model.* entries in its state_dict)"

    released = fixtures / "official_c2i_tiny.pth"
    with pytest.raises(ValueError) as error:
        check_fits(read(released), cfg)
    assert str(error.value) == (f"checkpoint {released} is of another configuration: it has {{'grid tokens': 64, "
                                "'codebook_size': 32, 'num_classes': 10}, the experiment's data config "
                                "{'grid tokens': 64, 'codebook_size': 17, 'num_classes': 10}")
    # Of this configuration but without its heads: the same line from the check and from the loader
    heads = (f"checkpoint {released} is a released Halton-MaskGIT checkpoint; give its heads with official_heads=N "
             "(tiny 6, small 6, base 12, large 16; text-to-image 16)")
    with pytest.raises(ValueError) as error:
        check_fits(read(released), digits_config("data.codebook_size=32"))
    assert str(error.value) == heads
    with pytest.raises(ValueError) as error:
        load_model(released)
    assert str(error.value) == heads
    check_fits(read(released), digits_config("data.codebook_size=32", "official_heads=4"))


def test_build_from_config_gives_the_parts_sample_evaluate_and_the_app_draw_with(trained):
    path, net = trained
    cfg = digits_config(f"checkpoint={path}", "scheduler=confidence", "scheduler.r_temp=3")
    cheap = build_from_config(cfg)
    assert (cheap.scheduler.name, cheap.scheduler.r_temp, cheap.net, cheap.tokenizer) == ("confidence", 3, None, None)
    assert isinstance(cheap.kind, ClassKind)
    built = build_from_config(cfg, torch.device("cpu"))
    assert_same_weights(built.net, net.state_dict())
    assert not built.net.training and not built.tokenizer.training
    images = built.tokenizer.decode(torch.zeros(2, 8, 8, dtype=torch.long))
    assert images.shape[0] == 2 and built.tokenizer is built.data.tokenizer


def test_lightnings_load_from_checkpoint_builds_the_module_again(tiny_run):
    """MaskGITModule.load_from_checkpoint(path), Lightning's usual call: the checkpoint records the network and the
    condition kind as specs, so nothing else is needed; a text module keeps its encoder's settings."""
    from halton.conditions import TextKind
    from halton.training import MaskGITModule

    ckpt = tiny_run / "tiny" / "checkpoints" / "last.ckpt"
    module = MaskGITModule.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu")
    expected = load_model(str(ckpt), compose_job("sample", ["experiment=digits", *TINY_NET]).model.net)
    assert isinstance(module.model, MaskTransformer) and isinstance(module.condition, ClassKind)
    assert module.hparams.lr == 3e-3 and module.hparams.net["hidden_dim"] == 32
    assert all(torch.equal(a, b) for a, b in zip(module.model.state_dict().values(), expected.state_dict().values()))
    text = MaskGITModule(TextMaskTransformer(17, 8, c=32, hidden_dim=32, text_dim=16, depth=1, heads=2, mlp_dim=64),
                         condition=TextKind("minilm", 12, prompts=["a"]))
    rebuilt = MaskGITModule(**{k: v for k, v in text.hparams.items()})
    assert isinstance(rebuilt.condition, TextKind) and rebuilt.condition.spec() == text.condition.spec()
    assert rebuilt.model.init_config == text.model.init_config


def test_classifying_checkpoints_imports_no_torch():
    """The pre-flight checks (halton.validation) tell checkpoint kinds apart before torch loads."""
    code = ("import sys, halton.models.loading, halton.validation, halton.build; "
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"


def test_the_package_imports_form_no_circle():
    """No module of halton imports, at its top or inside a function, a module that imports it back (the model
    classes import halton.models.hub; it imports none of them)."""
    modules = {}
    for path in (ROOT / "halton").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    assert "halton.models.hub" in graph["halton.models.transformer"]

    def circle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for following in graph[node]:
                if following == start:
                    return path
                if following not in seen:
                    seen.add(following)
                    stack.append((following, [*path, following]))
        return None

    assert {name: circle for name in sorted(graph) if (circle := circle_from(name))} == {}
