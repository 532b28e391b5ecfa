"""A prompt file that is not UTF-8 text (issue 25, finding 6): sample.py's ``prompt_file`` and evaluate.py's
``prompt_set.path`` are read when the command line is checked, before any model loads, and refused in one line
naming the option, the file, the byte offset where the text stops being UTF-8 and what is allowed, exit code 2."""

from __future__ import annotations

import time

import pytest

from halton.conditions.text import TextKind
from halton.evaluation.prompts import evaluation_values
from halton.options.evaluation import PromptSetOptions

from conftest import run_in_process

LATIN1 = "a red fox\n# a comment\ncafé au lait\n".encode("latin-1")  # é is 0xe9, at byte 25
ALLOWED = "allowed: a UTF-8 text file (convert it, e.g. iconv -f latin1 -t utf-8)"


def not_utf8(key: str, path) -> str:
    return f"{key}={path} is not UTF-8 text: byte 0xe9 at offset 25 (invalid continuation byte); {ALLOWED}"


@pytest.fixture
def latin1_prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes(LATIN1)
    return path


@pytest.mark.parametrize("entry, args", [
    ("sample.py", ["prompt_file={path}"]),
    ("evaluate.py", ["prompt_set.source=file", "prompt_set.path={path}"]),
], ids=["sample.py prompt_file", "evaluate.py prompt_set.path"])
def test_a_prompt_file_that_is_not_utf8_is_refused_before_the_model_loads(tmp_path, latin1_prompts, entry, args):
    """No checkpoint exists: the file is refused before the checkpoint is looked for (and read by the checks)."""
    args = [a.format(path=latin1_prompts) for a in args]
    started = time.monotonic()
    result = run_in_process(entry, "experiment=digits_t2i", *args, f"paths.runs_dir={tmp_path / 'runs'}")
    took = time.monotonic() - started
    key = args[-1].partition("=")[0]
    assert result.returncode == 2 and result.stderr.splitlines() == [f"error: {not_utf8(key, latin1_prompts)}"]
    assert not (tmp_path / "runs").exists() and took < 10


def test_an_evaluation_prompt_file_with_no_prompt_is_refused(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# only a comment\n\n")
    result = run_in_process("evaluate.py", "experiment=digits_t2i", "prompt_set.source=file",
                            f"prompt_set.path={path}", f"paths.runs_dir={tmp_path / 'runs'}")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: prompt_set.path={path} holds no prompt; allowed: a text file with "
                                          "one prompt per line"]


def test_the_evaluation_reads_its_prompt_file_naming_the_option(latin1_prompts):
    """Where the evaluation reads the prompts (a prompt set built in code, past the command line's checks)."""
    source = PromptSetOptions(source="file", path=str(latin1_prompts))
    with pytest.raises(ValueError) as refused:
        evaluation_values(TextKind(encoder="unused"), 10, 4, source)
    assert str(refused.value) == not_utf8("prompt_set.path", latin1_prompts)
    latin1_prompts.write_text("a red fox\n# a comment\ncafé au lait\n", encoding="utf-8")
    values, name = evaluation_values(TextKind(encoder="unused"), 10, 4, source)
    assert values == ["a red fox", "café au lait", "a red fox", "café au lait"] and name == "file:prompts.txt"
