"""Reading polygon files for evaluation: reference outlines and areas of interest.

Any vector format GDAL reads (GPKG, GeoJSON, Shapefile, ...) in any CRS; features come back
reprojected to the experiment's ``crs``, indexed by their row in the layer (0-based).
Empty geometries are dropped, invalid rings repaired (``make_valid``, polygonal parts
kept); points or lines are refused, since they have no area to score.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from pyogrio.errors import DataLayerError, DataSourceError

from ..core.errors import DeepSegError

log = logging.getLogger(__name__)
POLYGONAL = ("Polygon", "MultiPolygon")


def _layer(path: Path, layer: str | None, what: str) -> str:
    """The layer to read: ``layer``, or the file's first (logged when there are several)."""
    try:
        names = [str(name) for name, _ in pyogrio.list_layers(path)]
    except (DataSourceError, DataLayerError) as exc:
        raise DeepSegError(f"{path}: cannot read the {what} file ({exc})") from None
    if not names:
        raise DeepSegError(f"{path}: the {what} file holds no layer")
    if layer is None:
        if len(names) > 1:
            log.info(
                "%s: using layer %r of %s (choose with a layer setting)", path, names[0], names
            )
        return names[0]
    if layer not in names:
        raise DeepSegError(f"{path}: no layer {layer!r}; expected one of {', '.join(names)}")
    return layer


def _polygonal(geometry: shapely.Geometry) -> shapely.Geometry:
    """The polygonal part of a repaired geometry (make_valid may add lines or points)."""
    if geometry.geom_type in POLYGONAL:
        return geometry
    parts = [g for g in shapely.get_parts(geometry) if g.geom_type in POLYGONAL]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def read_polygons(path: Path, layer: str | None, crs: str, what: str) -> gpd.GeoDataFrame:
    """The polygons of ``path`` (``layer`` or its first layer) in ``crs``; DeepSegError naming
    the file when it is absent, unreadable, without a CRS or not made of polygons. ``what``
    names the file's role in messages (e.g. ``reference``, ``aoi``)."""
    if not path.exists():
        raise DeepSegError(f"{path}: {what} file not found (check evaluate.{what} or --{what})")
    name = _layer(path, layer, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # GDAL's notes on odd fields
            frame = gpd.read_file(path, layer=name)
    except (DataSourceError, DataLayerError) as exc:
        raise DeepSegError(f"{path}: cannot read layer {name!r} ({exc})") from None
    if frame.crs is None:
        raise DeepSegError(
            f"{path}: the {what} polygons have no CRS; save them with one (e.g. EPSG:3413)"
        )
    frame = frame[~(frame.geometry.isna() | frame.geometry.is_empty)]
    other = frame.geometry.geom_type[~frame.geometry.geom_type.isin(POLYGONAL)]
    if len(other):
        kinds = ", ".join(f"{n} {kind}" for kind, n in other.value_counts().items())
        raise DeepSegError(f"{path}: expected {what} polygons, got {kinds} feature(s)")
    invalid = ~frame.geometry.is_valid.to_numpy()
    if invalid.any():
        log.info("%s: repaired %d invalid polygon(s)", path, int(invalid.sum()))
        geoms = np.asarray(frame.geometry.values).copy()
        geoms[invalid] = [_polygonal(g) for g in shapely.make_valid(geoms[invalid])]
        frame = frame.set_geometry(gpd.GeoSeries(geoms, index=frame.index, crs=frame.crs))
        frame = frame[~frame.geometry.is_empty]
    return frame.to_crs(crs)
