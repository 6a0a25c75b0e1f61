"""The changelog follows the version: its latest entry is the version the package installs as."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

import prunelab

ROOT = Path(__file__).resolve().parent.parent


def test_the_latest_changelog_entry_is_the_packages_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    entries = re.findall(r"^## (\d+\.\d+\.\d+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert entries[0] == version == prunelab.__version__
