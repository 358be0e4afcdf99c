"""A K-class model's classes: config.yaml's ``classes:`` as names (and colours).

``classes:`` in a model folder's config.yaml is either

- an integer K: the network's logit channels; a K > 1 softmax model is mapped as the
  probability of ``positive_class`` (the binary path: one probability band), or
- the class names, in the order of the network's output channels, which makes the run a
  K-class run: probability stores hold all K probabilities and merge writes the class map,
  its probability, entropy and top-1/top-2 gap (``stages.layers``). Written as a list, each
  item a name (its colour from ``PALETTE``) or a one-key mapping of the name to its colour,
  ``"#rrggbb"`` or ``[r, g, b]``: ``[background, {floor: "#e65014"}, headwall]``. A list,
  because a mapping's order is not kept by every YAML writer (PyYAML's dump sorts keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import DeepSegError

MAX_CLASSES = 254  # the class map is uint8 with 255 for nodata
# tab10's colours, then grey: what a class without a colour gets, by its index (cycled)
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
Colour = tuple[int, int, int]


@dataclass(frozen=True)
class ClassTable:
    """The classes of a K-class model: names and RGB colours (0-255), channel order."""

    names: tuple[str, ...]
    colours: tuple[Colour, ...]

    def __len__(self) -> int:
        return len(self.names)


def _colour(path: Path, name: str, value: Any, index: int) -> Colour:
    """``#rrggbb``, ``[r, g, b]`` (0-255) or None (the palette's colour for ``index``)."""
    if value is None:
        return PALETTE[index % len(PALETTE)]
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            pass
    elif isinstance(value, list) and len(value) == 3:
        if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value):
            return tuple(value)  # type: ignore[return-value]
    raise DeepSegError(
        f'{path}: classes.{name}: expected a colour as "#rrggbb" or [r, g, b] (0-255), '
        f"got {value!r}"
    )


def _name_and_colour(path: Path, item: Any) -> tuple[Any, Any]:
    if isinstance(item, dict):
        if len(item) != 1:
            raise DeepSegError(
                f"{path}: classes: expected a name or a one-key mapping name: colour, got {item!r}"
            )
        return next(iter(item.items()))
    return item, None


def parse_class_table(path: Path, value: Any) -> ClassTable:
    """The class table of config.yaml's ``classes:`` list (see the module)."""
    if not isinstance(value, list):
        raise DeepSegError(
            f"{path}: classes: expected a list of class names in channel order, e.g. "
            '[background, {floor: "#e65014"}], got a mapping (its order is not kept by '
            "every YAML writer)"
        )
    pairs = [_name_and_colour(path, item) for item in value]
    names = [name for name, _ in pairs]
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise DeepSegError(f"{path}: classes: expected non-empty class names, got {names!r}")
    if len(set(names)) != len(names):
        raise DeepSegError(f"{path}: classes: a class name is given twice in {names!r}")
    if not 2 <= len(names) <= MAX_CLASSES:
        raise DeepSegError(
            f"{path}: classes: expected 2 to {MAX_CLASSES} class names, got {len(names)} "
            "(a one-channel model needs none: write classes: 1 or leave it out)"
        )
    colours = tuple(_colour(path, n, c, i) for i, (n, c) in enumerate(pairs))
    return ClassTable(tuple(names), colours)
