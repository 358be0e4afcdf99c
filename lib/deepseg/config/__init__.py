"""The experiment: one ``experiment.yaml`` (and the files that extend it), checked before any work.

``load_experiment`` reads and checks it (``load``); its types live in ``schema``, the generic
validator in ``validation``, reading YAML with ``extends`` and cluster profiles in ``files``.
"""

from .files import REPO_ROOT, ConfigError
from .load import load_experiment
from .schema import (
    MODEL_FILES,
    ClusterConfig,
    EvaluateConfig,
    Experiment,
    GridConfig,
    InferenceConfig,
    InputConfig,
    Location,
    MergeConfig,
    ModelConfig,
    OutputConfig,
    SlurmConfig,
    TrainConfig,
    VectorizeConfig,
)

__all__ = [
    "MODEL_FILES",
    "REPO_ROOT",
    "ClusterConfig",
    "ConfigError",
    "EvaluateConfig",
    "Experiment",
    "GridConfig",
    "InferenceConfig",
    "InputConfig",
    "Location",
    "MergeConfig",
    "ModelConfig",
    "OutputConfig",
    "SlurmConfig",
    "TrainConfig",
    "VectorizeConfig",
    "load_experiment",
]
