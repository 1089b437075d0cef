"""YAML files validated by pydantic models, with errors that name file, line and key path.

Compliance staff edit these files by hand, so every error must point at the line to fix.
ruamel.yaml's round-trip loader keeps the line of every key and list item.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from sync.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load(path: Path, error: type[ConfigError] = ConfigError) -> Any:
    """Parse one YAML file; a syntax error names the file and line."""
    yaml = YAML(typ="rt")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}", file=str(path)) from exc
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise error(f"not valid YAML: {exc.problem or exc.context}", file=str(path),
                    line=line) from exc
    return doc if doc is not None else CommentedMap()


def line_of(doc: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest node of ``loc`` that the document records."""
    line: int | None = None
    node = doc
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    if line is None and isinstance(doc, CommentedMap | CommentedSeq):
        line = doc.lc.line + 1
    return line


def _model_names(cls: type = BaseModel) -> set[str]:
    out: set[str] = set()
    sub: type
    for sub in cls.__subclasses__():
        out |= {sub.__name__} | _model_names(sub)
    return out


def _file_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's union-branch labels ("RuleFile", "list[RuleFile]") from a location."""
    names = _model_names()
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in names)))


def _field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    """Every field name of ``model`` and the models nested in it (for did-you-mean)."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    for f in model.model_fields.values():
        for arg in (f.annotation, *getattr(f.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                names |= _field_names(arg, seen)
    return names


def key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate(model: type[M], doc: Any, path: Path,
             error: type[ConfigError] = ConfigError) -> M:
    """Validate ``doc`` against ``model``; the first problem becomes one precise error."""
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        # A field typed `A | list[A]` reports each union branch; the branch names are not
        # keys of the file. Prefer the plain branch, and a misspelt key (which also makes
        # the right key "missing") over everything else.
        plain = [e for e in errors if not any(isinstance(p, str) and p.startswith("list[")
                                              for p in e["loc"])] or errors
        first = next((e for e in plain if e["type"] == "extra_forbidden"), plain[0])
        loc = _file_loc(first["loc"])
        more = len({_file_loc(e["loc"]) for e in plain}) - 1
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            missing = [str(e["loc"][-1]) for e in plain
                       if e["type"] == "missing" and e["loc"][:-1] == first["loc"][:-1]]
            guess = difflib.get_close_matches(str(loc[-1]), missing, n=1) or \
                difflib.get_close_matches(str(loc[-1]), sorted(_field_names(model)), n=1)
            msg = "unknown key" + (f" (did you mean {guess[0]!r}?)" if guess else "")
        if more:
            msg += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise error(msg, file=str(path), line=line_of(doc, loc), key=key_path(loc)) from exc


def expand_env(value: str, *, where: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; a missing variable is an error, not ''."""
    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"environment variable {name} is not set", key=where)
    return _ENV.sub(repl, value)


def dump(doc: Any, path: Path) -> None:
    """Write ``doc`` back to ``path`` as a round trip (comments kept), atomically: a
    temporary file beside it, with the file's mode, renamed over it."""
    yaml = YAML(typ="rt")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            yaml.dump(doc, out)
        tmp.chmod(path.stat().st_mode & 0o7777)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write: {exc.strerror}", file=str(path)) from exc
