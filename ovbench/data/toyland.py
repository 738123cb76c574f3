"""toyland: a small synthetic aerial benchmark, generated in process from a seed.

toyland lets the whole harness (training, cross-dataset evaluation, tables) run in minutes on
a CPU with no data on disk. Each tile is an aerial-looking RGB image of textured land-cover
regions (water, forest, striped farmland, bare soil, grass), roads, buildings with shadows and
small objects (cars, trucks, storage tanks, pools, boats), rendered together with an exact
map of which *scene element* covers every pixel.

The splits then mimic the real cross-dataset protocol (LandDiscover50K for training; Potsdam,
FloodNet and FAST for evaluation) by labelling the same kinds of scenes differently:

- ``toyland-train`` (LandDiscover50K-like): "background" is queried but ignored (id 0);
  storage tanks, pools and boats are not in its vocabulary and count as background. Like the
  SAMRS part of LD50K, a fraction of the tiles is annotated for objects only.
- ``toyland-urban`` (Potsdam-like): renamed classes and a catch-all "clutter" class that the
  evaluator knows but no model is asked for; clutter is the ignore index.
- ``toyland-flood`` (FloodNet-like): "background" queried but ignored; adds "pool", a class
  absent from training.
- ``toyland-objects`` (FAST-like): fine-grained and novel object classes only; everything
  else is 255.

Every tile comes from its own random stream, ``default_rng([seed, split stream id, index])``,
so ``dataset[i]`` is the same bytes whatever the access order and whichever process asks.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from types import MappingProxyType
from typing import Callable, Iterator, Mapping

import numpy as np

from ovbench.data.base import Sample
from ovbench.data.vocabulary import Vocabulary
from ovbench.errors import ConfigError, unknown_name_error

__all__ = [
    "SceneElement",
    "SceneStatistics",
    "ToylandSplit",
    "ToylandDataset",
    "TOYLAND_SPLITS",
    "TOYLAND_TRAIN_SPLIT",
    "TOYLAND_EVAL_SPLITS",
    "render_toyland_scene",
]


class SceneElement(IntEnum):
    """What covers a pixel of a rendered scene, before any split names it."""

    WATER = 0
    FOREST = 1
    FARMLAND = 2
    BARE_SOIL = 3
    GRASS = 4
    ROAD = 5
    BUILDING = 6
    CAR = 7
    TRUCK = 8
    STORAGE_TANK = 9
    POOL = 10
    BOAT = 11


#: Land covers in the order of `SceneStatistics.land_cover_weights`.
LAND_COVERS: tuple[SceneElement, ...] = (
    SceneElement.WATER,
    SceneElement.FOREST,
    SceneElement.FARMLAND,
    SceneElement.BARE_SOIL,
    SceneElement.GRASS,
)

#: Elements a SAMRS-style "objects only" annotation labels; everything else is unlabelled.
OBJECT_ELEMENTS: frozenset[SceneElement] = frozenset(
    {SceneElement.CAR, SceneElement.TRUCK, SceneElement.STORAGE_TANK, SceneElement.BOAT}
)

#: The generator never emits a tile smaller than this: buildings and tank clusters need room.
MIN_TILE_SIZE = 32


def _inclusive_range(value: tuple[int, int], what: str) -> tuple[int, int]:
    low, high = value
    if not (0 <= low <= high):
        raise ConfigError(f"scene statistics: {what} must be a range 0 <= low <= high, got {value}")
    return value


def _probability(value: float, what: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"scene statistics: {what} must be a probability in [0, 1], got {value}")
    return value


@dataclass(frozen=True)
class SceneStatistics:
    """How often each scene element appears; counts are inclusive (low, high) ranges.

    Distances are in pixels of a 128-pixel tile and scale with the tile size.
    """

    #: relative frequency of water, forest, farmland, bare soil, grass regions (LAND_COVERS order)
    land_cover_weights: tuple[float, float, float, float, float] = (0.15, 0.2, 0.25, 0.15, 0.25)
    regions: tuple[int, int] = (4, 8)
    roads: tuple[int, int] = (0, 2)
    buildings: tuple[int, int] = (2, 8)
    vehicles_per_road: tuple[int, int] = (0, 5)
    #: chance that a vehicle is a truck rather than a car
    truck_probability: float = 0.3
    tank_cluster_probability: float = 0.3
    tanks_per_cluster: tuple[int, int] = (2, 5)
    #: chance that a building has a pool beside it
    pool_probability: float = 0.2
    #: boats per tile, only drawn on tiles that have open water
    boats: tuple[int, int] = (0, 3)
    #: water colour ranges from clear (0) to this much towards muddy flood water (1)
    muddy_water: float = 0.25

    def __post_init__(self) -> None:
        weights = self.land_cover_weights
        if len(weights) != len(LAND_COVERS) or min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(
                f"scene statistics: land_cover_weights needs {len(LAND_COVERS)} non-negative weights "
                f"with a positive sum, got {weights}"
            )
        if self.regions[0] < 1:
            raise ConfigError(f"scene statistics: regions needs at least 1 region, got {self.regions}")
        for name in ("regions", "roads", "buildings", "vehicles_per_road", "tanks_per_cluster", "boats"):
            _inclusive_range(getattr(self, name), name)
        for name in ("truck_probability", "tank_cluster_probability", "pool_probability", "muddy_water"):
            _probability(getattr(self, name), name)


@dataclass(frozen=True, eq=False)
class ToylandSplit:
    """One split: the scenes it draws and how its annotation names their elements.

    `class_names` are the evaluator's classes (mask values index them); the first
    `num_queries` of them form the vocabulary offered to a model, so prediction channel i is
    class i. `labels` names each scene element's class, or None for "not annotated", which
    becomes `ignore_index`.
    """

    name: str
    #: fixed per split (never its position in TOYLAND_SPLITS) so adding splits changes no tile
    stream_id: int
    description: str
    class_names: tuple[str, ...]
    num_queries: int
    ignore_index: int
    labels: Mapping[SceneElement, str | None]
    scene: SceneStatistics = field(default_factory=SceneStatistics)
    default_num_images: int = 48
    #: fraction of tiles annotated like SAMRS: only OBJECT_ELEMENTS keep their labels
    objects_only_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.num_queries <= len(self.class_names):
            raise ConfigError(
                f"toyland split {self.name!r}: num_queries {self.num_queries} is outside 1..{len(self.class_names)}"
            )
        missing = [element.name for element in SceneElement if element not in self.labels]
        if missing:
            raise ConfigError(f"toyland split {self.name!r}: no label for scene element(s) {missing}")
        unknown = sorted({n for n in self.labels.values() if n is not None} - set(self.class_names))
        if unknown:
            raise ConfigError(f"toyland split {self.name!r}: label(s) {unknown} are not in its class_names")
        if not 0 <= self.ignore_index <= 255:
            raise ConfigError(f"toyland split {self.name!r}: ignore_index {self.ignore_index} is outside 0..255")
        if not 0.0 <= self.objects_only_fraction <= 1.0:
            raise ConfigError(
                f"toyland split {self.name!r}: objects_only_fraction must be in [0, 1], got {self.objects_only_fraction}"
            )
        # Freeze the mapping so a shared split definition cannot be edited through one dataset.
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    @property
    def vocabulary(self) -> Vocabulary:
        """The text queries: the first `num_queries` evaluator classes."""
        return Vocabulary(self.class_names[: self.num_queries])

    def label_lookup(self) -> np.ndarray:
        """int64 table: scene element value -> mask value (class id or ignore_index)."""
        lookup = np.empty(len(SceneElement), dtype=np.int64)
        for element, class_name in self.labels.items():
            lookup[element] = self.ignore_index if class_name is None else self.class_names.index(class_name)
        lookup.flags.writeable = False
        return lookup


# ----------------------------------------------------------------------------------------------
# Split definitions
# ----------------------------------------------------------------------------------------------

_E = SceneElement

_TRAIN = ToylandSplit(
    name="toyland-train",
    stream_id=1,
    description="LandDiscover50K-like training split; background (id 0) is queried but ignored",
    class_names=("background", "water", "forest", "farmland", "bare soil", "grass", "road", "building", "vehicle"),
    num_queries=9,
    ignore_index=0,
    labels={
        _E.WATER: "water",
        _E.FOREST: "forest",
        _E.FARMLAND: "farmland",
        _E.BARE_SOIL: "bare soil",
        _E.GRASS: "grass",
        _E.ROAD: "road",
        _E.BUILDING: "building",
        _E.CAR: "vehicle",
        _E.TRUCK: "vehicle",
        # Not in the training vocabulary: seen in the images, annotated as (ignored) background.
        _E.STORAGE_TANK: "background",
        _E.POOL: "background",
        _E.BOAT: "background",
    },
    scene=SceneStatistics(),
    default_num_images=256,
    objects_only_fraction=0.15,
)

_URBAN = ToylandSplit(
    name="toyland-urban",
    stream_id=2,
    description="Potsdam-like: renamed classes, unqueried catch-all 'clutter' is the ignore index",
    class_names=("impervious surface", "building", "low vegetation", "tree", "car", "clutter"),
    num_queries=5,
    ignore_index=5,
    labels={
        _E.ROAD: "impervious surface",
        _E.BUILDING: "building",
        _E.GRASS: "low vegetation",
        _E.FOREST: "tree",
        # Potsdam's "car" covers every road vehicle.
        _E.CAR: "car",
        _E.TRUCK: "car",
        _E.WATER: "clutter",
        _E.FARMLAND: "clutter",
        _E.BARE_SOIL: "clutter",
        _E.STORAGE_TANK: "clutter",
        _E.POOL: "clutter",
        _E.BOAT: "clutter",
    },
    scene=SceneStatistics(
        land_cover_weights=(0.04, 0.3, 0.08, 0.1, 0.48),
        roads=(1, 3),
        buildings=(7, 14),
        vehicles_per_road=(2, 7),
        truck_probability=0.15,
        tank_cluster_probability=0.1,
        pool_probability=0.15,
        boats=(0, 1),
    ),
)

_FLOOD = ToylandSplit(
    name="toyland-flood",
    stream_id=3,
    description="FloodNet-like: background queried but ignored, adds 'pool' (absent from training)",
    class_names=("background", "building", "road", "water", "tree", "vehicle", "pool", "grass"),
    num_queries=8,
    ignore_index=0,
    labels={
        _E.BUILDING: "building",
        _E.ROAD: "road",
        _E.WATER: "water",
        _E.FOREST: "tree",
        _E.CAR: "vehicle",
        _E.TRUCK: "vehicle",
        _E.POOL: "pool",
        _E.GRASS: "grass",
        _E.FARMLAND: "background",
        _E.BARE_SOIL: "background",
        _E.STORAGE_TANK: "background",
        _E.BOAT: "background",
    },
    scene=SceneStatistics(
        land_cover_weights=(0.35, 0.2, 0.08, 0.07, 0.3),
        roads=(1, 2),
        buildings=(3, 9),
        vehicles_per_road=(0, 4),
        pool_probability=0.5,
        tank_cluster_probability=0.1,
        muddy_water=0.6,
    ),
)

_OBJECTS = ToylandSplit(
    name="toyland-objects",
    stream_id=4,
    description="FAST-like: fine-grained and novel objects only; everything else is 255",
    class_names=("storage tank", "car", "truck", "ship"),
    num_queries=4,
    ignore_index=255,
    labels={
        _E.STORAGE_TANK: "storage tank",
        _E.CAR: "car",
        _E.TRUCK: "truck",
        _E.BOAT: "ship",
        _E.WATER: None,
        _E.FOREST: None,
        _E.FARMLAND: None,
        _E.BARE_SOIL: None,
        _E.GRASS: None,
        _E.ROAD: None,
        _E.BUILDING: None,
        _E.POOL: None,
    },
    scene=SceneStatistics(
        land_cover_weights=(0.25, 0.15, 0.15, 0.25, 0.2),
        roads=(1, 3),
        buildings=(1, 5),
        vehicles_per_road=(2, 7),
        truck_probability=0.4,
        tank_cluster_probability=0.85,
        tanks_per_cluster=(3, 6),
        pool_probability=0.1,
        boats=(1, 4),
    ),
)

#: split name -> definition; the training split first, then the evaluation splits.
TOYLAND_SPLITS: dict[str, ToylandSplit] = {s.name: s for s in (_TRAIN, _URBAN, _FLOOD, _OBJECTS)}
TOYLAND_TRAIN_SPLIT = "toyland-train"
TOYLAND_EVAL_SPLITS: tuple[str, ...] = ("toyland-urban", "toyland-flood", "toyland-objects")


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

# Base colours (RGB). They are jittered per image and per region, and textured, so that
# colour alone separates classes only roughly.
_LAND_COLOURS = np.array(
    [
        (38, 64, 84),  # water (clear)
        (50, 82, 44),  # forest
        (0, 0, 0),  # farmland: from _CROP_COLOURS instead
        (166, 138, 104),  # bare soil
        (110, 146, 80),  # grass
    ],
    dtype=np.float32,
)
_MUDDY_WATER = np.array((112, 98, 72), dtype=np.float32)
# Pairs of stripe colours: ripe cereal, green crop, ploughed soil.
_CROP_COLOURS = np.array(
    [
        [(168, 160, 96), (138, 128, 74)],
        [(104, 142, 68), (80, 116, 52)],
        [(140, 112, 84), (110, 86, 64)],
    ],
    dtype=np.float32,
)
_ASPHALT = np.array((116, 116, 114), dtype=np.float32)
_ROAD_MARKING = np.array((224, 224, 214), dtype=np.float32)
_ROOF_COLOURS = np.array(
    [(172, 82, 62), (150, 150, 156), (206, 200, 190), (84, 84, 90), (126, 104, 92)], dtype=np.float32
)
_VEHICLE_COLOURS = np.array(
    [(232, 232, 232), (30, 30, 34), (176, 36, 36), (40, 62, 150), (168, 170, 176), (64, 66, 70)],
    dtype=np.float32,
)
_TRAILER_COLOURS = np.array([(214, 214, 210), (180, 184, 188), (150, 60, 40)], dtype=np.float32)
_TANK_COLOUR = np.array((214, 214, 208), dtype=np.float32)
_POOL_COLOUR = np.array((64, 176, 206), dtype=np.float32)
_POOL_COPING = np.array((204, 202, 192), dtype=np.float32)
_BOAT_COLOUR = np.array((230, 230, 224), dtype=np.float32)

_SHADOW_DARKENING = 0.55


def _element_table(*elements: SceneElement) -> np.ndarray:
    """Boolean table indexed by element value; `table[values].any()` is a fast `np.isin`."""
    table = np.zeros(len(SceneElement), dtype=bool)
    table[[int(e) for e in elements]] = True
    table.flags.writeable = False
    return table


# What each kind of object may not be placed over.
_BLOCKS_BUILDING = _element_table(_E.ROAD, _E.BUILDING, _E.WATER)
_BLOCKS_GROUND_OBJECT = _element_table(_E.ROAD, _E.BUILDING, _E.STORAGE_TANK, _E.POOL, _E.CAR, _E.TRUCK, _E.WATER)
_BLOCKS_VEHICLE = _element_table(_E.BUILDING, _E.CAR, _E.TRUCK, _E.STORAGE_TANK, _E.POOL)
# What a shadow leaves lit: the tops of things at least as tall as whatever casts it.
_ABOVE_BUILDING_SHADOW = _element_table(_E.BUILDING)
_ABOVE_TANK_SHADOW = _element_table(_E.BUILDING, _E.STORAGE_TANK)
_ABOVE_VEHICLE_SHADOW = _element_table(_E.BUILDING, _E.STORAGE_TANK, _E.CAR, _E.TRUCK)
_OBJECT_TABLE = _element_table(*OBJECT_ELEMENTS)


@lru_cache(maxsize=32)
def _interpolation_weights(size: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of `size` pixels: its left lattice index and the (1-t, t) smoothstep weights."""
    position = (np.arange(size, dtype=np.float64) + 0.5) / size * cells
    left = np.minimum(np.floor(position).astype(np.intp), cells - 1)
    frac = position - left
    frac = frac * frac * (3.0 - 2.0 * frac)  # smoothstep: no visible creases at lattice lines
    right_weight = frac.astype(np.float32)
    left_weight = (1.0 - frac).astype(np.float32)
    for array in (left, left_weight, right_weight):
        array.flags.writeable = False
    return left, left_weight, right_weight


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """float32 value noise with about `cells` blobs across the tile; zero mean, scale ~1.

    Separable interpolation by gathers rather than a matrix product: BLAS spawns threads
    for these tiny products (very slow on a busy machine) and its sums may round
    differently between CPUs, whereas elementwise arithmetic gives the same bytes anywhere.
    """
    cells = max(int(cells), 1)
    left, left_weight, right_weight = _interpolation_weights(size, cells)
    lattice = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    rows = lattice[left] * left_weight[:, None] + lattice[left + 1] * right_weight[:, None]
    return rows[:, left] * left_weight[None, :] + rows[:, left + 1] * right_weight[None, :]


