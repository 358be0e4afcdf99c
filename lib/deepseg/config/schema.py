"""The experiment's schema: the frozen dataclasses below ARE it.

Their type hints (with ``Annotated`` rules for ranges) and defaults drive one generic
validator (``validation``); ``config`` loads the files and adds the checks types cannot say.
Coordinates and lengths are in the experiment's ``crs`` (metres for the default EPSG:3413).
Paths that may live in Google Cloud Storage (``Location``) accept ``gs://bucket/path``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from ..storage.remote import GsUri

MODEL_FILES = ("best_model.pth", "normalization_stats.json", "config.yaml")


@dataclass(frozen=True)
class Rule:
    """A constraint beyond the type; ``expect`` describes the values that pass ``check``."""

    expect: str
    check: Callable[[Any], bool]


def _rule(tp: Any, expect: str, check: Callable[[Any], Any]) -> Any:
    """``tp`` whose values must also pass ``check``; ``expect`` describes them in errors."""
    return Annotated[tp, Rule(expect, check)]


Positive = _rule(float, "a number > 0", lambda v: v > 0)
NonNegative = _rule(float, "a number >= 0", lambda v: v >= 0)
Count = _rule(int, "an integer >= 1", lambda v: v >= 1)
NonNegativeInt = _rule(int, "an integer >= 0", lambda v: v >= 0)
Scale = _rule(float, "a number in (0, 1]", lambda v: 0 < v <= 1)
Probability = _rule(float, "a number in [0, 1]", lambda v: 0 <= v <= 1)
IoU = _rule(float, "a number in (0, 1]", lambda v: 0 < v <= 1)
Bands = _rule(tuple[Count, ...], "a non-empty list of band numbers (1-based)", bool)
# a scale-hit bit each in one uint8 per pixel, where merge's scales product keeps 255 for nodata
MAX_SCALES = 7
Scales = _rule(
    tuple[Scale, ...],
    f"a list of 1 to {MAX_SCALES} numbers in (0, 1] (a scale-hit bit each in a uint8, 255 "
    "meaning nodata)",
    lambda v: 0 < len(v) <= MAX_SCALES,
)
Location = GsUri | Path  # a local path, or gs://bucket/path
Rasters = _rule(tuple[Location, ...], "at least one raster file or glob", bool)
ModelDir = _rule(Location, "a model folder (" + ", ".join(MODEL_FILES) + ")", bool)
Formats = _rule(
    tuple[Literal["cog", "kea"], ...],
    "a list of formats from cog|kea that includes cog",
    lambda v: "cog" in v,
)
PartPx = _rule(int, "0 or a multiple of 512 (px)", lambda v: v >= 0 and v % 512 == 0)
NAME = "^[A-Za-z0-9_-]+$"
RegionName = _rule(
    str, f"a region name matching {NAME} (it becomes a file name)", re.compile(NAME).fullmatch
)
BBox = _rule(
    tuple[float, float, float, float],
    "[minx, miny, maxx, maxy] with minx < maxx and miny < maxy",
    lambda b: b[0] < b[2] and b[1] < b[3],
)


@dataclass(frozen=True)
class OutputConfig:
    """Where a run writes; relative to the current folder, ``{name}`` = the experiment name.

    With a gs:// ``path`` every file is first written under the local ``scratch`` folder (by
    default runs/{name}) and uploaded when finished."""

    path: Location = Path("runs/{name}")
    scratch: Path | None = None


@dataclass(frozen=True)
class InputConfig:
    """The input mosaic: raster files (absolute, globs expanded) and how to read them."""

    rasters: Rasters
    bands: Bands = (1, 2, 3)
    nodata: float | None = None  # None: each raster's own nodata tag
    resampling: Literal["bilinear", "nearest", "cubic", "average"] = "bilinear"
    cache_dir: Path | None = None  # gs:// rasters: None = read by window over the network
    non_square_pixels: Literal["refuse", "warp"] = "refuse"  # projected CRS only (see sources)
    basemap_version: str | None = None  # recorded in the run log, e.g. "planet-2024-q3"


@dataclass(frozen=True)
class GridConfig:
    """The global tile grid: ``resolution`` in CRS units (m) per pixel, sizes in pixels."""

    resolution: Positive = 3.0
    tile_size: Count = 512
    stride: Count = 256
    origin: tuple[float, float] = (-4000100.0, 4100100.0)  # top-left [x, y] in the CRS
    chunk_tiles: Count = 16  # tile strides per chunk side
    tile_list: Location | None = None  # CSV tile_id,minx,miny,maxx,maxy: only these tiles


@dataclass(frozen=True)
class ModelConfig:
    """The model folder (holding ``MODEL_FILES``) and, optionally, the ``data_version`` its
    ``normalization_stats.json`` must name (checked by ``model.card.read_model_card``)."""

    dir: ModelDir
    expected_data_version: str | None = None


@dataclass(frozen=True)
class InferenceConfig:
    """How the model runs: input scale factors, test-time augmentation, batching, device."""

    scales: Scales = (1.0,)
    tta: Literal["none", "minimal", "standard"] = "none"
    batch_size: Count = 16
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False  # torch.compile the network (CUDA: faster after a warm-up)
    io_workers: NonNegativeInt | None = None  # None: auto (0 on CPU, several on a GPU)


@dataclass(frozen=True)
class MergeConfig:
    """How overlapping tiles merge; ``threshold`` None means the model's calibrated one,
    ``"calibrated"`` the one ``evaluate.py --calibrate`` wrote (see ``model.threshold``)."""

    method: Literal["max", "sinusoidal"] = "max"
    threshold: Probability | Literal["calibrated"] | None = None
    products: tuple[Literal["uncertainty", "scales", "preview", "probs"], ...] = ()
    formats: Formats = ("cog",)  # cog always; kea adds merged/{region}_{prob,binary}.kea
    part_px: PartPx = 0  # regions taller than this are assembled in row bands by separate tasks


@dataclass(frozen=True)
class VectorizeConfig:
    """Polygon filtering: minimum area in m² and simplification tolerance in m (CRS units)."""

    min_area_m2: NonNegative = 0.0
    simplify_m: NonNegative = 0.0
    classes: tuple[str, ...] = ()  # K-class runs: a layer per class; () all but the first


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation against reference polygons (``evaluate.py``): files (absolute once loaded),
    the object-matching IoU and the F-beta ``beta`` used to calibrate the threshold."""

    reference: Path | None = None  # polygons (GPKG, GeoJSON, Shapefile) in any CRS
    reference_layer: str | None = None  # None: the file's first layer
    class_column: str | None = None  # K-class runs: the polygons' class (name or index)
    aoi: Path | None = None  # polygons bounding the evaluation; None: the valid predicted area
    iou: IoU = 0.25
    beta: Positive = 0.5


