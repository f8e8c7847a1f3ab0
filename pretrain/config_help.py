"""`--help` with a config lists its keys, values and comments; `--show_config` prints the config.

    python -m pretrain.train --config=configs/smoke.py --help
    python -m pretrain.train --config=configs/smoke.py --config.num_train_steps=30 --show_config

The comments are read from the text of the config file named by --config and of the config files
it imports from its own folder (the trailing comment of the assignment, else the comment lines
right above it); the file that assigns a key first, the base (`configs/default.py`,
`configs/finetune_common.py`), gives its comment. `pretrain/` never imports `configs/`: the
files are parsed, not run.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags

HELP_ARGS = ("--help", "-help", "-h", "--helpshort", "-?")
FLAGS = flags.FLAGS
_Function = tuple[Path, str]  # (file, function name)


def define_show_config_flag() -> None:
    """--show_config, on commands that take --config; listed in their --help."""
    if "show_config" not in FLAGS:
        flags.DEFINE_boolean(
            "show_config", False, "Print the resolved config (after overrides) and exit."
        )
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS["show_config"])


def given() -> bool:
    """Whether this command has a config to load: --config on the command line, or a default."""
    return FLAGS["config"].present or FLAGS["config"].default is not None


def show_and_exit(help_asked: bool) -> None:
    """After flag parsing: the --help listing or --show_config's, then exit 0; else nothing."""
    if not (help_asked or FLAGS.show_config):
        return
    if help_asked:
        app.usage(shorthelp=True, writeto_stdout=True)
    if not given() and help_asked:
        print("\nGive --config=FILE as well to list that config's keys.")
        sys.exit(0)
    if not given():
        print("error: --show_config needs --config=FILE.", file=sys.stderr)
        sys.exit(2)
    path = FLAGS["config"].config_filename
    comments = key_comments(path.partition(":")[0])
    if help_asked:
        print(f"\nKeys of --config={path} (set with --config.KEY=VALUE):")
    order = {key: i for i, key in enumerate(comments)}  # As the config files assign them.
    rows = sorted(leaves(FLAGS.config), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    texts = [f"{key}={value!r}" for key, value in rows]
    width = min(max(map(len, texts)), 44)  # Long values (axis rules) push only their own comment.
    for (key, _), text in zip(rows, texts):
        comment = comments.get(key) if help_asked else None
        print(f"  {text:<{width}}  # {comment}" if comment else f"  {text}")
    sys.exit(0)


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of `config`."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def key_comments(config_file: str) -> dict[str, str]:
    """Dotted key -> its comment, in the order `get_config` of `config_file` assigns the keys.

    A call's result assigned to a section (`c.data = data_config()`, `c = default.get_config()`)
    is followed into the called function first, so the base file's comment wins.
    """
    file = Path(config_file).resolve()
    parsed: dict[Path, dict[str, list]] = {}
    comments: dict[str, str] = {}

    def walk(function: _Function, prefix: str, depth: int) -> None:
        if function[0] not in parsed:
            parsed[function[0]] = {}
            for name, *row in _assignments(function[0], file.parent):
                parsed[function[0]].setdefault(name, []).append(row)
        for path, callee, comment in parsed[function[0]].get(function[1], []):
            key = f"{prefix}{path}" if path else prefix.rstrip(".")
            if callee and depth < 16:  # A bound against configs that call themselves.
                walk(callee, f"{key}." if key else "", depth + 1)
            if path and not comments.get(key):
                comments[key] = comment

    walk((file, "get_config"), "", 0)
    return comments


def _module_file(module: str, folder: Path) -> Path | None:
    """The file of `module` (e.g. configs.default) if it lies in the config folder."""
    for base in (folder, *folder.parents):
        file = base.joinpath(*module.split(".")).with_suffix(".py")
        if file.is_file():
            return file if file.parent == folder else None
    return None


def _imports(tree: ast.Module, folder: Path) -> dict[str, _Function | Path]:
    """Local name -> config module file, or (file, function) for `from M import f as name`."""
    names: dict[str, _Function | Path] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                file = _module_file(f"{node.module}.{alias.name}", folder)
                module = _module_file(node.module, folder)
                if file:
                    names[alias.asname or alias.name] = file
                elif module:
                    names[alias.asname or alias.name] = (module, alias.name)
    return names


def _comments(source: str) -> tuple[dict[int, str], set[int]]:
    """Comment text by line, and the lines holding nothing but a comment."""
    text, alone = {}, set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text[tok.start[0]] = tok.string.lstrip("#").strip()
            if not tok.line[: tok.start[1]].strip():
                alone.add(tok.start[0])
    return text, alone


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """`c.data.train_files` -> 'data.train_files' (a name bound to `c.model` adds 'model.')."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([aliases[node.id], *reversed(parts)] if aliases.get(node.id) else parts[::-1])


def _assignments(file: Path, folder: Path) -> Iterator[tuple[str, str, _Function | None, str]]:
    """(function, dotted key, the config function whose result it is, comment) per assignment."""
    source = file.read_text()
    tree = ast.parse(source)
    imported, (text, alone) = _imports(tree, folder), _comments(source)
    local = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    for function in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        aliases: dict[str, str] = {}
        statements = (n for n in ast.walk(function) if isinstance(n, ast.Assign | ast.Return))
        for node in sorted(statements, key=lambda n: n.lineno):
            callee = _callee(node.value, file, imported, local) if node.value else None
            if isinstance(node, ast.Return):  # `return default.get_config()`: the whole config.
                yield function.name, "", callee, ""
                continue
            for target in node.targets:
                for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(element, ast.Name):  # `c = f()` is the config; `m = c.model`.
                        aliases[element.id] = _dotted(node.value, aliases) or ""
                        yield function.name, aliases[element.id], callee, ""
                    elif (key := _dotted(element, aliases)) is not None:
                        yield function.name, key, callee, _comment_of(node, text, alone)


def _callee(value: ast.expr, file: Path, imported: dict, local: set[str]) -> _Function | None:
    """The config function `value` calls (`data_config()`, `default.model_config()`), if any."""
    if not isinstance(value, ast.Call):
        return None
    func = value.func
    if isinstance(func, ast.Name):
        target = imported.get(func.id)
        return (
            target if isinstance(target, tuple) else (file, func.id) if func.id in local else None
        )
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        module = imported.get(func.value.id)
        return (module, func.attr) if isinstance(module, Path) else None
    return None


def _comment_of(node: ast.stmt, text: dict[int, str], alone: set[int]) -> str:
    """The assignment's trailing comment, else the comment lines right above it, as one line."""
    for line in (node.lineno, node.end_lineno):
        if line in text and line not in alone:
            return text[line]
    above, line = [], node.lineno - 1
    while line in alone:
        above.insert(0, text[line])
        line -= 1
    return " ".join(above)
