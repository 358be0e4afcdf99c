"""Polygons from traced pieces: the pieces files' columns, joining open pieces, the output
attributes, and writing them to the GeoPackage (``vectorize`` runs it; the attributes are in
its docstring). Coordinates in ``crs``.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer

from ..config import Experiment
from ..geo.grid import TileGrid
from .assembly import DEFAULT_REGION
from .pieces import tile_ids

LAYER, FOOTPRINTS = "rts_predictions", "footprints"
COLUMNS = {
    "rts_id": "str",
    "region": "str",
    "area_m2": "float64",
    "perimeter_m": "float64",
    "centroid_lat": "float64",
    "centroid_lon": "float64",
    "mean_prob": "float64",
    "max_prob": "float64",
    "detection_scale": "str",
    "tile_ids": "str",
}


PIECE_TYPES = {
    "n_px": "int64",
    "sum_prob": "float64",
    "max_prob": "float64",
    "scale_bits": "int64",
    "first_row": "int64",
    "first_col": "int64",
    "open": "bool",
}


def read_pieces(path: Path) -> tuple[gpd.GeoDataFrame, shapely.Geometry]:
    """A chunk's pieces (Polygon geometries) and its footprint, from its pieces file."""
    frame = gpd.read_file(path)
    is_piece = (frame["kind"] == "piece").to_numpy()
    footprint = frame.geometry.values[~is_piece][0]
    pieces = frame[is_piece].drop(columns="kind").astype(PIECE_TYPES)
    pieces = pieces.set_geometry(shapely.get_geometry(pieces.geometry.values, 0), crs=frame.crs)
    return pieces.reset_index(drop=True), footprint


def join_open(pieces: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Join the open pieces that share an edge segment, summing their sums (union-find)."""
    geoms = pieces.geometry.values
    left, right = shapely.STRtree(geoms).query(geoms, predicate="touches")
    left, right = left[left < right], right[left < right]
    shared = shapely.intersection(shapely.boundary(geoms[left]), shapely.boundary(geoms[right]))
    edge = shapely.length(shared) > 0  # a shared corner point does not connect (4-connected)
    parent = np.arange(len(geoms))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left[edge], right[edge], strict=True):
        parent[root(a)] = root(b)
    groups = pieces.assign(group=[root(i) for i in range(len(geoms))])
    by_first = groups.sort_values(["first_row", "first_col"]).groupby("group")
    sums = groups.groupby("group").agg(
        n_px=("n_px", "sum"),
        sum_prob=("sum_prob", "sum"),
        max_prob=("max_prob", "max"),
        scale_bits=("scale_bits", lambda b: int(np.bitwise_or.reduce(b.to_numpy()))),
    )
    sums[["first_row", "first_col"]] = by_first[["first_row", "first_col"]].first()
    order = np.argsort(groups.group.to_numpy(), kind="stable")  # one sort, not a scan a group
    ends = np.searchsorted(groups.group.to_numpy()[order], sums.index.to_numpy(), side="right")
    unions = [shapely.union_all(part) for part in np.split(geoms[order], ends[:-1])]
    return gpd.GeoDataFrame(sums.reset_index(drop=True), geometry=unions, crs=pieces.crs)


def assign_regions(geoms: np.ndarray, boxes: dict[str, shapely.Geometry]) -> np.ndarray:
    """Per polygon, the region it overlaps most (name order breaks ties); "" for none."""
    if list(boxes) == [DEFAULT_REGION]:
        return np.full(len(geoms), DEFAULT_REGION, dtype=object)
    areas = np.zeros((len(boxes), len(geoms)))
    for i, box in enumerate(boxes.values()):
        hit = shapely.intersects(geoms, box)
        areas[i, hit] = shapely.area(shapely.intersection(geoms[hit], box))
    names = np.array(list(boxes) + [""], dtype=object)
    best = np.where(areas.max(axis=0) > 0, areas.argmax(axis=0), len(boxes))
    return names[best]


def finalize(
    parts: gpd.GeoDataFrame,
    exp: Experiment,
    boxes: dict[str, shapely.Geometry],
    scales,
    class_name: str | None = None,
) -> gpd.GeoDataFrame:
    """Objects with their sums -> the output attributes, in regions, filtered, simplified;
    a K-class run's objects of ``class_name`` also get ``class`` (and ids named after it)."""
    # drop vertices that lie exactly on a straight edge (left where cut pieces were joined), so
    # the geometry does not depend on the chunking; no area changes
    geoms = shapely.simplify(parts.geometry.values, 0.0, preserve_topology=True)
    region = assign_regions(geoms, boxes)
    keep = (region != "") & (shapely.area(geoms) >= exp.vectorize.min_area_m2)
    parts, geoms, region = parts[keep], geoms[keep], region[keep]
    centroids = shapely.centroid(geoms)
    to_wgs84 = Transformer.from_crs(exp.crs, "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform(shapely.get_x(centroids), shapely.get_y(centroids))
    bits = parts["scale_bits"].to_numpy().astype(np.int64)
    table = {
        "rts_id": [
            f"{class_name or 'rts'}_{c:07d}_{r:07d}"
            for c, r in zip(parts.first_col, parts.first_row, strict=True)
        ],
        "region": region,
        "area_m2": shapely.area(geoms),
        "perimeter_m": shapely.length(geoms),
        "centroid_lat": lat,
        "centroid_lon": lon,
        "mean_prob": parts["sum_prob"].to_numpy() / parts["n_px"].to_numpy(),
        "max_prob": parts["max_prob"].to_numpy(),
        "detection_scale": [
            ",".join(str(float(s)) for i, s in enumerate(scales) if b >> i & 1) for b in bits
        ],
        "tile_ids": tile_ids(geoms, TileGrid.from_experiment(exp)),
    }
    if exp.vectorize.simplify_m > 0:  # after the measurements, keeping holes and validity
        geoms = shapely.simplify(geoms, exp.vectorize.simplify_m, preserve_topology=True)
    columns = dict(COLUMNS)
    if class_name is not None:
        table, columns = {"class": class_name, **table}, {"class": "str", **columns}
    frame = gpd.GeoDataFrame(pd.DataFrame(table).astype(columns), geometry=geoms, crs=exp.crs)
    return frame.sort_values("rts_id").reset_index(drop=True)


def empty_pieces(exp: Experiment) -> gpd.GeoDataFrame:
    columns = {c: pd.Series(dtype=t) for c, t in PIECE_TYPES.items()}
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries([], crs=exp.crs), crs=exp.crs)


class PolygonWriter:
    """Polygons appended to the layers of one GeoPackage, which the first write creates."""

    def __init__(self, target: Path) -> None:
        self.target, self.rows = target, {}

    def add(self, frame: gpd.GeoDataFrame, layer: str, force: bool = False) -> int:
        """Add ``frame`` to ``layer`` (``force``: create it even when empty); rows added."""
        if len(frame) or force:
            mode = "a" if self.rows else "w"
            frame.to_file(self.target, layer=layer, driver="GPKG", mode=mode,
                          geometry_type="Polygon")  # fmt: skip
            self.rows[layer] = self.rows.get(layer, 0) + len(frame)
        return len(frame)
