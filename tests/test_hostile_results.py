"""Results files that are damaged, foreign or shared (issue 25, finding 5): a file evaluate.py did not write whole is
refused in one line naming it (and the line) and what is wrong, never rewritten nor appended to; a symbolic link is
written through to its target; the report reads what the evaluation writes, or names the bad row, exit code 2."""

import logging
import os

import pytest
from conftest import TINY_NET, run

from halton.evaluation.report import main as report
from halton.evaluation.results import ResultsFile

LEFT = "; left as it is: repair it or move it away"


def evaluated(seed: int, eval_step: int = 4) -> dict:
    """A row as evaluate.py makes it (digits extractor, one scorer)."""
    return {"experiment": "digits", "checkpoint": "runs/digits/checkpoints/last.ckpt", "scheduler": "halton",
            "scheduler_options": "randomize=False", "steps": 4, "cfg_weight": 1.0, "cfg_interval": "",
            "temp_min": 1.0, "temp_max": 1.0, "temp_pow": 1.0, "temp_warmup": 0, "top_k": None, "schedule": "arccos",
            "seed": seed, "num_images": 100, "extractor": "digits", "prompts": "", "eval_step": eval_step,
            "tokens_fraction": 1.0, "nfe_per_image": 8, "digits_fid": 12.5 + seed, "digits_is": 7.25,
            "digits_precision": 0.75, "digits_recall": 0.5, "adherence": 0.9, "seconds": 3.5, "images_per_s": 28.57}


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "eval" / "results.csv"
    ResultsFile(path).write([evaluated(0), evaluated(1)])
    return path


def refused(path, message: str) -> None:
    """Adding a row and asking whether a cell is there are both refused with ``message``; the file is untouched."""
    before = path.read_bytes()
    for attempt in (lambda: ResultsFile(path).write([evaluated(2)]), lambda: ResultsFile(path).has([evaluated(0)])):
        with pytest.raises(ValueError) as error:
            attempt()
        assert str(error.value) == message
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name != "results.csv.lock") == [path.name]


def cut_rows(path, *blank: str) -> None:
    """The file as an older evaluate.py left it after a cut row: the row kept, with ``blank`` columns empty."""
    lines = path.read_text().splitlines(keepends=True)
    header = lines[0].strip().split(",")
    values = lines[2].strip().split(",")
    for column in blank:
        values[header.index(column)] = ""
    path.write_text(lines[0] + lines[1] + ",".join(values) + "\r\n")


def test_a_truncated_last_row_is_refused_not_rewritten(results):
    results.write_bytes(results.read_bytes()[:-120])  # an interrupted copy: the last row cut in its metrics
    refused(results, f"results file {results}, line 3: the last row is cut short (no line end: an interrupted copy "
                     f"or write){LEFT}")


@pytest.mark.parametrize("blank, what", [
    (("digits_fid", "digits_is", "digits_precision", "digits_recall", "adherence", "seconds", "images_per_s"),
     "metrics missing (no fid)"),
    (("digits_is", "digits_precision"), "metrics missing (digits_is, digits_precision)"),
    (("eval_step",), "empty eval_step")])
def test_a_row_with_missing_values_is_refused(results, blank, what):
    cut_rows(results, *blank)
    refused(results, f"results file {results}, line 3: {what}{LEFT}")


def test_a_row_of_the_wrong_length_is_refused(results):
    lines = results.read_text().splitlines(keepends=True)
    results.write_text(lines[0] + lines[1][:60] + "\r\n" + lines[2])
    columns = len(lines[0].split(","))  # 29 (the columns of results.LEADING_COLUMNS, metrics, seconds, images/s)
    refused(results, f"results file {results}, line 2: 4 values where the header names {columns} columns{LEFT}")


def test_a_foreign_csv_is_refused_not_rewritten_under_our_header(tmp_path):
    path = tmp_path / "eval" / "results.csv"
    path.parent.mkdir()
    path.write_text("name,score\nalice,3\nbob,4\n")
    refused(path, f"results file {path} is not a results file of evaluate.py (its header has no column experiment, "
                  f"checkpoint, scheduler){LEFT}")


