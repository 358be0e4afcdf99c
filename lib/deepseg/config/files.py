"""The YAML files behind an experiment: reading, ``extends`` chains, site profiles.

``read_merged`` reads an experiment file, its ``extends`` ancestors and any ``cluster.profile``
and merges them key by key, remembering which file set each key so that ``config`` can name
that file in its one-line errors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from .validation import Key, show

REPO_ROOT = Path(__file__).resolve().parents[3]


class ConfigError(ValueError):
    """A bad experiment, as one line ``FILE: KEY.PATH: expected ..., got ...``."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class _Loader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys (the later one would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: list = []
        for k, _ in node.value:
            name = self.construct_object(k, deep=True)
            if name in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {name!r}", k.start_mark
                )
            seen.append(name)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads 1e3 (no dot) as a string; YAML 1.2 and users read it as a number.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def abs_path(path: Path) -> Path:
    """Absolute and normalised (``..`` removed), symlinks kept as the user wrote them."""
    return Path(os.path.abspath(path))


def label(path: Path) -> str:
    """A config file as shown in messages: relative to the current folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except OSError as exc:
        raise ConfigError(f"{label(path)}: cannot read the file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label(path)}:{mark.line + 1}" if mark else label(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: expected valid YAML, got an error: {problem}") from None
    if data is None:  # an empty file
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label(path)}: expected a mapping of keys, got {type(data).__name__}")
    return data


def _read_chain(path: Path) -> list[tuple[Path, dict]]:
    """The file and its ``extends`` ancestors, root first, ``extends`` removed."""
    chain: list[tuple[Path, dict]] = []
    while True:
        data = _read_yaml(path)
        chain.append((path, data))
        parent = data.pop("extends", None)
        if parent is None:
            return chain[::-1]
        if not isinstance(parent, str) or not parent:
            raise ConfigError(f"{label(path)}: extends: expected a path, got {show(parent)}")
        nxt = abs_path(path.parent / Path(parent).expanduser())
        if not nxt.is_file():
            raise ConfigError(f"{label(path)}: extends: expected an existing file, got {nxt}")
        seen = [os.path.realpath(p) for p, _ in chain]
        if os.path.realpath(nxt) in seen:
            loop = " -> ".join(label(p) for p, _ in chain[seen.index(os.path.realpath(nxt)) :])
            raise ConfigError(
                f"{label(path)}: extends: expected no cycle, got {loop} -> {label(nxt)}"
            )
        path = nxt


def _merge(base: dict, over: dict, origins: dict[Key, Path], file: Path, key: Key = ()) -> None:
    """Merge ``over`` into ``base``: dicts recursively, others replace; record who set what."""
    for k, v in over.items():
        at = (*key, str(k))
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, origins, file, at)
            continue
        base[k] = v
        for stale in [o for o in origins if o[: len(at)] == at]:
            del origins[stale]
        origins[at] = file


def origin(origins: dict[Key, Path], key: Key, default: Path) -> Path:
    """The file that set ``key`` (or the nearest enclosing key); ``default`` for defaults."""
    for n in range(len(key), 0, -1):
        if key[:n] in origins:
            return origins[key[:n]]
    return default


def resolve_experiment_path(name_or_path: str, cwd: Path | None = None) -> Path:
    """The experiment file for a path or a name: an existing file as given (relative to
    ``cwd``), else ``experiments/NAME.yaml`` under ``cwd``, else under the repository root."""
    cwd = Path.cwd() if cwd is None else cwd
    given = Path(name_or_path).expanduser()
    file = name_or_path if name_or_path.endswith((".yaml", ".yml")) else f"{name_or_path}.yaml"
    tried: list[Path] = []
    for candidate in (cwd / given, cwd / "experiments" / file, REPO_ROOT / "experiments" / file):
        candidate = abs_path(candidate)
        if candidate.is_file():
            return candidate
        if candidate not in tried:
            tried.append(candidate)
    raise ConfigError(
        f"experiment {name_or_path!r} not found; looked for {', '.join(map(str, tried))}"
    )


def _profile_path(profile: Any, named_in: Path) -> Path:
    """``slurm/NAME.yaml`` of the checkout for a bare name, else a path relative to the file."""
    text = str(profile)
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        return REPO_ROOT / "slurm" / f"{text}.yaml"
    return abs_path(named_in.parent / Path(text).expanduser())


def _read_profile(profile: Any, named_in: Path) -> dict:
    """A site profile: a YAML file holding only a ``cluster:`` mapping (no nested profile)."""
    path = _profile_path(profile, named_in)
    if not isinstance(profile, str) or not path.is_file():
        known = ", ".join(sorted(p.stem for p in (REPO_ROOT / "slurm").glob("*.yaml")))
        raise ConfigError(
            f"{label(named_in)}: cluster.profile: expected a profile name ({known}) or a "
            f"YAML path, got {show(profile)} (looked for {path})"
        )
    data = _read_yaml(path)
    cluster = data.get("cluster")
    if set(data) != {"cluster"} or not isinstance(cluster, dict) or "profile" in cluster:
        raise ConfigError(
            f"{label(path)}: expected only a 'cluster:' mapping (without 'profile'), "
            f"got keys {', '.join(map(str, data)) or 'none'}"
        )
    return data


def read_merged(source: Path) -> tuple[dict, dict[Key, Path]]:
    """The merged keys of ``source`` and its ancestors (root first, a profile just before the
    file that names it), and for each key set the file that set it."""
    raw: dict = {}
    origins: dict[Key, Path] = {}
    for file, data in _read_chain(source):
        cluster = data.get("cluster")
        if isinstance(cluster, dict) and cluster.get("profile") is not None:
            profile = cluster["profile"]
            _merge(raw, _read_profile(profile, file), origins, _profile_path(profile, file))
        _merge(raw, data, origins, file)
    return raw, origins
