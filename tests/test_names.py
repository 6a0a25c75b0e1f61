"""One builder of names: every MLflow metric and tag name is spelled in ``prunelab/names.py`` and
nowhere else in the package, and the names stored runs and published studies rely on keep their
spelling.

The vocabulary is read from ``names.py`` itself: the string constants of :class:`Metric` and
:class:`Tag` are names (``test_accuracy``, ``prunelab.role``) unless a tuple there lists them as
parts (``Metric.STAGES``, ``Metric.FORMS``, ``Metric.COST_FIGURES``, ``Tag.GROUPS``). The shapes
of names are the names split at their dots and the f-strings the builders return
(``cost.{form}.{figure}``, ``{stage}.{figure}``, ``latency_b{batch}_ms``), a parameter taking the
parts of the tuple named after it (``form``: ``FORMS``), or any part where there is none; a
builder's last parameter takes a whole name too (``dense.test_perplexity``).

Every string a module uses as a value (docstrings and other bare strings are prose: skipped) is
checked whole, ``{}`` where a value goes in: an f-string, a ``+`` chain, a ``%`` or
``str.format`` template. It is a hand-built name when it

* spells a name, or an :class:`Artifact`'s file name: ``"test_accuracy"``, ``"prunelab.role"``;
* is dotted, spells one part at least, and fits a shape: ``f"cost.{role}.params"``, ``"prunelab.method"``,
  ``f"{stage}.test_accuracy"``, ``"cost.ratio.latency_b64"``;
* is undotted, with a value in it, and completes to an undotted name: ``f"{prefix}accuracy"``,
  ``f"{name}_ms"``, and ``"test_"`` (a word cut at an underscore is waiting for a value);
* or is passed to a builder and is a part or a piece of one: ``Metric.at(Metric.PRUNED, "test_")``,
  ``Metric.cost("pruned", "macs")``.

Prose does not trip it (a string with a space or other punctuation is no name), nor do dotted
words that share a part but fit no shape (``train.epochs``, ``prunelab.experiment``,
``f"{where}.schedule"``, ``"int8.onnx"``, ``f"{n}.weight"``)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import prunelab
from prunelab import names
from prunelab.names import Artifact, Metric, Role, Tag

PACKAGE = Path(prunelab.__file__).resolve().parent
NAMES = Path(names.__file__).resolve()
HOLE = "{}"  # an interpolation: a value only known when the code runs

# --- the vocabulary, read from names.py ----------------------------------------------------------


def _constants(cls: type) -> dict[str, object]:
    return {k: v for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, str | tuple)}


PARTS = {  # the tuples of parts: their name, lower case, ends with a builder's parameter + "s"
    k.lower(): set(v) for cls in (Metric, Tag) for k, v in _constants(cls).items() if isinstance(v, tuple)
}
DECLARED = set().union(*PARTS.values())  # stages, forms, cost figures, config groups
FULL = {v for cls in (Metric, Tag) for v in _constants(cls).values() if isinstance(v, str)} - DECLARED
FILES = {v for v in _constants(Artifact).values() if isinstance(v, str)}
BUILDERS = {k for cls in (Metric, Tag) for k, v in vars(cls).items() if isinstance(v, staticmethod)}


@dataclass(frozen=True)
class Slot:
    """One dotted part of a name's shape: spelled (``cost``, ``latency_b{}``) or a builder's
    parameter (``{form}``), which takes the parts of its tuple (``FORMS``) where there is one."""

    word: str | None = None
    takes: frozenset[str] | None = None  # a parameter's values; None: any word of the vocabulary


def _resolved(value: ast.expr, owner: type) -> str:
    """An f-string's piece: its text, a class constant's value, or a parameter's name between NULs."""
    if isinstance(value, ast.Constant):
        return str(value.value)
    inner = value.value if isinstance(value, ast.FormattedValue) else value
    if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name) and inner.value.id == owner.__name__:
        return str(getattr(owner, inner.attr))
    return f"\0{inner.id}\0" if isinstance(inner, ast.Name) else HOLE


def _slot(part: str) -> Slot:
    param = re.fullmatch(r"\0(\w+)\0", part)
    if param is None:
        return Slot(word=re.sub(r"\0\w+\0", HOLE, part))
    takes = [v for k, v in PARTS.items() if k.endswith(param[1] + "s")]
    return Slot(takes=frozenset(takes[0]) if takes else None)


