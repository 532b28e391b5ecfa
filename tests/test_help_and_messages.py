"""Help and messages (issue 24, point 5): each entry point's --help lists its own keys with the comment written
beside each in its config, then its groups; an unknown key gets the closest of that entry point's keys and only
those; progress bars draw frames on a terminal only; training prints none of Lightning's banner lines."""

from __future__ import annotations

import io
import logging
import re
import string
import sys

import pytest
from conftest import CONSOLE, ROOT, run, run_in_process

from halton.cli import choices, own_top_keys, preflight
from halton.help import WIDTH, own_keys
from halton.options import Invalid
from halton.utils import progress

CONF = ROOT / "conf"
ENTRIES = ["train", "sample", "evaluate", "app", "export", "extract"]


def help_of(entry: str, *overrides: str) -> str:
    """The entry point's --help as Hydra writes it: its help template (conf/hydra/help/halton.yaml) composed and
    filled in."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3", job_name=entry):
        cfg = compose(entry, overrides=list(overrides), return_hydra_config=True)
        template = cfg.hydra.help.template
    return string.Template(template).substitute(FLAGS_HELP="", HYDRA_CONFIG_GROUPS="", APP_CONFIG_GROUPS="",
                                                CONFIG="")


def comment_of(path, key: str) -> str:
    """The comment written beside a top-level key in a config file."""
    line = next(line for line in path.read_text().splitlines() if line.startswith(f"{key}:"))
    return line.split("#", 1)[1].strip()


# ------------------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("entry", ENTRIES)
def test_help_lists_the_entry_points_own_keys_with_their_comments_then_its_groups(entry):
    text = help_of(entry)
    lines = text.splitlines()
    assert len(lines) < 80 and max(map(len, lines)) <= WIDTH
    for key, item in own_keys(entry).items():
        row = next((line for line in lines if line.startswith(f"  {key}=")), None)
        if row is None:  # a mapping (edit:): its keys are listed, dotted
            assert any(line.startswith(f"  {key}.") for line in lines), key
        elif item.comment:  # the comment begins on the key's line or, after a long value, on the next one
            following = " ".join(lines[lines.index(row):lines.index(row) + 3])
            assert item.comment.split()[0] in following, key
    groups = text.split("Config groups")[1]
    assert f"choices: {', '.join(choices('paths'))}" in groups
    assert "_target_:" not in text and "\ndata:\n" not in text  # not the composed config


def test_sample_help_reads_its_comments_from_its_configs_and_has_no_training_keys():
    text = help_of("sample")
    assert "cfg_weight=1.0" in text and comment_of(CONF / "sampling" / "default.yaml", "cfg_weight") in text
    assert comment_of(CONF / "sample.yaml", "per_class") in text
    assert "checkpoint=${paths.runs_dir}/${name}/checkpoints/last.ckpt" in text  # a $ survives Hydra's template
    for training in ("resume=", "ckpt_path=", "model.lr", "max_steps", "callbacks"):
        assert training not in text
    groups = " ".join(text.split("Config groups")[1].split())
    assert f"scheduler=halton {comment_of(CONF / 'sample.yaml', '  - scheduler')}; choices: " \
           f"{', '.join(choices('scheduler'))} " in groups


def test_help_shows_the_values_an_experiment_sets():
    assert "  num_images=50000" in help_of("evaluate", "experiment=hmaskgit_b_256")
    assert "  num_images=1000" in help_of("evaluate")
    assert "  experiment=hmaskgit_b_256" in help_of("evaluate", "experiment=hmaskgit_b_256")


def test_help_through_the_entry_points_command_line_in_process():
    result = run_in_process("sample.py", "--help")
    assert result.returncode == 0 and result.stdout.startswith("python sample.py experiment=digits")
    assert "  steps=16" in result.stdout and "Config groups" in result.stdout


@pytest.mark.slow
def test_sample_help_command():
    result = run("sample.py", "--help")
    lines = result.stdout.splitlines()
    assert result.stderr == "" and 40 < len(lines) < 80  # was the 156-line composed config
    assert any(line.startswith("  cfg_weight=1.0") and "CFG:" in line for line in lines)
    assert not any("ckpt_path" in line or "max_steps" in line for line in lines)


# --------------------------------------------------------------------------------------------- unknown keys
def refusal(entry: str, *argv: str) -> str:
    with pytest.raises(Invalid) as error:
        preflight(list(argv), entry)
    return str(error.value)


def listed(message: str) -> list[str]:
    return message.split("allowed: ")[1].split(";")[0].split(", ")


def test_a_misspelt_key_gets_the_closest_of_the_entry_points_own_keys_and_only_those():
    message = refusal("sample", "step=8")
    assert message.startswith("unknown option step=8: there is no key 'step'; did you mean steps? allowed: ")
    assert listed(message) == own_top_keys("sample")
    assert {"num_images", "ckpt_path", "resume", "batch_size", "callbacks"}.isdisjoint(listed(message))
    assert message.endswith("; +step=8 would add it as a new key, which sample.py does not read")
    assert listed(refusal("train", "sed=1")) == ["name", "seed", "resume", "ckpt_path", "data", "model", "scheduler",
                                                 "trainer", "callbacks", "logger", "paths", "experiment"]


@pytest.mark.parametrize("entry,arg,meant", [
    ("sample", "cfg=2", "cfg_weight or cfg_interval"),  # a prefix
    ("evaluate", "weight=2", "cfg_weight"),              # a word of the key
    ("app", "prt=0", "port"),
    ("extract", "splt=val", "split"),
    ("export", "outt=x", "out"),
])
def test_prefixes_and_words_of_a_key_are_suggested(entry, arg, meant):
    assert f"; did you mean {meant}? allowed: " in refusal(entry, arg)


def test_a_key_another_entry_point_has_is_refused_in_one_line_with_this_ones_keys():
    message = refusal("sample", "num_images=100")  # evaluate.py's key (experiments set it): was "Could not override"
    assert message.startswith("unknown option num_images=100: there is no key 'num_images'; allowed: checkpoint, ")
    assert listed(message) == own_top_keys("sample") and "+num_images=100" in message


def test_a_nested_unknown_key_lists_the_keys_beside_it_and_names_plus_where_hydra_adds_it():
    message = refusal("sample", "edit.imag=x.png")
    assert message.startswith("unknown option edit.imag=x.png: there is no key 'edit.imag'; did you mean edit.image or "
                              "edit.images? allowed: edit.image, edit.box, edit.mask, edit.outpaint, edit.dilate, "
                              "edit.composite, edit.images, edit.boxes, edit.masks")
    assert message.endswith("; +edit.imag=x.png would add it as a new key")
    message = refusal("train", "model.lrr=1e-4")
    assert "did you mean model.lr?" in message and "_target_" not in message


def test_the_command_line_answers_an_unknown_key_in_one_line_exit_2():
    result = run_in_process("sample.py", "cfg=2")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: unknown option cfg=2: there is no key 'cfg'; did you mean cfg_weight or")


# ------------------------------------------------------------------------------------------------ progress bars
class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_draws_frames_on_a_terminal_only(monkeypatch):
    terminal, log = Terminal(), io.StringIO()
    list(progress.progress(range(5), stream=terminal, desc="sampling", mininterval=0))
    assert "\r" in terminal.getvalue()
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0)  # a line at every refresh
    list(progress.progress(range(5), stream=log, desc="sampling", leave=True))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and lines[-1].startswith("sampling: 100%") and "5/5" in lines[-1]
    assert len(lines) == len(set(lines)) and len(lines) <= 7  # one line per refresh, none twice


def test_a_short_bar_writes_nothing_to_a_log():
    log = io.StringIO()
    list(progress.progress(range(100), stream=log, desc="sampling", leave=False))
    assert log.getvalue() == ""


def test_training_bar_off_a_terminal_writes_one_line_per_refresh_without_v_num(tmp_path, capsys):
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.loggers import CSVLogger

    from halton.training import StepProgressBar

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            loss = self.layer(batch).pow(2).mean()
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, _):
            self.log("val/loss", self.layer(batch).pow(2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=2)
    trainer = pl.Trainer(max_steps=6, callbacks=[StepProgressBar(refresh_rate=2)], logger=CSVLogger(tmp_path),
                         enable_model_summary=False, enable_checkpointing=False, val_check_interval=3,
                         num_sanity_val_steps=1, accelerator="cpu", default_root_dir=tmp_path)
    assert not sys.stdout.isatty()  # captured, as in a log file
    trainer.fit(Tiny(), data, data)
    printed = capsys.readouterr().out
    bars = [line for line in printed.splitlines() if line.startswith("training")]
    assert "\r" not in printed and "v_num" not in printed and "Validation" not in printed
    steps = [int(re.search(r"(\d)/6", line)[1]) for line in bars]  # refreshes: every 2 steps, after validation
    assert set(steps) == {0, 2, 4, 6} and steps == sorted(steps) and len(bars) == len(set(bars)) <= 7
    assert "train/loss=" in bars[-1]


# ------------------------------------------------------------------------------------------- Lightning's banner
BANNER = ["GPU available: False", "TPU available: False", "💡 Tip", "litlogger", "Total Flops", "FLOPs",
          "Modules in train mode", "srun", "v_num"]


def test_lightnings_banner_lines_are_dropped_and_its_warnings_kept(caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

    from halton.utils.logs import route_lightning_logs

    route_lightning_logs()
    with caplog.at_level(logging.INFO):
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("TPU available: False, using: 0 TPU cores")
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        rank_zero_info("GPU available: True (cuda), used: True")
        with pytest.warns(UserWarning, match="does not have many workers"):
            rank_zero_warn("The dataloader does not have many workers")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: True (cuda), used: True"]


def test_a_tiny_training_runs_output_holds_no_banner_and_no_bar_frames(tiny_run):
    printed = CONSOLE["tiny_run"]  # train.py's stdout and stderr, redirected
    assert "\r" not in printed
    assert [line for line in printed.splitlines() if any(noise in line for noise in BANNER)] == []
    assert re.search(r"^model: MaskTransformer, [\d.]+ K parameters \([\d.]+ K trainable, [\d.]+ MB\)$", printed,
                     re.MULTILINE)
    assert re.search(r"^training: 100%.* 4/4 \[", printed, re.MULTILINE)
    log = (tiny_run / "tiny" / "train.log").read_text()
    assert not any(noise in log for noise in BANNER)
