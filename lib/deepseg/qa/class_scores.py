"""Scoring a K-class run per class: confusion matrix, per-class precision, recall, F1 and IoU,
overall accuracy and Cohen's kappa, as ``logs/evaluation.json`` and a PNG of the matrix.

The reference is either a raster of class indices (any GDAL raster, any CRS and grid: read
onto each region's class map by nearest neighbour; its nodata and values >= K are not
scored) or polygons whose ``evaluate.class_column`` holds each one's class, as one of the
model's class names or its index. Pixels whose centre lies in no reference polygon are not
scored, except inside ``evaluate.aoi``: there they are class 0 (a labelled area, where what
is not outlined is the first class, by convention the background); a reference raster is
scored inside the AOI only. Where polygons overlap, the later one in the file wins. Only
pixels with a prediction are scored; the totals add the regions up, as for binary runs
(pixels of overlapping regions count once per region). The class COGs
are read one internal block (512 px) at a time, so memory stays flat.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from matplotlib.figure import Figure
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, bounds

from ..config import EvaluateConfig, Experiment
from ..core.errors import DeepSegError
from ..core.progress import progress
from ..model.classes import ClassTable
from ..stages.assembly import DEFAULT_REGION
from ..stages.layers import CLASS_NODATA
from ..storage.paths import RunPaths, atomic_path
from .references import read_polygons
from .reports import write_report

log = logging.getLogger(__name__)
RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".kea", ".jp2", ".nc"}
UNSCORED = 255
CONFUSION_PNG = "evaluation_confusion.png"


def confusion(truth: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """The (k, k) int64 confusion matrix (rows: reference class) of paired class indices."""
    pairs = truth.astype(np.int64) * k + predicted
    return np.bincount(pairs.ravel(), minlength=k * k).reshape(k, k)


def class_scores(matrix: np.ndarray, names: tuple[str, ...]) -> dict[str, Any]:
    """Scores of a confusion ``matrix`` (rows: reference class, columns: predicted); a score
    whose denominator is 0 is None."""
    matrix = matrix.astype(np.float64)
    total, hit = matrix.sum(), np.diag(matrix)
    predicted, reference = matrix.sum(axis=0), matrix.sum(axis=1)

    def ratio(a: float, b: float) -> float | None:
        return float(a / b) if b > 0 else None

    per_class = {}
    for k, name in enumerate(names):
        p, r = ratio(hit[k], predicted[k]), ratio(hit[k], reference[k])
        f1 = ratio(2 * hit[k], predicted[k] + reference[k])
        iou = ratio(hit[k], predicted[k] + reference[k] - hit[k])
        per_class[name] = {
            **{"precision": p, "recall": r, "f1": f1, "iou": iou},
            **{"reference_px": int(reference[k]), "predicted_px": int(predicted[k])},
        }
    accuracy = ratio(hit.sum(), total)
    chance = float((predicted * reference).sum() / total**2) if total else None
    kappa = None
    if accuracy is not None and chance is not None and chance < 1:
        kappa = (accuracy - chance) / (1 - chance)
    return {"overall_accuracy": accuracy, "kappa": kappa, "per_class": per_class,
            "scored_px": int(total)}  # fmt: skip


def _class_indices(frame: gpd.GeoDataFrame, column: str, table: ClassTable, path: Path):
    """The class index of each polygon from ``column`` (names or indices)."""
    if column not in frame.columns:
        raise DeepSegError(
            f"{path}: no column {column!r} (evaluate.class_column); it has {list(frame.columns)}"
        )
    if pd.api.types.is_bool_dtype(frame[column]):
        raise DeepSegError(f"{path}: {column} holds true/false, not class names or indices")
    lookup = {**{n: i for i, n in enumerate(table.names)}, **{i: i for i in range(len(table))}}
    lookup.update({str(i): i for i in range(len(table))})
    values = frame[column].map(lambda v: lookup.get(v.item() if hasattr(v, "item") else v))
    unknown = pd.unique(frame[column][pd.isna(values)])[:5].tolist()
    if len(unknown):
        raise DeepSegError(
            f"{path}: {column} holds {list(unknown)}, not classes of this model "
            f"({', '.join(table.names)}, or 0 to {len(table) - 1})"
        )
    return values.to_numpy(dtype=np.uint8)


def read_aoi(exp: Experiment, settings: EvaluateConfig) -> shapely.Geometry | None:
    """``evaluate.aoi`` as one geometry in ``crs`` (None when not set)."""
    if settings.aoi is None:
        return None
    return shapely.union_all(read_polygons(settings.aoi, None, exp.crs, "aoi").geometry.values)


def aoi_pixels(aoi: shapely.Geometry, src: rasterio.DatasetReader, window: Window) -> np.ndarray:
    """Pixels of ``window`` of ``src`` whose centre lies in ``aoi`` (bool)."""
    box, transform = bounds(window, src.transform), src.window_transform(window)
    clipped = shapely.clip_by_rect(aoi, *box)
    if clipped.is_empty:
        return np.zeros((window.height, window.width), bool)
    return rasterize([clipped], (window.height, window.width), transform=transform) > 0


class PolygonReference:
    """Reference classes burnt block by block from polygons (see the module docstring)."""

    def __init__(self, exp: Experiment, settings: EvaluateConfig, table: ClassTable) -> None:
        if settings.class_column is None:
            raise DeepSegError(
                f"{settings.reference}: scoring a {len(table)}-class run against polygons needs "
                f"evaluate.class_column (the attribute holding each polygon's class) in "
                f"{exp.source}, or a reference raster of class indices"
            )
        frame = read_polygons(settings.reference, settings.reference_layer, exp.crs, "reference")
        self.values = _class_indices(frame, settings.class_column, table, settings.reference)
        self.geoms = np.asarray(frame.geometry.values)
        self.tree = shapely.STRtree(self.geoms)
        self.aoi = read_aoi(exp, settings)

    def start(self, src: rasterio.DatasetReader) -> None:
        self.src = src

    def read(self, window: Window) -> np.ndarray:
        box, transform = bounds(window, self.src.transform), self.src.window_transform(window)
        shape = (window.height, window.width)
        out = np.full(shape, UNSCORED, np.uint8)
        if self.aoi is not None:
            out[aoi_pixels(self.aoi, self.src, window)] = 0
        hits = np.sort(self.tree.query(shapely.box(*box)))  # file order: the later one wins
        if len(hits):
            shapes = zip(self.geoms[hits], self.values[hits].tolist(), strict=True)
            burnt = rasterize(shapes, shape, fill=UNSCORED, transform=transform, dtype=np.uint8)
            np.copyto(out, burnt, where=burnt != UNSCORED)
        return out


class RasterReference:
    """Reference classes read from a raster onto each region's class map (nearest)."""

    def __init__(self, path: Path, classes: int, aoi: shapely.Geometry | None) -> None:
        if not path.exists():
            raise DeepSegError(f"{path}: reference file not found (check evaluate.reference)")
        self.path, self.classes, self.aoi = path, classes, aoi

    def start(self, src: rasterio.DatasetReader) -> None:
        try:
            ref = rasterio.open(self.path)
        except rasterio.RasterioIOError as exc:
            raise DeepSegError(f"{self.path}: cannot read the reference raster ({exc})") from None
        self.nodata = ref.nodata
        self.vrt = WarpedVRT(ref, crs=src.crs, transform=src.transform, width=src.width,
                             height=src.height, resampling=Resampling.nearest,
                             nodata=UNSCORED if ref.nodata is None else ref.nodata)  # fmt: skip

    def read(self, window: Window) -> np.ndarray:
        values = self.vrt.read(1, window=window)
        scored = (values >= 0) & (values < self.classes) & (values != self.vrt.nodata)
        if self.aoi is not None:
            scored &= aoi_pixels(self.aoi, self.vrt, window)
        return np.where(scored, values, UNSCORED).astype(np.uint8)


