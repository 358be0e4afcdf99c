"""The model folder: its weights, normalization statistics and ``config.yaml``, checked.

A model folder holds ``best_model.pth`` (the weights, in the format ``framework:`` names),
``normalization_stats.json`` (per-channel ``mean`` and ``std`` in input pixel units, and the
training ``data_version``) and ``config.yaml``:

- ``framework``: ``torchscript``, ``deepseg-unet``, ``smp`` (DARTS-layout checkpoints) or
  ``onnx``; ``frameworks.FRAMEWORKS`` holds the loaders and describes each format;
- ``threshold``: the calibrated probability threshold in [0, 1];
- ``classes`` (optional): the network's output channels K, checked against its real output,
  or the K class names (and colours), which makes runs K-class (``classes``);
- ``positive_class`` (default 1): for an integer K > 1, the class whose softmax probability
  is mapped;
- the architecture's own keys (``deepseg-unet``) and free ones (``model_version``, ...).

Every network takes N x C x H x W float32 normalized input, ``x = (x - mean[c]) / std[c]``,
and returns N x 1 x H x W logits (binary, sigmoid) or N x K x H x W logits (softmax).
``read_model_card`` checks the folder without the weights (it runs before any work);
``loading.load_model`` also loads the network and runs it once on a zero tile to learn K.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..core.errors import DeepSegError
from .classes import ClassTable, parse_class_table
from .frameworks import FRAMEWORKS

WEIGHTS, STATS, CONFIG = "best_model.pth", "normalization_stats.json", "config.yaml"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DeepSegError(f"{path}: cannot read the model config ({exc})") from exc
    if not isinstance(data, dict):
        raise DeepSegError(f"{path}: expected a mapping of keys (framework:, threshold:, ...)")
    return data


def _read_stats(path: Path, bands: int) -> tuple[np.ndarray, np.ndarray, str, str | None]:
    """Mean, std (float32, input pixel units), the file's MD5 and its ``data_version``."""
    raw = path.read_bytes()
    try:
        stats = json.loads(raw)
        mean = np.asarray(stats["mean"], dtype=np.float32)
        std = np.asarray(stats["std"], dtype=np.float32)
    except (ValueError, KeyError, TypeError) as exc:
        raise DeepSegError(f"{path}: expected JSON with 'mean' and 'std' lists ({exc})") from exc
    if mean.shape != (bands,) or std.shape != (bands,):
        raise DeepSegError(
            f"{path}: has {mean.size} mean / {std.size} std values but input.bands selects "
            f"{bands} band(s); the model was trained on a different channel count"
        )
    if not np.all(std > 0):
        raise DeepSegError(f"{path}: every std must be > 0, got {std.tolist()}")
    version = stats.get("data_version")
    return mean, std, hashlib.md5(raw).hexdigest(), None if version is None else str(version)


def _check_data_version(path: Path, found: str | None, expected: str | None) -> None:
    """Refuse statistics computed on other data than the experiment expects."""
    if expected is not None and found != expected:
        raise DeepSegError(
            f"{path}: data_version is {found!r} but model.expected_data_version is "
            f"{expected!r}; use the model trained on that data or change the experiment"
        )


def _whole(value: Any, lowest: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lowest


def _class_keys(path: Path, config: dict[str, Any]) -> tuple[int | None, int, ClassTable | None]:
    """``classes`` as K (None when not given), ``positive_class`` (default 1) and the class
    table (None unless ``classes`` names the classes) of config.yaml."""
    classes, positive_class = config.get("classes"), config.get("positive_class", 1)
    table = None
    if isinstance(classes, (list, dict)):  # a mapping is refused there, with the reason
        table = parse_class_table(path, classes)
        classes = len(table)
        if "positive_class" in config:
            raise DeepSegError(
                f"{path}: positive_class: maps one class of an integer classes:; with class "
                "names every class is kept (remove positive_class)"
            )
    elif classes is not None and not _whole(classes, 1):
        raise DeepSegError(
            f"{path}: classes: expected an integer >= 1 or a list of class names, got {classes!r}"
        )
    if not _whole(positive_class, 0):
        raise DeepSegError(
            f"{path}: positive_class: expected an integer >= 0, got {positive_class!r}"
        )
    return classes, positive_class, table


@dataclass(frozen=True)
class ModelCard:
    """A model folder's description, checked, without loading the weights."""

    folder: Path
    framework: str
    threshold: float  # calibrated probability threshold from config.yaml
    mean: np.ndarray  # float32 (C,), input pixel units
    std: np.ndarray  # float32 (C,)
    stats_md5: str  # MD5 of normalization_stats.json, for the run log
    config: dict[str, Any]
    classes: int | None  # config.yaml's classes, when given
    positive_class: int  # for K-class models: the class whose probability is mapped
    data_version: str | None  # normalization_stats.json's data_version, when given
    class_table: ClassTable | None = None  # the class names: a K-class run (``classes``)


def read_model_card(
    model_dir: Path, bands: int, expected_data_version: str | None = None
) -> ModelCard:
    """Check ``config.yaml`` and the statistics of a model for ``bands`` input channels, and
    that the statistics' ``data_version`` is ``expected_data_version`` when that is set."""
    config_path = model_dir / CONFIG
    config = _read_yaml(config_path)
    framework = config.get("framework")
    if framework not in FRAMEWORKS:
        raise DeepSegError(
            f"{config_path}: framework: expected one of {sorted(FRAMEWORKS)}, got {framework!r}"
        )
    threshold = config.get("threshold")
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise DeepSegError(f"{config_path}: threshold: expected a number in [0, 1]")
    classes, positive_class, table = _class_keys(config_path, config)
    mean, std, md5, data_version = _read_stats(model_dir / STATS, bands)
    _check_data_version(model_dir / STATS, data_version, expected_data_version)
    return ModelCard(
        folder=model_dir,
        framework=framework,
        threshold=float(threshold),
        mean=mean,
        std=std,
        stats_md5=md5,
        config=config,
        classes=classes,
        positive_class=positive_class,
        data_version=data_version,
        class_table=table,
    )