@pytest.mark.parametrize("data, what", [(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "binary (a NUL byte at byte 8)"),
                                        (b"caf\xe9,1\n", "not UTF-8 text (byte 3)")])
def test_a_binary_file_is_refused_by_name(tmp_path, data, what):
    path = tmp_path / "eval" / "results.csv"
    path.parent.mkdir()
    path.write_bytes(data)
    refused(path, f"results file {path} is {what}, not a CSV file{LEFT}")


def test_a_symbolic_link_is_written_through_to_its_target(tmp_path, results):
    shared = results  # the group's file, which every run folder links to
    shared.chmod(0o664)  # group-writable: colleagues' jobs add rows too
    link = tmp_path / "runs" / "digits" / "eval" / "results.csv"
    link.parent.mkdir(parents=True)
    link.symlink_to(shared)
    old = os.umask(0o022)
    try:
        ResultsFile(link).write([evaluated(2)])
    finally:
        os.umask(old)
    assert link.is_symlink() and link.resolve() == shared
    assert [r["seed"] for r in ResultsFile(shared).rows()] == ["0", "1", "2"]
    assert shared.stat().st_mode & 0o777 == 0o664
    assert (shared.parent / "results.csv.lock").exists()  # the lock every writer of the target takes
    assert sorted(p.name for p in link.parent.iterdir()) == ["results.csv"]
    assert ResultsFile(link).has([evaluated(2)])


def test_a_row_written_under_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        ResultsFile(tmp_path / "results.csv").write([evaluated(0)])
    finally:
        os.umask(old)
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == 0o644


def test_the_report_reads_what_evaluation_writes(results, tmp_path):
    report([str(results), "--out", str(tmp_path / "report")])
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| halton | 4 | 1 | 2 | 100 | 13.000 ± 0.707 | 7.250 ± 0.000 | 0.750 ± 0.000 | 0.500 ± 0.000 | " \
           "0.900 ± 0.000 | 8.000 ± 0.000 | 28.6 |" in table


@pytest.mark.parametrize("damage, line", [
    (lambda text: text[:-120], "line 3: the last row is cut short (no line end: an interrupted copy or write)"),
    (lambda text: text.replace(",4,1.0,8,", ",four,1.0,8,", 1), "line 2: eval_step='four' is not an integer"),
    (lambda text: text.replace(",4,1.0,8,", ",,1.0,8,", 1), "line 2: empty eval_step")])
def test_the_report_names_the_bad_row_in_one_line(results, tmp_path, capsys, monkeypatch, damage, line):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in its own process: the line goes to stderr
    results.write_text(damage(results.read_text()))
    with pytest.raises(SystemExit) as exit:
        report([str(results), "--out", str(tmp_path / "report")])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: results file {results}, {line}{LEFT}"]
    assert not (tmp_path / "report").exists()


def test_report_command_line_on_a_cut_file(results):
    results.write_bytes(results.read_bytes()[:-120])
    result = run("-m halton.evaluation.report", str(results), check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: results file {results}, line 3: the last row is cut short (no line "
                                          f"end: an interrupted copy or write){LEFT}"]


@pytest.mark.slow  # evaluate.py end to end; the refusal itself is tested in-process
def test_evaluate_refuses_a_foreign_results_file_before_the_work(tmp_path):
    """evaluate.py: one line, exit code 2, the file as it was, no run folder left; with force=true too."""
    from halton.models import MaskTransformer

    MaskTransformer(17, 8, 32, 1, 2, num_classes=10).save_pretrained(tmp_path / "model")
    path = tmp_path / "scores.csv"
    path.write_text("name,score\nalice,3\n")
    result = run("evaluate.py", "experiment=digits", *TINY_NET, f"paths.runs_dir={tmp_path / 'runs'}",
                 f"paths.data_dir={tmp_path / 'data'}", f"checkpoint={tmp_path / 'model'}", f"results={path}",
                 "num_images=20", "batch_size=20", "steps=2", "force=true", check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: results file {path} is not a results file of evaluate.py (its "
                                          f"header has no column experiment, checkpoint, scheduler){LEFT}"]
    assert path.read_text() == "name,score\nalice,3\n"
    assert not (tmp_path / "runs").exists()
