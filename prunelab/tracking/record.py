"""What a run records beyond its config, so that it can be re-executed and checked: the
environment it ran in, and the note on its page that says how to reproduce it.

* The **environment**: the versions of the packages that decide a result (:data:`PACKAGES`, those
  installed), the git commit and whether the working tree had uncommitted changes, the device and
  its name (CPU model, GPU name), PyTorch's thread count and whether deterministic algorithms were
  on. Every run carries the versions and the commit as tags (:func:`tags`, what the UI shows) and
  all of it as ``environment.json``, with ``git.diff`` beside it for a tree with changes
  (:func:`files`). ``python -m prunelab.reproduce`` reads it back and names each difference
  (:func:`differences`).
* Nothing secret: the diff is of tracked files only (an untracked ``.env`` is named, never read),
  with credentials in addresses masked, as everywhere else.

Looked up once per process: a process runs the code it imported when it started, so its first
look at the working tree is the one that describes its runs (and a sweep pays for it once).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import platform
import shlex
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from ..names import Artifact, Tag
from ..redact import redact
from .store import absolute

# The packages whose version can change a run's numbers or files (recorded where installed).
PACKAGES = (
    "prunelab",
    "torch",
    "transformers",
    "tokenizers",
    "numpy",
    "mlflow",
    "hydra-core",
    "onnxruntime",
    "torch-pruning",
    "peft",
    "lm-eval",
)
FORMAT = 1  # environment.json's layout
GIT_TIMEOUT_S = 5.0
UNTRACKED_NAMED = 100  # untracked files named in environment.json, at most


@dataclass(frozen=True)
class GitState:
    """The checkout prunelab runs from: its commit, the changes to tracked files against it (a
    patch, "" when there are none) and the untracked files (names only)."""

    commit: str | None
    diff: str = ""
    untracked: tuple[str, ...] = ()

    @property
    def digest(self) -> str | None:
        """The changes, hashed: two trees with the same commit and digest hold the same tracked code."""
        return hashlib.sha256(self.diff.encode()).hexdigest()[:16] if self.diff else None


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def _git_state() -> GitState:
    found = _git(Path(__file__).resolve().parent.parent, "rev-parse", "--show-toplevel", "HEAD")
    if not found or len(found.split()) != 2:
        return GitState(None)  # an installed wheel, or no git: the prunelab version says which code
    top, commit = found.split()
    diff = _git(Path(top), "diff", "HEAD", "--no-color", "--no-ext-diff", "--no-textconv") or ""
    untracked = (_git(Path(top), "ls-files", "--others", "--exclude-standard", "-z") or "").split("\0")
    return GitState(commit, diff, tuple(sorted(u for u in untracked if u))[:UNTRACKED_NAMED])


def git_state() -> GitState:
    """This process's checkout (:class:`GitState`), looked up once."""
    return _git_state()


@functools.cache
def versions() -> dict[str, str]:
    """The installed versions of :data:`PACKAGES` (a package not installed is left out)."""
    found = {}
    for package in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


@functools.cache
def cpu_name() -> str:
    """The CPU's model as the kernel names it (``/proc/cpuinfo``), else as Python's platform does."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    """What ``device`` is: a GPU's name, the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def environment(
    device: torch.device, contents: dict[str, str] | None = None, data: dict[str, str] | None = None
) -> dict[str, Any]:
    """This process's environment for a run on ``device`` that reads the files ``contents``
    (option -> digest of what it holds: :attr:`prunelab.experiment.keys.RunKey.contents`) and the
    data files ``data`` (path -> SHA-256: :func:`prunelab.data.files.located`), as
    ``environment.json`` holds it."""
    git = git_state()
    return {
        "format": FORMAT,
        "packages": versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": {"commit": git.commit, "changes": git.digest, "untracked": list(git.untracked)},
        "device": {"type": device.type, "name": device_name(device), "cpu": cpu_name()},
        "threads": torch.get_num_threads(),
        "deterministic": {
            "algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn.deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn.benchmark": bool(torch.backends.cudnn.benchmark),
        },
        "contents": dict(contents or {}),
        "data": dict(data or {}),
    }


