"""Where a policy to compare comes from: a directory, one file, or ``REV:path`` in git."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from sync.errors import PolicyError
from sync.policy.loader import load_policy
from sync.policy.model import Policy


def load_spec(spec: str) -> Policy:
    """Load ``spec``: a policy directory, a single YAML file, or a git ``REV:path``."""
    path = Path(spec)
    if path.is_dir():
        return load_policy(path)
    if path.is_file():
        return _from_files({path.name: path.read_bytes()}, spec)
    if ":" in spec:
        rev, _, inside = spec.partition(":")
        return _from_files(_git_files(rev, inside or "policies"), spec)
    raise PolicyError("no such policy directory, file or git REV:path", file=spec)


def _git_files(rev: str, inside: str) -> dict[str, bytes]:
    def git(*args: str) -> bytes:
        proc = subprocess.run(["git", *args], capture_output=True, check=False)
        if proc.returncode != 0:
            raise PolicyError(f"git {' '.join(args)}: {proc.stderr.decode().strip()}",
                              file=f"{rev}:{inside}")
        return proc.stdout
    names = git("ls-tree", "--name-only", f"{rev}:{inside}").decode().split()
    if not names:  # a single file
        return {Path(inside).name: git("show", f"{rev}:{inside}")}
    return {n: git("show", f"{rev}:{inside.rstrip('/')}/{n}") for n in names
            if n.endswith((".yaml", ".yml"))}


def _from_files(files: dict[str, bytes], label: str) -> Policy:
    tmp = Path(tempfile.mkdtemp(prefix="regionsync-policy-"))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        try:
            return load_policy(tmp)
        except PolicyError as exc:  # name the user's source, not our temp copy
            raise PolicyError(exc.detail, file=f"{label} ({Path(exc.file or '').name})",
                              line=exc.line, key=exc.key) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
