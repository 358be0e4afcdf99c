"""K-class runs (issue 18): a 3-class model through create_tiles, predict and merge gives the
class map, its probability, entropy, top-1/top-2 gap and all class probabilities that numpy
computes on the whole scene at once, at chunk and region borders, for both merge methods."""

from __future__ import annotations

import dataclasses
import json

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch

from conftest import (
    MEAN,
    ORIGIN,
    RES,
    STD,
    lattice_transform,
    write_experiment,
    write_model,
    write_raster,
)
from deepseg.config import load_experiment
from deepseg.core.errors import DeepSegError
from deepseg.geo.grid import PixelBox
from deepseg.model.overlap import MaxMerge
from deepseg.qa.check import check_run
from deepseg.qa.evaluate import evaluate
from deepseg.qa.summary import summarize
from deepseg.stages.assembly import Fusion
from deepseg.stages.merge import merge
from deepseg.stages.predict import predict
from deepseg.stages.preview import PreviewGrid, class_preview
from deepseg.stages.tiles import create_tiles
from deepseg.stages.vectorize import vectorize
from deepseg.storage.paths import RunPaths
from deepseg.stores.prob_store import ProbWindow, read_prob_classes
from model_folders import known_conv, known_logits, model_folder, torchscript_bytes
from shared_scenes import OFFGRID_AT, offgrid_scene

CLASS_LIST = [{"background": "#000000"}, {"floor": [230, 80, 20]}, "headwall"]
CLASSES = ("background", "floor", "headwall")
SPLIT_COL = 150  # scene column where region "west" ends and "east" begins


