"""What an entry point's ``--help`` shows, and the keys its command line may name: the entry point's own keys
(its primary config, e.g. ``conf/sample.yaml``, and the ``@package _global_`` groups it loads, e.g.
``conf/sampling/default.yaml``), each with the one-line comment written beside it there, then its config groups and
their choices. ``conf/hydra/help/halton.yaml`` puts :func:`help_text` into Hydra's help template through the
``halton.help`` resolver. Importing this module imports no torch."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

RESOLVER = "halton.help"
WIDTH = 118  # the help's lines, comments wrapped to fit
# the command each primary config belongs to, as the user types it
COMMANDS = {"train": "python train.py", "sample": "python sample.py", "evaluate": "python evaluate.py",
            "app": "python -m halton.app", "export": "python -m halton.export",
            "extract": "python -m halton.data.writing.extract_codes"}
_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<rest>.*)$")


@dataclass(frozen=True)
class Entry:
    """A key (``steps``, ``edit.box``) or a config group (``scheduler``), with the comment beside it."""
    key: str
    comment: str
    source: str  # the file it is written in, relative to conf/


def _config_dir() -> Path:
    # imported when needed: importing halton registers the resolver, and halton.validation imports much more
    from halton.validation import CONFIG_DIR

    return CONFIG_DIR


def choices(group: str, config_dir: Path | None = None) -> list[str]:
    """The configs of a group: conf/<group>/*.yaml."""
    return sorted(p.stem for p in ((config_dir or _config_dir()) / group).glob("*.yaml"))


def _comment(rest: str) -> tuple[str, str]:
    """(value text, comment) of what follows ``key:`` on a YAML line; a # inside quotes is part of the value."""
    quote = None
    for i, char in enumerate(rest):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1:].strip()
    return rest.strip(), ""


def _lines(path: Path) -> list[tuple[str, str, str]]:
    """(dotted key, value text, comment) of every mapping line of a config file outside ``defaults`` and ``hydra``;
    for ``defaults``, the group entries as (``defaults.GROUP``, choice, comment)."""
    out, stack = [], []  # stack: (indent, key) of the open mappings
    for line in path.read_text().splitlines():
        entry = re.match(r"^  - (?:override |optional )?(?P<group>[\w/@.]+): *(?P<rest>.*)$", line)
        if stack and stack[0][1] == "defaults" and entry:
            choice, comment = _comment(entry["rest"])
            out.append((f"defaults.{entry['group']}", choice, comment))
            continue
        match = _LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        value, comment = _comment(match["rest"])
        out.append((".".join(k for _, k in stack), value, comment))
    return out


def _global_configs(config_name: str, config_dir: Path) -> list[Path]:
    """The ``@package _global_`` configs the entry point's defaults list loads by default, experiments aside (they
    set other entry points' keys too): e.g. conf/sampling/default.yaml."""
    paths = []
    for key, choice, _ in _lines(config_dir / f"{config_name}.yaml"):
        group = key.removeprefix("defaults.")
        if key.startswith("defaults.") and group not in ("experiment",) and not group.startswith("hydra"):
            path = config_dir / group / f"{choice}.yaml"
            if path.is_file() and path.read_text().startswith("# @package _global_"):
                paths.append(path)
    return paths


def own_keys(config_name: str, config_dir: Path | None = None) -> dict[str, Entry]:
    """The keys an entry point has itself, in file order: its primary config's (nested ones dotted: ``edit.box``)
    and those of the global configs it loads (:func:`_global_configs`); the first comment written for a key wins
    (``steps`` in evaluate.yaml says why its default differs, the sampling group's says what it does)."""
    config_dir = config_dir or _config_dir()
    keys: dict[str, Entry] = {}
    for path in [config_dir / f"{config_name}.yaml", *_global_configs(config_name, config_dir)]:
        for key, _, comment in _lines(path):
            if key.split(".")[0] in ("defaults", "hydra"):
                continue
            source = str(path.relative_to(config_dir))
            if key not in keys or (comment and not keys[key].comment):
                keys[key] = Entry(key, comment or (keys[key].comment if key in keys else ""), source)
    return keys


def own_groups(config_name: str, config_dir: Path | None = None) -> dict[str, Entry]:
    """The config groups of an entry point's defaults list (``scheduler``, ``experiment``, ...), Hydra's own and
    the global ones whose keys :func:`own_keys` lists (``sampling``) aside."""
    config_dir = config_dir or _config_dir()
    globals_ = {p.parent.name for p in _global_configs(config_name, config_dir)}
    groups = {}
    for key, _, comment in _lines(config_dir / f"{config_name}.yaml"):
        group = key.removeprefix("defaults.")
        if key.startswith("defaults.") and not group.startswith("hydra") and group not in globals_:
            groups[group] = Entry(group, comment, f"{group}/")
    return groups


def _raw(root, key: str):
    """A key's value in the composed config as written (interpolations unresolved), or None when it has none."""
    node = root
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node._get_node(part)
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return node._value()


def _shown(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return str(OmegaConf.create(value)).replace("'", "").replace(" ", "")  # [0.1,0.3]
    return str(value)


def help_text(config_name: str, root=None, config_dir: Path | None = None) -> str:
    """An entry point's help: its usage (the first comment lines of its config), its own keys with their values
    (from the composed config ``root`` when given, so an experiment's values show) and comments, then its config
    groups with the chosen one and every choice."""
    config_dir = config_dir or _config_dir()
    primary = config_dir / f"{config_name}.yaml"
    usage = []
    for line in primary.read_text().splitlines():
        if not line.startswith("#"):
            break
        usage.append(re.sub(r"^# ?", "", line).rstrip())
    chosen = {} if root is None else (_raw(root, "hydra.runtime.choices") or {})
    defaults = {k.removeprefix("defaults."): v for k, v, _ in _lines(primary) if k.startswith("defaults.")}
    keys = own_keys(config_name, config_dir)
    # without a composed config, each key's value as its own file writes it (each file read once)
    files = {} if root is not None else {s: OmegaConf.load(config_dir / s) for s in {e.source for e in keys.values()}}
    rows = []
    for entry in keys.values():
        value = _raw(root if root is not None else files[entry.source], entry.key)
        if isinstance(value, dict):
            continue  # a mapping (edit): its keys follow, dotted
        rows.append((f"{entry.key}={_shown(value)}", entry.comment))
    group_rows = []
    for group, entry in own_groups(config_name, config_dir).items():
        choice = chosen.get(group, defaults.get(group))
        options = ", ".join(choices(group, config_dir))
        comment = f"{entry.comment}; " if entry.comment else ""
        group_rows.append((f"{group}={_shown(choice)}", f"{comment}choices: {options}"))
    width = min(max(len(left) for left, _ in rows + group_rows) + 2, 34)

    def table(pairs):
        lines = []
        for left, right in pairs:
            wrapped = textwrap.wrap(right, WIDTH - width - 2, break_on_hyphens=False) or [""]
            if len(left) >= width:  # a long value: its comment on the next lines
                lines.append(f"  {left}")
                wrapped = [line for line in wrapped if line]
            else:
                lines.append(f"  {left:<{width}}{wrapped.pop(0)}".rstrip())
            lines += [f"  {'':<{width}}{line}" for line in wrapped]
        return "\n".join(lines)

    sources = ", ".join(dict.fromkeys(f"conf/{e.source}" for e in keys.values()))
    text = "\n".join([
        *usage, "",
        f"Usage: {COMMANDS.get(config_name, config_name)} [KEY=VALUE ...] [GROUP=CHOICE ...]",
        "",
        f"Keys ({sources}):",
        table(rows),
        "",
        "Config groups (GROUP=CHOICE; GROUP.KEY=VALUE sets one of its keys):",
        table(group_rows),
        "",
        *textwrap.wrap("An experiment= sets its own values for many keys. --cfg job prints the composed config, -m "
                       "sweeps over comma-separated values (steps=8,16), --hydra-help shows Hydra's own options.",
                       WIDTH),
    ])
    return text.replace("$", "$$")  # Hydra fills its template with string.Template: a $ is written $$


def register_help_resolver() -> None:
    """``${halton.help:CONFIG_NAME}``: :func:`help_text` of the config being composed (conf/hydra/help/halton.yaml)."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, lambda name, _root_: help_text(str(name), _root_))