@dataclass(frozen=True)
class SlurmConfig:
    """Slurm job-array settings (None: the cluster's default); times in minutes."""

    partition: str | None = None
    account: str | None = None
    time_min: Count = 60
    mem_gb: Count | None = None
    cpus_per_task: Count = 4
    gpus_per_node: NonNegativeInt = 0  # requested by the predict stage only
    array_parallelism: Count | None = None
    max_array_size: Count = 1000
    units_per_task: Count | None = None  # None: as few per task as fit one array
    retries: NonNegativeInt = 1  # resubmissions of unfinished units before a stage fails
    poll_s: Positive = 30.0  # seconds between the driver's looks at the tasks
    extra_sbatch: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterConfig:
    """Where stages run: here (``local``) or as Slurm jobs; ``profile`` as loaded."""

    executor: Literal["local", "slurm"] = "local"
    local_processes: Count = 1  # the local executor's processes for CPU stages
    profile: str | None = None  # a site profile: slurm/NAME.yaml or a path
    slurm: SlurmConfig = SlurmConfig()


@dataclass(frozen=True)
class TrainConfig:
    """``train.py``: the built-in U-Net trained on generated 3 m scenes (sizes in pixels).

    Training scenes use seeds ``scene_seed`` .. ``scene_seed + scenes - 1``; the validation
    scene (``validation_seed``), which picks the best step and calibrates the threshold, is
    predicted in ``grid.tile_size`` tiles at ``grid.stride``, as predict.py does.
    """

    output: Path | None = None  # model folder to write; None: {output.path}/model
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: NonNegativeInt = 0  # weight init, crop sampling and augmentation
    scenes: Count = 16
    scene_size: Count = 1024
    scene_seed: NonNegativeInt = 1000
    validation_seed: NonNegativeInt = 999
    validation_size: Count = 1536
    crop_size: Count = 256
    batch_size: Count = 8
    steps: Count = 800
    learning_rate: Positive = 0.003  # peak of the one-cycle schedule (AdamW)
    validate_every: Count = 200  # steps
    base_channels: Count = 8  # U-Net channels at full resolution
    depth: Count = 4  # U-Net pooling steps
    # your own imagery and labels, staged by create_training_data.py (empty: generated scenes)
    rasters: tuple[Location, ...] = ()  # read onto the grid lattice as input.rasters are
    labels: Path | None = None  # polygons (GPKG, GeoJSON, Shapefile; any CRS)
    label_layer: str | None = None  # the labels' layer; None: the file's only or first one
    class_column: str | None = None  # None: every polygon is class 1 (binary)
    aoi: Path | None = None  # polygons where labelling was done; None: the rasters' footprint
    stride: Count | None = None  # px between training tiles; None: grid.stride
    folds: Count = 5  # spatial folds (fold ids by blocks of fold_block_px)
    validation_fold: NonNegativeInt = 0  # train.py on a store: the fold that validates
    fold_block_px: Count = 4096  # side of the square blocks a fold is made of, px
    store: Path | None = None  # the training store; None: {output.path}/training/tiles.h5


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """A loaded, checked experiment with every default filled in and paths absolute."""

    name: str
    crs: str = "EPSG:3413"
    output: OutputConfig = OutputConfig()
    input: InputConfig
    grid: GridConfig = GridConfig()
    regions: dict[RegionName, BBox] = field(default_factory=dict)  # bboxes in ``crs``
    model: ModelConfig
    inference: InferenceConfig = InferenceConfig()
    merge: MergeConfig = MergeConfig()
    vectorize: VectorizeConfig = VectorizeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    cluster: ClusterConfig = ClusterConfig()
    train: TrainConfig = TrainConfig()
    source: Path = field(metadata={"yaml": False})  # the experiment file loaded (absolute)

    def to_dict(self) -> dict:
        """The resolved experiment as plain YAML-able data (``source`` left out, so it reloads)."""
        data = json.loads(json.dumps(dataclasses.asdict(self), default=str))  # Path -> str
        del data["source"]
        return data