@dataclass
class _Window:
    """A clipped box of the tile around a shape, with pixel-centre offsets from the shape's centre."""

    rows: slice
    cols: slice
    dy: np.ndarray  # float32 (h, 1)
    dx: np.ndarray  # float32 (1, w)


def _window(cy: float, cx: float, radius: float, size: int) -> _Window | None:
    """The part of the tile within `radius` of (cy, cx), or None when that is off the tile."""
    y0, y1 = max(math.floor(cy - radius), 0), min(math.ceil(cy + radius) + 1, size)
    x0, x1 = max(math.floor(cx - radius), 0), min(math.ceil(cx + radius) + 1, size)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - cy)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - cx)
    return _Window(slice(y0, y1), slice(x0, x1), dy, dx)


def _box_coordinates(dy: np.ndarray, dx: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets rotated into a shape's frame: u along its length, v across it."""
    cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    return dx * cos + dy * sin, dy * cos - dx * sin


#: A shape tests pixel offsets (dy, dx) from its centre and returns the pixels inside it.
Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _rectangle(half_length: float, half_width: float, angle: float) -> Shape:
    def inside(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        u, v = _box_coordinates(dy, dx, angle)
        return (np.abs(u) < half_length) & (np.abs(v) < half_width)

    return inside


def _ellipse(half_length: float, half_width: float, angle: float) -> Shape:
    def inside(dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        u, v = _box_coordinates(dy, dx, angle)
        return (u / half_length) ** 2 + (v / half_width) ** 2 < 1.0

    return inside


class _Scene:
    """The tile being painted: float32 RGB image plus the element under every pixel.

    Every random draw goes through `self.rng` in a fixed order, so a tile is a pure function
    of its generator's seed. Scalars are kept as Python floats: NumPy float64 scalars would
    silently promote the float32 pixel arithmetic to float64 (twice the work).
    """

    def __init__(self, rng: np.random.Generator, scene: SceneStatistics, size: int):
        self.rng = rng
        self.stats = scene
        self.size = size
        self.scale = size / 128.0
        self.coords = np.arange(size, dtype=np.float32) + np.float32(0.5)  # pixel centres
        self.image = np.zeros((size, size, 3), dtype=np.float32)
        self.elements = np.zeros((size, size), dtype=np.uint8)
        # Man-made structures share one orientation, as in planned settlements.
        self.grid_angle = self.uniform(0.0, math.pi / 2)
        sun_azimuth = self.uniform(0.0, 2 * math.pi)
        sun_length = self.uniform(2.0, 4.0) * self.scale
        self.shadow_offset = (math.sin(sun_azimuth) * sun_length, math.cos(sun_azimuth) * sun_length)
        self.roads: list[tuple[float, float, float, float]] = []  # (py, px, angle, width)
        self.buildings: list[tuple[float, float, float, float, float]] = []  # (cy, cx, hl, hw, angle)

    # -- random draws as plain Python values -----------------------------------------------

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))

    def count(self, value: tuple[int, int]) -> int:
        return int(self.rng.integers(value[0], value[1] + 1))

    def chance(self, probability: float) -> bool:
        return bool(self.rng.random() < probability)

    def pick(self, palette: np.ndarray, jitter: float) -> np.ndarray:
        """One palette colour, jittered so no two objects match exactly."""
        colour = palette[int(self.rng.integers(0, len(palette)))]
        return colour + self.rng.normal(0.0, jitter, size=3).astype(np.float32)

    def grid_direction(self, wobble: float) -> float:
        """An angle along or across the settlement grid, give or take `wobble` radians."""
        return self.grid_angle + int(self.rng.integers(0, 2)) * math.pi / 2 + float(self.rng.normal(0.0, wobble))

    # -- land cover --------------------------------------------------------------------------

    def paint_land_cover(self) -> None:
        rng, size, scale, coords = self.rng, self.size, self.scale, self.coords
        n_regions = self.count(self.stats.regions)
        weights = np.asarray(self.stats.land_cover_weights, dtype=np.float64)
        region_cover = rng.choice(len(LAND_COVERS), size=n_regions, p=weights / weights.sum())
        centres = rng.uniform(0.0, size, size=(n_regions, 2)).astype(np.float32)

        # Voronoi cells over warped coordinates give irregular, natural-looking boundaries.
        warp = np.float32(0.1 * size)
        wy = coords[:, None] + warp * _smooth_noise(rng, size, 3)
        wx = coords[None, :] + warp * _smooth_noise(rng, size, 3)
        region = np.zeros((size, size), dtype=np.intp)
        nearest = (wy - centres[0, 0]) ** 2 + (wx - centres[0, 1]) ** 2
        for k in range(1, n_regions):
            distance = (wy - centres[k, 0]) ** 2 + (wx - centres[k, 1]) ** 2
            closer = distance < nearest
            region[closer] = k
            np.minimum(nearest, distance, out=nearest)
        cover = region_cover[region]  # index into LAND_COVERS
        self.elements[:] = np.asarray(LAND_COVERS, dtype=np.uint8)[cover]

        # Colour per region: the class colour, jittered per image and again per region.
        palette = _LAND_COLOURS + rng.normal(0.0, 6.0, size=_LAND_COLOURS.shape).astype(np.float32)
        muddiness = np.float32(self.uniform(0.0, self.stats.muddy_water))
        palette[0] = (1 - muddiness) * palette[0] + muddiness * _MUDDY_WATER
        colour_a = palette[region_cover] + rng.normal(0.0, 7.0, size=(n_regions, 3)).astype(np.float32)
        colour_b = colour_a.copy()

        # Farmland regions: two stripe colours, their own orientation and row spacing.
        is_farm = region_cover == LAND_COVERS.index(_E.FARMLAND)
        crops = _CROP_COLOURS[rng.integers(0, len(_CROP_COLOURS), size=n_regions)]
        crop_jitter = rng.normal(0.0, 6.0, size=(n_regions, 3)).astype(np.float32)
        colour_a[is_farm] = crops[is_farm, 0] + crop_jitter[is_farm]
        colour_b[is_farm] = crops[is_farm, 1] + crop_jitter[is_farm]
        on_grid = rng.random(n_regions) < 0.6
        grid_turn = rng.integers(0, 2, n_regions) * (np.pi / 2)
        stripe_angle = np.where(on_grid, self.grid_angle + grid_turn, rng.uniform(0.0, np.pi, n_regions))
        stripe_period = rng.uniform(3.5, 7.0, n_regions) * scale
        stripe_phase = rng.uniform(0.0, 2 * np.pi, n_regions)
        self.image[:] = colour_a[region]
        if is_farm.any():
            # Per-region wave parameters, folded so one sin() call serves every region.
            frequency = 2 * np.pi / stripe_period
            fx = (np.cos(stripe_angle) * frequency).astype(np.float32)[region]
            fy = (np.sin(stripe_angle) * frequency).astype(np.float32)[region]
            wave = np.sin(coords[None, :] * fx + coords[:, None] * fy + stripe_phase.astype(np.float32)[region])
            stripes = np.clip(wave * 2, -1, 1) * np.float32(0.5) + np.float32(0.5)  # crisp rows, soft edges
            farm = is_farm[region]
            mix = stripes[farm][:, None]
            self.image[farm] = colour_a[region[farm]] * (1 - mix) + colour_b[region[farm]] * mix

        # Texture per class as a brightness factor; only for covers this tile has.
        shade = np.ones((size, size), dtype=np.float32)
        for index in np.unique(region_cover):
            element = LAND_COVERS[index]
            if element == _E.WATER:  # gentle gradients
                texture = 1 + 0.05 * _smooth_noise(rng, size, 4)
            elif element == _E.FOREST:  # tree crowns with dark gaps between them
                crowns = _smooth_noise(rng, size, max(size // 5, 4))
                texture = (1 + 0.22 * crowns) * np.where(crowns < -0.9, np.float32(0.6), np.float32(1.0))
            elif element == _E.FARMLAND:  # the stripes carry most of its texture
                texture = 1 + 0.04 * _smooth_noise(rng, size, 6)
            elif element == _E.BARE_SOIL:  # grainy
                texture = 1 + 0.07 * _smooth_noise(rng, size, max(size // 3, 4)) + 0.05 * _smooth_noise(rng, size, 5)
            else:  # grass: mottled
                texture = 1 + 0.06 * _smooth_noise(rng, size, 8)
            here = cover == index
            shade[here] = texture[here]
        self.image *= shade[..., None]

    # -- roads ---------------------------------------------------------------------------------

    def paint_roads(self) -> None:
        size, scale, coords = self.size, self.scale, self.coords
        for _ in range(self.count(self.stats.roads)):
            # Mostly on the settlement grid, sometimes a diagonal.
            angle = self.grid_direction(0.03) if self.chance(0.75) else self.uniform(0.0, math.pi)
            py, px = self.uniform(0.2 * size, 0.8 * size), self.uniform(0.2 * size, 0.8 * size)
            width = self.uniform(4.0, 7.5) * scale
            cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
            ys, xs = coords[:, None] - np.float32(py), coords[None, :] - np.float32(px)
            across = np.abs(ys * cos - xs * sin)
            on_road = across < width / 2
            self.elements[on_road] = _E.ROAD
            self.image[on_road] = self.pick(_ASPHALT[None], 8.0)
            # A dashed centre line on the wider roads; still labelled road.
            if width > 5.0 * scale:
                dash = 8.0 * scale
                along = xs * cos + ys * sin
                marking = (across < 0.5 * scale) & (np.mod(along, dash) < dash / 2)
                self.image[marking] = _ROAD_MARKING
            self.roads.append((py, px, angle, width))

    # -- placing shapes --------------------------------------------------------------------------

    def _fits(self, window: _Window, footprint: np.ndarray, blocked_by: np.ndarray) -> bool:
        """Whether `footprint` covers some pixel of the tile and none of the `blocked_by` elements."""
        under = self.elements[window.rows, window.cols][footprint]
        return under.size > 0 and not blocked_by[under].any()

    def _cast_shadow(self, window: _Window, shape: Shape, inside: np.ndarray, lit: np.ndarray) -> None:
        """Darken the ground where `shape`, moved away from the sun, falls outside itself."""
        sy, sx = self.shadow_offset
        shadow = shape(window.dy - np.float32(sy), window.dx - np.float32(sx)) & ~inside
        shadow &= ~lit[self.elements[window.rows, window.cols]]
        self.image[window.rows, window.cols][shadow] *= np.float32(_SHADOW_DARKENING)

    def _shadowed_window(self, cy: float, cx: float, extent: float) -> _Window | None:
        return _window(cy, cx, extent + math.hypot(*self.shadow_offset) + 1.0, self.size)

    def _paint(self, window: _Window, inside: np.ndarray, colours: np.ndarray, element: SceneElement) -> None:
        """Colour the pixels `inside` (colours: (3,) or one row per pixel) and label them."""
        self.image[window.rows, window.cols][inside] = colours
        self.elements[window.rows, window.cols][inside] = element

    # -- buildings -----------------------------------------------------------------------------

    def paint_buildings(self) -> None:
        size, scale = self.size, self.scale
        wanted = self.count(self.stats.buildings)
        margin = 2.0 * scale
        for _ in range(wanted * 6):  # rejection sampling: crowded tiles simply get fewer
            if len(self.buildings) >= wanted:
                break
            cy, cx = self.uniform(0.0, size), self.uniform(0.0, size)
            half_length = self.uniform(4.0, 10.0) * scale
            half_width = self.uniform(3.0, min(7.0, half_length / scale)) * scale
            angle = self.grid_direction(0.04)
            if _BLOCKS_BUILDING[self.elements[int(cy), int(cx)]]:  # cheap early rejection
                continue
            window = self._shadowed_window(cy, cx, math.hypot(half_length, half_width) + margin)
            if window is None:
                continue
            keep_clear = _rectangle(half_length + margin, half_width + margin, angle)(window.dy, window.dx)
            if not self._fits(window, keep_clear, _BLOCKS_BUILDING):
                continue
            shape = _rectangle(half_length, half_width, angle)
            inside = shape(window.dy, window.dx)
            if inside.sum() < 6 * scale * scale:  # almost entirely off the tile
                continue
            self._cast_shadow(window, shape, inside, _ABOVE_BUILDING_SHADOW)
            self._paint_roof(window, inside, half_width, angle)
            self.buildings.append((cy, cx, half_length, half_width, angle))

    def _paint_roof(self, window: _Window, inside: np.ndarray, half_width: float, angle: float) -> None:
        colour = self.pick(_ROOF_COLOURS, 8.0)
        _, v = _box_coordinates(window.dy, window.dx, angle)
        if self.chance(0.55):
            shade = np.where(v > 0, np.float32(0.82), np.float32(1.0))  # gabled: two faces, two lights
        else:
            shade = np.where(np.abs(v) > half_width - 1.2 * self.scale, np.float32(0.88), np.float32(1.0))  # parapet
        self._paint(window, inside, colour * shade[inside][:, None], _E.BUILDING)

    # -- pools ---------------------------------------------------------------------------------

    def paint_pools(self) -> None:
        scale = self.scale
        for cy, cx, half_length, half_width, angle in self.buildings:
            if not self.chance(self.stats.pool_probability):
                continue
            pool_length = self.uniform(2.5, 4.5) * scale
            pool_width = self.uniform(1.8, 3.0) * scale
            side = 1.0 if self.chance(0.5) else -1.0
            gap = half_width + pool_width + self.uniform(2.0, 4.0) * scale
            slide = self.uniform(-0.5, 0.5) * half_length
            cos, sin = math.cos(angle), math.sin(angle)
            py = cy + side * gap * cos + slide * sin
            px = cx - side * gap * sin + slide * cos
            window = _window(py, px, math.hypot(pool_length, pool_width) + 2.0 * scale, self.size)
            if window is None:
                continue
            inside = _rectangle(pool_length, pool_width, angle)(window.dy, window.dx)
            coping = _rectangle(pool_length + scale, pool_width + scale, angle)(window.dy, window.dx)
            if not inside.any() or not self._fits(window, coping, _BLOCKS_GROUND_OBJECT):
                continue
            # The concrete edge is painted but keeps the ground's label, as annotators draw it.
            self.image[window.rows, window.cols][coping & ~inside] = _POOL_COPING
            self._paint(window, inside, self.pick(_POOL_COLOUR[None], 6.0), _E.POOL)

    # -- storage tanks -------------------------------------------------------------------------

    def paint_storage_tanks(self) -> None:
        size, scale = self.size, self.scale
        if not self.chance(self.stats.tank_cluster_probability):
            return
        radius = self.uniform(3.0, 5.5) * scale
        n_tanks = self.count(self.stats.tanks_per_cluster)
        columns = int(self.rng.integers(1, 4))
        spacing = 2.0 * radius + self.uniform(1.5, 3.5) * scale
        cy, cx = self.uniform(0.15 * size, 0.85 * size), self.uniform(0.15 * size, 0.85 * size)
        cos, sin = math.cos(self.grid_angle), math.sin(self.grid_angle)
        shape = _ellipse(radius, radius, 0.0)
        for i in range(n_tanks):
            along, across = (i // columns) * spacing, (i % columns) * spacing
            window = self._shadowed_window(cy + along * sin + across * cos, cx + along * cos - across * sin, radius)
            if window is None:
                continue
            inside = shape(window.dy, window.dx)
            if not self._fits(window, inside, _BLOCKS_GROUND_OBJECT):
                continue
            self._cast_shadow(window, shape, inside, _ABOVE_TANK_SHADOW)
            # Lit dome with a floating-roof ring: round and bright, unlike any roof.
            r = np.sqrt(window.dy**2 + window.dx**2) / np.float32(radius)
            shade = 1 - np.float32(0.18) * r**2 - np.float32(0.2) * (np.abs(r - np.float32(0.72)) < 0.08)
            self._paint(window, inside, self.pick(_TANK_COLOUR[None], 5.0) * shade[inside][:, None], _E.STORAGE_TANK)

    # -- vehicles ------------------------------------------------------------------------------

    def paint_vehicles(self) -> None:
        size, scale = self.size, self.scale
        for py, px, angle, width in self.roads:
            cos, sin = math.cos(angle), math.sin(angle)
            for _ in range(self.count(self.stats.vehicles_per_road)):
                is_truck = self.chance(self.stats.truck_probability)
                half_length = (self.uniform(4.5, 6.5) if is_truck else self.uniform(2.4, 3.2)) * scale
                half_width = (self.uniform(1.6, 2.1) if is_truck else self.uniform(1.2, 1.6)) * scale
                along = self.uniform(-0.75, 0.75) * size
                lane = (width / 4.0) * (1.0 if self.chance(0.5) else -1.0)
                vy = py + along * sin + lane * cos
                vx = px + along * cos - lane * sin
                if not (0.0 <= vy < size and 0.0 <= vx < size):
                    continue
                heading = angle + (math.pi if lane < 0 else 0.0)  # each lane drives its own way
                window = self._shadowed_window(vy, vx, half_length)
                if window is None:
                    continue
                shape = _rectangle(half_length, half_width, heading)
                inside = shape(window.dy, window.dx)
                if not self._fits(window, inside, _BLOCKS_VEHICLE):
                    continue
                self._cast_shadow(window, shape, inside, _ABOVE_VEHICLE_SHADOW)
                u, _ = _box_coordinates(window.dy, window.dx, heading)
                u = np.broadcast_to(u, inside.shape)[inside]
                body = self.pick(_VEHICLE_COLOURS, 6.0)
                if is_truck:
                    # Coloured cab at the front, long pale trailer behind it.
                    trailer = self.pick(_TRAILER_COLOURS, 6.0)
                    colours = np.where((u > half_length - 2.2 * scale)[:, None], body, trailer)
                else:
                    # Darker windscreen band a little ahead of the centre.
                    glass = (u > 0.25 * half_length) & (u < 0.6 * half_length)
                    colours = np.where(glass[:, None], body * np.float32(0.45), body)
                self._paint(window, inside, colours, _E.TRUCK if is_truck else _E.CAR)

    # -- boats ---------------------------------------------------------------------------------

    def paint_boats(self) -> None:
        scale = self.scale
        water = np.flatnonzero(self.elements == _E.WATER)
        if water.size == 0:
            return
        for _ in range(self.count(self.stats.boats)):
            spot = int(water[self.rng.integers(0, water.size)])
            by, bx = spot // self.size + 0.5, spot % self.size + 0.5
            half_length = self.uniform(3.0, 6.0) * scale
            angle = self.uniform(0.0, math.pi)
            window = _window(by, bx, half_length + 1.0, self.size)
            if window is None:
                continue
            inside = _ellipse(half_length, 0.38 * half_length, angle)(window.dy, window.dx)
            under = self.elements[window.rows, window.cols][inside]
            if under.size == 0 or not np.all(under == _E.WATER):  # boats float on open water only
                continue
            u, _ = _box_coordinates(window.dy, window.dx, angle)
            deck = np.where(np.abs(u) < 0.3 * half_length, np.float32(0.8), np.float32(1.0))  # cabin amidships
            self._paint(window, inside, _BOAT_COLOUR * np.broadcast_to(deck, inside.shape)[inside][:, None], _E.BOAT)

    # -- camera --------------------------------------------------------------------------------

    def finish(self) -> np.ndarray:
        """Uneven light, exposure, colour cast and sensor noise; returns uint8 RGB."""
        rng, size = self.rng, self.size
        light = (1 + 0.07 * _smooth_noise(rng, size, 2)) * np.float32(self.uniform(0.88, 1.12))
        cast = rng.normal(0.0, 4.0, size=3).astype(np.float32)
        noise = rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(5.0)
        image = self.image * light[..., None] + (cast + np.float32(0.5)) + noise
        return np.clip(image, 0, 255).astype(np.uint8)


def render_toyland_scene(
    rng: np.random.Generator, scene: SceneStatistics | None = None, size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one aerial tile from `rng`.

    Returns `(image, elements)`: uint8 (size, size, 3) RGB and uint8 (size, size)
    `SceneElement` values, exact for every pixel (shadows and road markings keep the label of
    what they fall on). The layers are painted back to front: land cover, roads, buildings with
    shadows, pools, storage tanks, vehicles, boats.
    """
    if size < MIN_TILE_SIZE:
        raise ConfigError(f"toyland tile size must be at least {MIN_TILE_SIZE} pixels, got {size}")
    canvas = _Scene(rng, scene or SceneStatistics(), size)
    canvas.paint_land_cover()
    canvas.paint_roads()
    canvas.paint_buildings()
    canvas.paint_pools()
    canvas.paint_storage_tanks()
    canvas.paint_vehicles()
    canvas.paint_boats()
    return canvas.finish(), canvas.elements


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------


def _check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"toyland {what} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"toyland {what} must be at least {minimum}, got {value}")
    return int(value)


class ToylandDataset:
    """One toyland split as a `SegmentationDataset`; tiles are generated on access.

    Args:
        split: a key of `TOYLAND_SPLITS`, e.g. "toyland-train" or "toyland-urban".
        seed: the benchmark seed; the same seed gives the same bytes, another seed other tiles.
        num_images: how many tiles (default: the split's, 256 for training, 48 for evaluation).
        size: tile height and width in pixels; scene features scale with it.
    """

    def __init__(self, split: str, seed: int = 0, num_images: int | None = None, size: int = 128):
        if split not in TOYLAND_SPLITS:
            raise unknown_name_error("toyland split", str(split), TOYLAND_SPLITS)
        self.split: ToylandSplit = TOYLAND_SPLITS[split]
        self.seed = _check_int(seed, "seed", 0)
        self.size = _check_int(size, "size", MIN_TILE_SIZE)
        self.num_images = (
            self.split.default_num_images if num_images is None else _check_int(num_images, "num_images", 1)
        )
        self.name: str = self.split.name
        self.vocabulary: Vocabulary = self.split.vocabulary
        self.class_names: list[str] = list(self.split.class_names)
        self.ignore_index: int = self.split.ignore_index
        self._label_lookup = self.split.label_lookup()

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Sample:
        position = operator.index(index)  # TypeError for floats, strings, ...
        if position < 0:
            position += self.num_images
        if not 0 <= position < self.num_images:
            raise IndexError(f"{self.name} has {self.num_images} images; index {index} is out of range")
        image, elements = self.render(position)
        mask = self._label_lookup[elements]
        if self.is_objects_only(position):
            mask[~_OBJECT_TABLE[elements]] = self.ignore_index
        return {"image": image, "mask": mask, "name": f"{self.name}/{position:05d}"}

    def __iter__(self) -> Iterator[Sample]:
        for position in range(self.num_images):
            yield self[position]

    def render(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """The tile at `position` as (uint8 RGB image, uint8 `SceneElement` map), unlabelled."""
        rng = np.random.default_rng([self.seed, self.split.stream_id, position])
        return render_toyland_scene(rng, self.split.scene, self.size)

    def is_objects_only(self, position: int) -> bool:
        """Whether tile `position` is annotated for objects only (SAMRS-style), the rest ignored."""
        if self.split.objects_only_fraction <= 0.0:
            return False
        # Its own stream, so that which tiles are objects-only leaves the images untouched.
        rng = np.random.default_rng([self.seed, self.split.stream_id, position, 1])
        return bool(rng.random() < self.split.objects_only_fraction)

    def __repr__(self) -> str:
        return (
            f"ToylandDataset({self.name!r}, seed={self.seed}, num_images={self.num_images}, size={self.size})"
        )