def _builder_shapes() -> list[tuple[Slot, ...]]:
    """The f-strings the builders of Metric and Tag return, split at the dots: ``cost.{form}.{figure}``,
    ``{stage}.{figure}``, ``latency_b{}_ms``, ``zeroshot.{task}.{figure}`` (constants resolved)."""
    shapes = []
    for node in ast.walk(ast.parse(NAMES.read_text())):
        if isinstance(node, ast.ClassDef) and node.name in ("Metric", "Tag"):
            owner = getattr(names, node.name)
            for f in (n for n in ast.walk(node) if isinstance(n, ast.JoinedStr)):
                text = "".join(_resolved(v, owner) for v in f.values)
                shapes.append(tuple(_slot(part) for part in text.split(".")))
    return shapes


SHAPES = [tuple(Slot(word=w) for w in name.split(".")) for name in FULL] + _builder_shapes()
WORDS = {s[0].word for s in SHAPES if len(s) == 1 and s[0].word}  # undotted: test_accuracy, latency_b{}
VOCABULARY = DECLARED | WORDS


def _pattern(text: str, hole: str) -> re.Pattern:
    return re.compile(hole.join(re.escape(piece) for piece in text.split(HOLE)))


def _fits(part: str, known: str) -> bool:
    """``part`` (its holes match anything) could be ``known``, or ``known`` (its holes match a word)
    could be ``part``: ``{}accuracy`` fits ``test_accuracy``, ``latency_b64`` fits ``latency_b{}``."""
    if part == HOLE or _pattern(part, ".*").fullmatch(known):
        return True
    return HOLE in known and bool(_pattern(known, r"\w+").fullmatch(part.replace(HOLE, "")))


def _matches(parts: list[str], shape: tuple[Slot, ...]) -> bool:
    """Whether dotted parts (``{}``: a value) could be a name of this shape. A builder's last
    parameter may take a whole name (``Metric.at(Metric.DENSE, Metric.zeroshot(task))``)."""
    if not shape or not parts:
        return not shape and not parts
    slot, rest = shape[0], shape[1:]
    if slot.word is not None:
        return _fits(parts[0], slot.word) and _matches(parts[1:], rest)
    takes = VOCABULARY if slot.takes is None else slot.takes | (WORDS if not rest else set())
    if any(_fits(parts[0], w) for w in takes) and _matches(parts[1:], rest):
        return True
    return not rest and any(_matches(parts, s) for s in SHAPES if len(s) <= len(parts) and s != shape)


def hand_built(template: str, piece: bool = False) -> bool:
    """Whether a string (``{}`` where a value goes in) spells a name or builds one. ``piece``: it is
    an argument of a names.py builder, so a part (``"pruned"``) or fragment (``"test_"``) counts."""
    if HOLE not in template and template in FULL | FILES:
        return True
    if not re.fullmatch(r"[\w.{}]*\w[\w.{}]*", template):
        return False  # prose, a path, an option (``a=b``): no name
    # A word cut at an underscore is a piece for a value to complete (``"test_"``, ``"_ms"``).
    # (A dotted head alone, ``"cost."``, is not taken for one: ``"params."`` is also MLflow's.)
    template = (HOLE if template[0] == "_" else "") + template + (HOLE if template[-1] == "_" else "")
    if piece:
        words = FULL | VOCABULARY
        fragment = len(template) >= 3 and any(
            (template[-1] in "._" and w.startswith(template)) or (template[0] in "._" and w.endswith(template))
            for w in words
        )
        return fragment or any(_fits(template, w) for w in words)
    parts = template.split(".")
    if len(parts) == 1:  # undotted: only a template that completes to a name
        return HOLE in template and len(template.replace(HOLE, "")) >= 3 and any(_fits(template, w) for w in WORDS)
    return any(HOLE not in p for p in parts) and any(_matches(parts, s) for s in SHAPES)


# --- what a module spells ----------------------------------------------------------------------


