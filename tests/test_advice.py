"""Every refusal's advice points to what exists: an option a message of prunelab names
(``use method=width``, ``scope=local``, ``method=unstructured, nm, wanda or sparsegpt``) is one
the command line composes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import prunelab
from prunelab.config import compose

GROUPS = "method|criterion|scope|schedule|model|dataset|augment|quantize|codebook|recipe"
# group=option, and the options listed after it: "method=unstructured, nm, wanda or sparsegpt"
# (not train.schedule=step: an option of a group, not a group)
NAMED = re.compile(rf"(?<![.\w])({GROUPS})=([a-z][a-z0-9_]*)((?:(?:, | or )(?!or\b)[a-z][a-z0-9_]*\b(?![=.(]))*)")


def strings(path: Path) -> list[str]:
    """The string constants of a module, each f-string's literal parts joined."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            found.append("".join(v.value for v in node.values if isinstance(v, ast.Constant)))
    return found


def named_options(text: str) -> set[tuple[str, str]]:
    named = set()
    for group, first, rest in NAMED.findall(text):
        named |= {(group, option) for option in [first, *re.split(r", | or ", rest)[1:]] if option}
    return named


def advice() -> set[tuple[str, str]]:
    named: set[tuple[str, str]] = set()
    for path in Path(prunelab.__file__).parent.rglob("*.py"):
        for text in strings(path):
            named |= named_options(text)
    return named


def test_the_pattern_reads_lists_of_options():
    text = (
        "use method=width (heads) or method=blocks, or method=unstructured, nm, wanda or sparsegpt; train.schedule=step"
    )
    assert named_options(text) == {
        ("method", "width"),
        ("method", "blocks"),
        ("method", "unstructured"),
        ("method", "nm"),
        ("method", "wanda"),
        ("method", "sparsegpt"),
    }


@pytest.mark.parametrize(("group", "option"), sorted(advice()))
def test_each_option_a_message_names_composes(group, option):
    cfg = compose(f"{group}={option}")
    assert cfg.choices[group] == option