def tags() -> dict[str, str]:
    """The package versions and the git commit, as tags (every run and sweep carries them)."""
    commit = git_state().commit
    return {**{Tag.version(p): v for p, v in versions().items()}, **({Tag.GIT_COMMIT: commit} if commit else {})}


def files(
    device: torch.device, contents: dict[str, str] | None = None, data: dict[str, str] | None = None
) -> dict[str, str]:
    """The run's record of its environment: ``environment.json``, and ``git.diff`` when the
    working tree had uncommitted changes."""
    diff = git_state().diff
    return {
        Artifact.ENVIRONMENT: json.dumps(environment(device, contents, data), indent=1),
        **({Artifact.GIT_DIFF: redact(diff)} if diff else {}),
    }


def from_tags(run_tags: dict[str, str]) -> dict[str, Any]:
    """What a run recorded before ``environment.json`` existed: its versions and commit (tags)."""
    packages = {p: run_tags[Tag.version(p)] for p in PACKAGES if Tag.version(p) in run_tags}
    return {"packages": packages, "git": {"commit": run_tags.get(Tag.GIT_COMMIT)}}


def differences(recorded: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """One line for each way ``here`` differs from the ``recorded`` environment, in what it
    records (an older, partial record: its versions and commit only)."""
    lines = []

    def differ(what: str, was: Any, now: Any) -> None:
        if was != now:
            lines.append(f"{what}: recorded {_shown(was)}, here {_shown(now)}")

    was_git, now_git = recorded.get("git") or {}, here["git"]
    differ("git commit", was_git.get("commit"), now_git["commit"])
    if "changes" in was_git:
        differ("uncommitted changes (git.diff)", was_git["changes"], now_git["changes"])
    for package, was in (recorded.get("packages") or {}).items():
        differ(package, was, here["packages"].get(package))
    for key in ("python", "threads"):
        if key in recorded:
            differ(key, recorded[key], here[key])
    if "device" in recorded:
        was_device, now_device = recorded["device"], here["device"]
        differ("device", f"{was_device['type']} ({was_device['name']})", f"{now_device['type']} ({now_device['name']})")
    for key, was in (recorded.get("deterministic") or {}).items():
        differ(f"deterministic {key}", was, here["deterministic"].get(key))
    for option, was in (recorded.get("contents") or {}).items():
        now = here.get("contents", {}).get(option)
        if was != now:
            lines.append(f"{option}: its files hold other contents (recorded {was}, here {_shown(now)})")
    return lines


def summary(environment: dict[str, Any]) -> str:
    """An environment in one line: commit (and changes), torch, device, threads."""
    git = environment.get("git") or {}
    changes = f" + changes {git['changes']}" if git.get("changes") else ""
    commit = (git.get("commit") or "no git checkout")[:12] + changes
    device = environment.get("device") or {}
    where = f", {device['type']} ({device['name']})" if device else ""
    threads = f", {environment['threads']} threads" if "threads" in environment else ""
    return f"commit {commit}, torch {(environment.get('packages') or {}).get('torch', 'none')}{where}{threads}"


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def reproduce_command(run_id: str, uri: str) -> str:
    """The command that reproduces run ``run_id`` of the store at ``uri`` (from any folder)."""
    return f"python -m prunelab.reproduce {run_id} --tracking-uri {shlex.quote(redact(absolute(uri)))}"


def note(run_id: str, uri: str) -> str:
    """The run's description on its MLflow page (a sweep's: below its table): how to reproduce it."""
    return (
        f"Reproduce this run (re-executed into its own experiment, its metrics compared with these; a sweep: "
        f"each of its points, and its curves):\n\n"
        f"```\n{reproduce_command(run_id, uri)}\n```\n"
    )