def _template(node: ast.AST) -> tuple[str, list[ast.AST]] | None:
    """The string an expression builds, ``{}`` for what is only known at run time, and the nodes
    it is made of; None when it builds no string from a literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = re.sub(r"\{[^{}]*\}", HOLE, node.value)  # a str.format template
        return re.sub(r"%[-#0 +]*\d*(?:\.\d+)?[sdirfgeEx]", HOLE, text), [node]  # a % template
    if isinstance(node, ast.JoinedStr):
        specs = [v.format_spec for v in node.values if isinstance(v, ast.FormattedValue) and v.format_spec]
        text = "".join(str(v.value) if isinstance(v, ast.Constant) else HOLE for v in node.values)
        return text, [node, *node.values, *[n for s in specs for n in ast.walk(s)]]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left), _template(node.right)
        if left is None and right is None:
            return None
        (a, made_a), (b, made_b) = left or (HOLE, []), right or (HOLE, [])
        return a + b, [node, *made_a, *made_b]
    return None


def _is_builder(call: ast.Call) -> bool:
    f = call.func
    return (
        isinstance(f, ast.Attribute)
        and f.attr in BUILDERS
        and isinstance(f.value, ast.Name)
        and f.value.id in ("Metric", "Tag")
    )


def literals(tree: ast.AST) -> Iterator[tuple[int, str, bool]]:
    """(line, template, piece) of every string expression used as a value: a ``+`` chain or an
    f-string whole, not its pieces (the expressions inside an f-string's braces on their own);
    docstrings and other bare strings skipped. ``piece``: an argument of a names.py builder."""
    taken: set[int] = set()  # the pieces of an expression already taken whole
    prose = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_builder(n)]
    pieces = {id(a) for n in calls for a in [*n.args, *(k.value for k in n.keywords)]}
    for node in ast.walk(tree):  # breadth first: an expression before its pieces
        built = None if id(node) in taken else _template(node)
        if built is None:
            continue
        template, made_of = built
        taken.update(id(n) for n in made_of)
        if id(node) not in prose:
            yield getattr(node, "lineno", 0), template, id(node) in pieces


def findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(PACKAGE.parent)
    found = sorted((line, template) for line, template, piece in literals(tree) if hand_built(template, piece))
    return [f"{where}:{line}: {template!r}" for line, template in found]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.resolve() != NAMES)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_module_spells_a_metric_or_tag_name_outside_names_py(path):
    found = findings(path)
    assert not found, "names spelled by hand (build them with prunelab.names):\n" + "\n".join(found)


def _flags(source: str) -> list[str]:
    return [t for _, t, piece in literals(ast.parse(source)) if hand_built(t, piece)]


@pytest.mark.parametrize(
    "source",
    [
        'out[f"cost.{role}.params"] = n',
        'out[f"cost.{role}.latency_b{b}_ms"] = ms',
        'out[f"cost.ratio.{name}"] = r',
        'key = f"{name}_ms"',
        'return {f"{prefix}accuracy": a}',
        'm["pruned.test_accuracy"]',
        'm["cost.ratio.latency_b64"]',
        'run.data.tags["prunelab.role"]',
        'run.data.tags.get("prunelab.method")',
        'info["test_accuracy"]',
        'Metric.at(Metric.PRUNED, "test_")',
        'Metric.cost("pruned", "file_bytes")',
        'Metric.cost_ratio("latency_b64", form="int8")',
        'Tag.group("criterion")',
        'scores(model, split, "test_")',
        'perplexity(model, split, "dense.test_")',
        'key = name + "_ms"',
        'name = "cost." + form + ".macs"',
        'name = "%s.test_accuracy" % stage',
        'name = "{}.test_perplexity".format(stage)',
        'open("config.yaml")',
    ],
)
def test_the_check_finds_a_name_spelled_by_hand(source):
    assert _flags(source), source


@pytest.mark.parametrize(
    "source",
    [
        '"""Logs ``cost.pruned.macs`` and ``pruned.test_accuracy``."""',
        'log.info("pruned.test_accuracy %.4f, cost.ratio.macs %.3f", a, r)',
        'raise ConfigError(f"budget.macs={macs}: no such MACs")',
        'cfg.get("train.epochs")',
        'logging.getLogger("prunelab.experiment")',
        'path = cache / f"{key}.pt"',
        'channels = {f"{n}.weight": c for n, c in pairs}',
        'Tag.version("torch")',
        "Metric.zeroshot(task, figure)",
        'result["accuracy"]',
        'train(model, data, desc="dense")',
        'entry["kind"] = "dense"',
        'check_choice(f"{where}.schedule", schedule, choices)',
        'names = ("fp32.onnx", "prepared.onnx", "int8.onnx")',
        'at = f"macs{macs:g}"',
        'flat = {k: v for k, v in out.items() if not k.endswith("._partial_")}',
        'plugins = {p[: -len("._target_")] for p in params}',
        'columns = [c[len("params.") :] for c in raw.columns if c.startswith("params.")]',
        "name = f\"{choice(cfg, 'method')}-{at}\"",
    ],
)
def test_the_check_lets_prose_and_other_words_be(source):
    assert not _flags(source), source


# --- the published spelling --------------------------------------------------------------------


def test_the_published_names_keep_their_spelling():
    """Stored runs, the analysis of published studies and users' queries read these names: the one
    place in the tests where they are spelled out, so that a change to names.py shows here."""
    assert [Metric.TEST_ACCURACY, Metric.VAL_ACCURACY, Metric.TEST_LOSS, Metric.TEST_PERPLEXITY] == [
        "test_accuracy",
        "val_accuracy",
        "test_loss",
        "test_perplexity",
    ]
    assert [Metric.at(stage, Metric.TEST_ACCURACY) for stage in Metric.STAGES] == [
        "dense.test_accuracy",
        "pruned.test_accuracy",
        "finetuned.test_accuracy",
    ]
    assert Metric.at(Metric.FINETUNED, Metric.TEST_PERPLEXITY) == "finetuned.test_perplexity"
    assert [Metric.SPARSITY_PRUNABLE, Metric.SPARSITY_ALL, Metric.SPARSITY_CHANNELS] == [
        "sparsity.prunable",
        "sparsity.all",
        "sparsity.channels",
    ]
    assert [Metric.PARAMS_TOTAL, Metric.PARAMS_NONZERO] == ["params.total", "params.nonzero"]
    assert [Metric.cost(form, Metric.FILE_BYTES) for form in Metric.FORMS] == [
        "cost.dense.file_bytes",
        "cost.pruned.file_bytes",
        "cost.onnx.file_bytes",
        "cost.int8.file_bytes",
    ]
    assert [Metric.cost_ratio(figure) for figure in Metric.COST_FIGURES] == [
        "cost.ratio.params",
        "cost.ratio.nonzero_params",
        "cost.ratio.macs",
        "cost.ratio.nonzero_macs",
        "cost.ratio.file_bytes",
        "cost.ratio.tokens_per_s",
    ]
    assert Metric.cost(Metric.PRUNED, Metric.latency_ms(64)) == "cost.pruned.latency_b64_ms"
    assert Metric.cost_ratio(Metric.latency(1)) == "cost.ratio.latency_b1"
    assert Metric.cost_ratio(Metric.latency(64), Metric.INT8) == "cost.ratio.int8.latency_b64"
    assert [Metric.HANDOVER_ONNX_ACCURACY, Metric.INT8_ACCURACY, Metric.COMPACT_ACCURACY] == [
        "handover.onnx.test_accuracy",
        "int8.test_accuracy",
        "compact.test_accuracy",
    ]
    assert Metric.zeroshot("piqa") == "zeroshot.piqa.acc"
    assert [Metric.FINETUNE_LOSS, Metric.SCHEDULE_SPARSITY, Metric.LEVEL_TEST_ACCURACY] == [
        "finetune.loss",
        "schedule.sparsity",
        "level.test_accuracy",
    ]
    assert [Tag.ROLE, Tag.RUN_KEY, Tag.POINT_KEY, Tag.DENSE_KEY, Tag.ERROR, Tag.group("method")] == [
        "prunelab.role",
        "prunelab.run_key",
        "prunelab.point_key",
        "prunelab.dense_key",
        "prunelab.error",
        "prunelab.method",
    ]
    assert [Role.DENSE, Role.PRUNED, Role.SWEEP] == ["dense", "pruned", "sweep"]
    assert [Artifact.CONFIG, Artifact.MASKED_WEIGHTS] == ["config.yaml", "model/masked_weights.pt"]
