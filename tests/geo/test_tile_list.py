"""``grid.tile_list`` read with pandas and numpy: the same tiles as the CSV says, by chunk,
and a bad row named by its line, also past the first block of rows."""

from __future__ import annotations

import numpy as np
import pytest

from deepseg.core.errors import DeepSegError
from deepseg.geo import tile_list
from deepseg.geo.grid import TileGrid

GRID = TileGrid(origin_x=-4000100.0, origin_y=4100100.0, resolution=3.0, tile_size=512,
                stride=256, chunk_tiles=16, halo_px=0)  # fmt: skip


def write_csv(path, tiles, grid=GRID, bad_line=None):
    lines = ["tile_id,minx,miny,maxx,maxy"]
    for col, row in tiles:
        bounds = ",".join(repr(v) for v in grid.bounds(grid.tile_box(col, row)))
        lines.append(f"{grid.tile_id(col, row)},{bounds}")
    if bad_line is not None:
        lines[bad_line - 1] = bad_line_text = lines[bad_line - 1].replace(",", ",x", 1)
        assert bad_line_text != lines[0]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_list_holds_exactly_the_listed_tiles_by_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(tile_list, "BLOCK_ROWS", 1000)  # several blocks
    rng = np.random.default_rng(4)
    tiles = {(int(c), int(r)) for c, r in rng.integers(0, 200, size=(5000, 2))}
    listed = tile_list.read_tile_list(write_csv(tmp_path / "t.csv", sorted(tiles)), GRID)
    assert len(listed) == len(tiles)
    assert listed.chunks() == {GRID.chunk_of_tile(*t) for t in tiles}
    for chunk in [(0, 0), (3, 7), (12, 12), (40, 40)]:
        want = sorted(t for t in tiles if GRID.chunk_of_tile(*t) == chunk)
        assert listed.in_chunk(*chunk) == want
    probe = rng.integers(0, 210, size=(3000, 2))
    got = listed.contains(probe[:, 0], probe[:, 1])
    assert got.tolist() == [(int(c), int(r)) in tiles for c, r in probe]
    assert got.any() and not got.all()
    some = next(iter(tiles))
    assert some in listed and (some[0], 999) not in listed


@pytest.mark.parametrize("bad_line", [2, 2500])
def test_a_bad_row_is_named_by_its_line(tmp_path, monkeypatch, bad_line):
    monkeypatch.setattr(tile_list, "BLOCK_ROWS", 1000)
    tiles = [(c, r) for r in range(50) for c in range(60)]
    path = write_csv(tmp_path / "t.csv", tiles, bad_line=bad_line)
    with pytest.raises(DeepSegError, match=rf"t\.csv:{bad_line}: grid\.tile_list: expected"):
        tile_list.read_tile_list(path, GRID)


def test_a_list_of_another_grid_is_refused_at_its_first_row(tmp_path):
    other = TileGrid(origin_x=-4000100.0, origin_y=4100100.0, resolution=3.0, tile_size=256,
                     stride=256, chunk_tiles=16, halo_px=0)  # fmt: skip
    path = write_csv(tmp_path / "t.csv", [(1, 1), (2, 2)], grid=other)
    with pytest.raises(DeepSegError, match=r"t\.csv:2: .* c000001_r000001 .* another grid"):
        tile_list.read_tile_list(path, GRID)


def test_a_list_without_the_header_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,minx\nc1_r1,0\n")
    with pytest.raises(DeepSegError, match=r"t\.csv:1: grid\.tile_list: expected the header"):
        tile_list.read_tile_list(path, GRID)
    path.write_text("")
    with pytest.raises(DeepSegError, match=r"t\.csv: grid\.tile_list is empty; expected the head"):
        tile_list.read_tile_list(path, GRID)
    path.write_text("tile_id,minx,miny,maxx,maxy\n")  # no tile: a run of nothing
    assert len(tile_list.read_tile_list(path, GRID)) == 0


def test_bounds_that_are_not_numbers_are_named_by_their_line(tmp_path):
    path = write_csv(tmp_path / "t.csv", [(1, 1), (2, 2), (3, 3)])
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",north"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DeepSegError, match=r"t\.csv:4: grid\.tile_list: expected"):
        tile_list.read_tile_list(path, GRID)


def one_row(path, tile_id, tile=(1, 2)):
    bounds = ",".join(repr(v) for v in GRID.bounds(GRID.tile_box(*tile)))
    first = f"{GRID.tile_id(5, 5)},{','.join(repr(v) for v in GRID.bounds(GRID.tile_box(5, 5)))}"
    path.write_text(f"tile_id,minx,miny,maxx,maxy\n{first}\n{tile_id},{bounds}\n")
    return path


@pytest.mark.parametrize("tile_id", ["c1_r2", "c000001_r000002", " c01_r0002 ", "c1_r2 "])
def test_ids_of_any_width_are_read(tmp_path, tile_id):
    listed = tile_list.read_tile_list(one_row(tmp_path / "t.csv", tile_id), GRID)
    assert (1, 2) in listed and (5, 5) in listed and len(listed) == 2


@pytest.mark.parametrize(
    "tile_id",
    ["c12r3", "x1_r2", "c_r2", "c1_r", "c1_r2x", "c1_q2", "c1__r2", "cé_r2", "", "c-1_r2"],
)
def test_a_malformed_id_is_named_by_its_line(tmp_path, tile_id):
    with pytest.raises(DeepSegError, match=r"t\.csv:3: grid\.tile_list: expected"):
        tile_list.read_tile_list(one_row(tmp_path / "t.csv", tile_id), GRID)