def whole_scene_reference(data: np.ndarray) -> dict[str, np.ndarray]:
    """The 3-class products of the known 1x1 convolution on the whole scene, in float64."""
    valid = (data != 0).any(axis=0)
    x = (data.astype(np.float64) - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
    logits = known_logits(np.where(valid, x, 0.0)[None], classes=3)[0]
    e = np.exp(logits - logits.max(axis=0))
    p = e / e.sum(axis=0)
    ordered = np.sort(p, axis=0)
    return {
        "valid": valid,
        "probs": np.where(valid, p, -1.0),
        "class": np.where(valid, p.argmax(axis=0), 255),
        "maxprob": np.where(valid, ordered[-1], -1.0),
        "entropy": np.where(valid, -(p * np.log2(p)).sum(axis=0), -1.0),
        "gap": np.where(valid, ordered[-1] - ordered[-2], -1.0),
    }


def region_bounds(col0: int, col1: int, rows: int) -> list[float]:
    """minx, miny, maxx, maxy of scene columns [col0, col1) and all its rows, in EPSG:3413."""
    c, r = OFFGRID_AT
    return [ORIGIN[0] + (c + col0) * RES, ORIGIN[1] - (r + rows) * RES,
            ORIGIN[0] + (c + col1) * RES, ORIGIN[1] - r * RES]  # fmt: skip


@pytest.fixture
def three_class_model(tmp_path):
    weights = torchscript_bytes(known_conv(3))
    return model_folder(tmp_path / "model", "torchscript", weights, classes=CLASS_LIST)


def scene_window(path, shape):
    """(rows, cols) slices of the scene that a merged raster covers (both on the lattice)."""
    with rasterio.open(path) as f:
        col = round((f.transform.c - ORIGIN[0]) / RES) - OFFGRID_AT[0]
        row = round((ORIGIN[1] - f.transform.f) / RES) - OFFGRID_AT[1]
        assert (f.width, f.height) == (shape[1], shape[0])
        return np.s_[row : row + f.height, col : col + f.width]


def three_class_run(tmp_path, model, method="max", **sections):
    """The off-grid scene through create_tiles, predict and merge, in two regions."""
    scene, data = offgrid_scene(tmp_path)
    height, width = data.shape[1:]
    regions = {"west": region_bounds(0, SPLIT_COL, height),
               "east": region_bounds(SPLIT_COL, width, height)}  # fmt: skip
    exp = load_experiment(write_experiment(
        tmp_path, [scene], model, regions=regions,
        merge={"method": method, "products": ["probs", "scales", "preview"]},
        inference={"tta": "minimal"}, **sections,
    ))  # fmt: skip
    create_tiles(exp)
    predict(exp)
    merge(exp)
    return exp, data


def merged_classes(paths, width: int) -> np.ndarray:
    """The two regions' class maps side by side: the scene's class map."""
    maps = []
    for region in ("west", "east"):
        with rasterio.open(paths.region_layer(region, "class")) as f:
            maps.append(f.read(1))
    assert maps[0].shape[1] + maps[1].shape[1] == width
    return np.hstack(maps)


def confusion(truth: np.ndarray, predicted: np.ndarray, scored: np.ndarray) -> np.ndarray:
    pairs = truth[scored].astype(int) * 3 + predicted[scored]
    return np.bincount(pairs, minlength=9).reshape(3, 3)


def assert_scores(report: dict, matrix: np.ndarray) -> None:
    """The report's matrix, accuracy, kappa and per-class scores are ``matrix``'s."""
    assert report["confusion_matrix"] == matrix.tolist()
    n = matrix.sum()
    assert report["overall_accuracy"] == pytest.approx(np.trace(matrix) / n, abs=1e-12)
    pe = (matrix.sum(0) * matrix.sum(1)).sum() / n**2
    assert report["kappa"] == pytest.approx((np.trace(matrix) / n - pe) / (1 - pe), abs=1e-12)
    for k, name in enumerate(CLASSES):
        scores = report["per_class"][name]
        assert scores["precision"] == pytest.approx(matrix[k, k] / matrix[:, k].sum())
        assert scores["recall"] == pytest.approx(matrix[k, k] / matrix[k].sum())
        union = matrix[:, k].sum() + matrix[k].sum() - matrix[k, k]
        assert scores["iou"] == pytest.approx(matrix[k, k] / union)


def test_evaluate_scores_each_class_against_a_reference_raster(tmp_path, three_class_model):
    exp, data = three_class_run(tmp_path, three_class_model)
    paths = RunPaths.of(exp)
    predicted = merged_classes(paths, data.shape[2])
    rng = np.random.default_rng(1)
    truth = predicted.copy()
    flip = rng.random(truth.shape) < 0.2
    truth[flip] = (truth[flip] + rng.integers(1, 3, truth.shape)[flip]) % 3
    truth[predicted == 255] = 255
    truth[:20, -30:] = 255  # the reference's own nodata: not scored
    reference = write_raster(tmp_path / "truth.tif", truth[None], lattice_transform(*OFFGRID_AT),
                             nodata=255)  # fmt: skip
    report = evaluate(exp, reference=reference)
    assert_scores(report, confusion(truth, predicted, (truth != 255) & (predicted != 255)))
    assert report["by_region"]["west"]["scored_px"] + report["by_region"]["east"][
        "scored_px"] == report["scored_px"]  # fmt: skip
    assert (paths.logs / "evaluation_confusion.png").stat().st_size > 1000
    text = summarize(exp)
    assert f"overall accuracy {report['overall_accuracy']:.3f}" in text, text
    assert "west_class.tif (class map COG, region west)" in text
    x, y = ORIGIN[0] + OFFGRID_AT[0] * RES, ORIGIN[1] - OFFGRID_AT[1] * RES
    aoi = shapely.box(x + 80 * RES, y - 230 * RES, x + 280 * RES, y - 40 * RES)  # scene px
    gpd.GeoDataFrame(geometry=[aoi], crs="EPSG:3413").to_file(tmp_path / "aoi.gpkg")
    inside = np.zeros(truth.shape, bool)
    inside[40:230, 80:280] = True
    report = evaluate(exp, reference=reference, aoi=tmp_path / "aoi.gpkg")
    scored = (truth != 255) & (predicted != 255) & inside
    assert_scores(report, confusion(truth, predicted, scored))
    with pytest.raises(DeepSegError, match="drop --calibrate"):
        evaluate(exp, reference=reference, calibrate=True)


def test_evaluate_scores_each_class_against_polygons_in_an_aoi(tmp_path, three_class_model):
    c, r = OFFGRID_AT
    x, y = ORIGIN[0] + c * RES, ORIGIN[1] - r * RES  # the scene's top-left corner

    def square(col0, row0, col1, row1):  # scene pixels, edges on the lattice
        return shapely.box(x + col0 * RES, y - row1 * RES, x + col1 * RES, y - row0 * RES)

    labels = gpd.GeoDataFrame(
        {"kind": ["floor", "headwall", 1, "background"]},
        geometry=[square(100, 120, 180, 200), square(150, 60, 260, 140),
                  square(60, 50, 90, 70), square(110, 130, 120, 140)],
        crs="EPSG:3413",
    )  # fmt: skip
    labels["kind"] = labels["kind"].astype(str)
    labels.to_file(tmp_path / "labels.gpkg")
    gpd.GeoDataFrame(geometry=[square(80, 40, 280, 230)], crs="EPSG:3413").to_file(
        tmp_path / "aoi.gpkg"
    )
    exp, data = three_class_run(tmp_path, three_class_model,
                                evaluate={"class_column": "kind"})  # fmt: skip
    predicted = merged_classes(RunPaths.of(exp), data.shape[2])
    truth = np.full(predicted.shape, 255, np.uint8)
    truth[40:230, 80:280] = 0  # the AOI: background unless outlined
    truth[120:200, 100:180] = 1
    truth[60:140, 150:260] = 2  # later in the file: wins where it overlaps the floor
    truth[50:70, 60:90] = 1  # outside the AOI, outlined: scored
    truth[130:140, 110:120] = 0
    report = evaluate(exp, reference=tmp_path / "labels.gpkg", aoi=tmp_path / "aoi.gpkg")
    assert_scores(report, confusion(truth, predicted, (truth != 255) & (predicted != 255)))


@pytest.mark.parametrize("method", ["max", "sinusoidal"])
def test_three_class_products_equal_numpy_on_the_whole_scene(tmp_path, three_class_model, method):
    exp, data = three_class_run(tmp_path, three_class_model, method)
    height, width = data.shape[1:]
    paths = RunPaths.of(exp)
    stores = paths.prob_stores()
    assert len(stores) >= 6  # the scene spans several chunks of 2 x 2 tiles
    names, colours = read_prob_classes(stores[0])
    assert names == tuple(CLASSES) and colours[1] == (230, 80, 20)
    ref = whole_scene_reference(data)
    for region, col0, col1 in (("west", 0, SPLIT_COL), ("east", SPLIT_COL, width)):
        at = scene_window(paths.region_layer(region, "class"), (height, col1 - col0))
        assert (at[0].start, at[1].start) == (0, col0)
        with rasterio.open(paths.region_layer(region, "probs")) as f:
            assert f.count == 3 and f.descriptions == tuple(CLASSES)
            probs = f.read()
        np.testing.assert_allclose(probs, ref["probs"][(slice(None), *at)], atol=2e-6, rtol=0)
        for layer in ("maxprob", "entropy", "gap"):
            with rasterio.open(paths.region_layer(region, layer)) as f:
                assert f.dtypes[0] == "float32" and f.nodata == -1
                got = f.read(1)
            np.testing.assert_allclose(got, ref[layer][at], atol=1e-5, rtol=0, err_msg=layer)
        with rasterio.open(paths.region_layer(region, "class")) as f:
            classes, palette = f.read(1), f.colormap(1)
            assert f.nodata == 255 and f.profile["driver"] == "GTiff"
        assert palette[0] == (0, 0, 0, 255) and palette[1] == (230, 80, 20, 255)
        assert palette[255][3] == 0
        expected = ref["class"][at]
        clear = ref["gap"][at] > 1e-5  # where rounding cannot swap the top two classes
        np.testing.assert_array_equal(classes[clear], expected[clear])
        assert (classes[~ref["valid"][at]] == 255).all()
        assert set(np.unique(classes[ref["valid"][at]])) == {0, 1, 2}
        grid = PreviewGrid.of(PixelBox(0, 0, col1 - col0, height))  # one preview px per px
        shown = class_preview(paths.region_layer(region, "class"), grid)
        np.testing.assert_array_equal(shown, classes)
        assert paths.region_preview(region).stat().st_size > 1000
        with rasterio.open(paths.region_layer(region, "scales")) as f:
            scales = f.read(1)
        np.testing.assert_array_equal(scales, np.where(ref["valid"][at], 1, 255))
    log = json.loads(paths.run_log.read_text())
    assert [c["name"] for c in log["classes"]] == list(CLASSES)
    with pytest.raises(DeepSegError, match="vectorize.classes: 'rock' is not a class"):
        rock = dataclasses.replace(exp.vectorize, classes=("rock",))
        vectorize(dataclasses.replace(exp, vectorize=rock))
    with pytest.raises(DeepSegError, match="class_column"):
        evaluate(exp, reference=tmp_path / "scene.gpkg")  # polygons without a class column


def test_max_keeps_the_whole_vector_of_the_most_confident_tile():
    merged = MaxMerge((3, 1, 2), 1, torch.device("cpu"))
    window = (slice(0, 1), slice(0, 2))
    merged.add(window, torch.tensor([[[0.6, 0.2]], [[0.3, 0.1]], [[0.1, 0.7]]]))
    merged.add(window, torch.tensor([[[0.2, 0.5]], [[0.7, 0.4]], [[0.1, 0.1]]]))
    prob, _ = merged.result()
    # pixel 0: the second tile's 0.7 beats 0.6; pixel 1: the first tile's 0.7 beats 0.5
    np.testing.assert_allclose(prob[:, 0].numpy(), [[0.2, 0.2], [0.7, 0.1], [0.1, 0.7]])

    fusion = Fusion(PixelBox(0, 0, 2, 1), "max", classes=3)
    for values in ([[[0.6, 0.2]], [[0.3, 0.1]], [[0.1, 0.7]]],
                   [[[0.2, 0.5]], [[0.7, 0.4]], [[0.1, 0.1]]]):  # fmt: skip
        part = np.array(values, np.float32)
        fusion.add(ProbWindow(PixelBox(0, 0, 2, 1), part, np.zeros((1, 2), np.uint8), None))
    fused, _ = fusion.result()
    np.testing.assert_allclose(fused[:, 0], [[0.2, 0.2], [0.7, 0.1], [0.1, 0.7]])


def test_sinusoidal_fusion_is_the_weighted_mean_per_class():
    fusion = Fusion(PixelBox(0, 0, 1, 1), "sinusoidal", classes=2)
    for p, w in (([0.8, 0.2], 3.0), ([0.4, 0.6], 1.0)):
        part = np.array(p, np.float32)[:, None, None]
        weight = np.full((1, 1), w, np.float32)
        fusion.add(ProbWindow(PixelBox(0, 0, 1, 1), part, np.zeros((1, 1), np.uint8), weight))
    fused, _ = fusion.result()
    np.testing.assert_allclose(fused[:, 0, 0], [0.7, 0.3], rtol=1e-6)


def test_scales_fuse_by_the_most_confident_vector_and_record_agreement(tmp_path, three_class_model):
    data = np.random.default_rng(4).integers(1, 255, size=(3, 160, 160), dtype=np.uint8)
    raster = write_raster(tmp_path / "scene.tif", data, lattice_transform(*OFFGRID_AT))
    grid = {"tile_size": 64, "stride": 32, "chunk_tiles": 2}

    def probs_and_bits(name, scales):
        exp = load_experiment(write_experiment(
            tmp_path / name, [raster], three_class_model, grid=grid,
            inference={"scales": scales}, merge={"products": ["probs", "scales"]},
        ))  # fmt: skip
        for stage in (create_tiles, predict, merge):
            stage(exp)
        paths = RunPaths.of(exp)
        with rasterio.open(paths.region_layer("all", "probs")) as f:
            probs = f.read()
        with rasterio.open(paths.region_layer("all", "scales")) as f:
            return probs, f.read(1)

    fused, bits = probs_and_bits("both", [1.0, 0.5])
    single, _ = probs_and_bits("one", [1.0])
    half, _ = probs_and_bits("half", [0.5])
    more = half.max(axis=0) > single.max(axis=0)
    assert 0.02 < more.mean() < 0.98  # both scales win somewhere
    np.testing.assert_array_equal(fused, np.where(more, half, single))
    top = fused.argmax(axis=0)
    np.testing.assert_array_equal(bits & 1, single.argmax(axis=0) == top)
    np.testing.assert_array_equal((bits >> 1) & 1, half.argmax(axis=0) == top)
    assert ((bits & 1) == 0).any() and ((bits >> 1) & 1 == 0).any()  # they disagree somewhere


# normalized inputs the known 1x1 convolution gives class 0, 1 and 2, as raw pixel values
CLASS_COLOURS = [np.array(x) * STD + MEAN for x in ([2, -1, 0], [0, 2, -1], [0, 0, 2])]
RECTANGLES = {  # class -> scene (col0, row0, col1, row1): across chunk (64 px) and region borders
    1: [(10, 10, 40, 30), (120, 100, 190, 140), (60, 200, 62, 250)],
    2: [(140, 20, 160, 60), (200, 150, 290, 240), (40, 120, 70, 125)],
}


def test_vectorize_writes_a_polygon_layer_per_class(tmp_path, three_class_model):
    data = np.empty((3, 257, 301), np.uint8)
    data[:] = CLASS_COLOURS[0].astype(np.uint8)[:, None, None]
    for k, boxes in RECTANGLES.items():
        for c0, r0, c1, r1 in boxes:
            data[:, r0:r1, c0:c1] = CLASS_COLOURS[k].astype(np.uint8)[:, None, None]
    data[:, 0:8, 250:301] = 0  # nodata
    scene = write_raster(tmp_path / "scene.tif", data, lattice_transform(*OFFGRID_AT))
    regions = {"west": region_bounds(0, SPLIT_COL, 257), "east": region_bounds(SPLIT_COL, 301, 257)}
    exp = load_experiment(write_experiment(tmp_path, [scene], three_class_model, regions=regions))
    for stage in (create_tiles, predict, merge, vectorize):
        stage(exp)
    path = RunPaths.of(exp).polygons
    assert sorted(n for n, _ in pyogrio.list_layers(path)) == ["floor", "footprints", "headwall"]
    ref = whole_scene_reference(data)
    x, y = ORIGIN[0] + OFFGRID_AT[0] * RES, ORIGIN[1] - OFFGRID_AT[1] * RES
    for k, name in ((1, "floor"), (2, "headwall")):
        found = gpd.read_file(path, layer=name).sort_values("area_m2").reset_index(drop=True)
        boxes = sorted(RECTANGLES[k], key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        assert len(found) == len(boxes) and (found["class"] == name).all()
        for row, (c0, r0, c1, r1) in zip(found.itertuples(), boxes, strict=True):
            box = shapely.box(x + c0 * RES, y - r1 * RES, x + c1 * RES, y - r0 * RES)
            assert row.area_m2 == (c1 - c0) * (r1 - r0) * RES**2
            assert shapely.equals(row.geometry, box)
            assert row.rts_id == f"{name}_{OFFGRID_AT[0] + c0:07d}_{OFFGRID_AT[1] + r0:07d}"
            assert row.mean_prob == pytest.approx(ref["probs"][k, r0, c0], abs=1e-6)
    assert "floor 3, headwall 3" in summarize(exp)
    report = check_run(exp)
    assert report["ok"] and not report["chunks_missing_from_merged"], report


def test_a_binary_run_remade_with_a_k_class_model_keeps_only_the_class_maps(
    tmp_path, three_class_model
):
    scene, _ = offgrid_scene(tmp_path)
    for model in (write_model(tmp_path / "binary"), three_class_model):
        exp = load_experiment(write_experiment(tmp_path, [scene], model))
        for stage in (create_tiles, predict, merge):
            stage(exp)
    names = sorted(p.name for p in RunPaths.of(exp).merged.iterdir())
    assert names == ["all_class.tif", "all_entropy.tif", "all_gap.tif", "all_maxprob.tif"]