def _region_matrix(path: Path, name: str, reference, k: int) -> np.ndarray:
    """The confusion matrix of one region's class COG against ``reference``."""
    matrix = np.zeros((k, k), np.int64)
    with rasterio.open(path) as src:
        reference.start(src)
        block_h, block_w = src.block_shapes[0]
        total = -(-src.height // block_h) * -(-src.width // block_w)
        blocks = src.block_windows(1)
        for _, window in progress(blocks, total, f"evaluate {name}: blocks", log):
            predicted = src.read(1, window=window)
            truth = reference.read(window)
            scored = (predicted != CLASS_NODATA) & (truth != UNSCORED)
            matrix += confusion(truth[scored], predicted[scored], k)
    return matrix


def write_confusion_png(path: Path, matrix: np.ndarray, names: tuple[str, ...], title: str):
    """The matrix as a PNG: counts in the cells, colour the share of each reference class."""
    k = len(names)
    fig = Figure(figsize=(2 + 0.8 * k, 1.6 + 0.8 * k), dpi=100)
    ax = fig.add_subplot()
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (r, c), n in np.ndenumerate(matrix):
        ax.text(c, r, f"{n:,}", ha="center", va="center", fontsize=8,
                color="white" if share[r, c] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("reference class")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})


def evaluate_classes(exp: Experiment, settings: EvaluateConfig, table: ClassTable) -> dict:
    """Score every region's class map; write the report and the matrix PNG."""
    paths = RunPaths.of(exp)
    is_raster = settings.reference.suffix.lower() in RASTER_SUFFIXES
    if is_raster and settings.class_column is not None:
        log.warning("evaluate: %s is a raster of class indices; evaluate.class_column %r is "
                    "not used", settings.reference, settings.class_column)  # fmt: skip
    reference = (
        RasterReference(settings.reference, len(table), read_aoi(exp, settings))
        if is_raster
        else PolygonReference(exp, settings, table)
    )
    by_region, k = {}, len(table)
    for name in list(exp.regions) or [DEFAULT_REGION]:
        cog = paths.region_layer(name, "class")
        if not paths.done(cog):
            raise DeepSegError(f"{paths.show(cog)}: missing; run merge.py first")
        by_region[name] = _region_matrix(paths.local(cog), name, reference, k)
    total = sum(by_region.values(), np.zeros((k, k), np.int64))
    report = {
        "experiment": exp.name, "classes": list(table.names),
        "reference": str(settings.reference), "class_column": settings.class_column,
        "aoi": None if settings.aoi is None else str(settings.aoi),
        "confusion_matrix": total.tolist(), "matrix_rows": "reference class",
        **class_scores(total, table.names),
        "by_region": {n: class_scores(m, table.names) for n, m in by_region.items()},
        "files": {"confusion_png": str(paths.logs / CONFUSION_PNG)},
    }  # fmt: skip
    paths.logs.mkdir(parents=True, exist_ok=True)
    write_report(paths.evaluation_report, report)
    accuracy = report["overall_accuracy"]
    title = f"{exp.name}: {int(total.sum()):,} px scored, overall accuracy " + (
        "-" if accuracy is None else f"{accuracy:.3f}"
    )
    write_confusion_png(paths.logs / CONFUSION_PNG, total, table.names, title)
    log.info(
        "evaluate: overall accuracy %s, kappa %s over %d px -> %s",
        *(report["overall_accuracy"], report["kappa"], total.sum(), paths.evaluation_report),
    )
    return report
