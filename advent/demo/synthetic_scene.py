"""Procedural street scenes for the synthetic CPU demo: one label map and one image.

`render_scene(rng, size, style)` draws a street seen from a car: sky, a road running to a
vanishing point, sidewalks, terrain verges, building facades with windows and gaps of trees,
sidewalk trees, poles with traffic signs and lights, parked and moving cars, people, unlabelled
props and, optionally, the ego car's hood. It returns the Cityscapes LABEL ids (uint8 H x W)
and the RGB image (uint8 H x W x 3).

Geometry: a pinhole camera one unit (the camera height) above flat ground, horizon at row
`horizon`, vanishing point at column `vanish`. A ground point at depth z lies q = F / z rows
below the horizon (F = image height in pixels), so a world point (X lateral, Y height) at that
depth is drawn at column vanish + q X and row horizon + q (1 - Y): `q` (pixels per world unit
at a depth) is the only depth variable the painters need. Objects are painted far to near
(occlusion order). Facades are vertical planes parallel to the road.

A `DomainStyle` is everything that differs between domains: `Layout` (scene statistics:
camera, street widths, object counts and sizes) and `Look` (colours, textures, camera
effects). Every field is numeric, so `blend_styles(a, b, t)` interpolates two domains.
The source and target domains themselves are defined in advent.demo.synthetic.
"""
import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

# Cityscapes label ids (cityscapesscripts helpers/labels.py) used by the scenes.
UNLABELED, EGO_VEHICLE = 0, 1  # both map to the ignored train id 255
ROAD, SIDEWALK, BUILDING, POLE = 7, 8, 11, 17
TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 19, 20, 21, 22, 23
PERSON, CAR = 24, 26
SCENE_LABEL_IDS = (UNLABELED, EGO_VEHICLE, ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_LIGHT,
                   TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR)


@dataclass(frozen=True)
class Layout:
    """Scene statistics of a domain. Pairs are (low, high) of a uniform draw; world units are
    camera heights; counts are Poisson means per image."""
    horizon: tuple = (0.36, 0.46)  # horizon row, as a fraction of the image height
    vanish_jitter: float = 0.08  # std of the vanishing point column, fraction of the width
    camera_offset: tuple = (-0.5, 0.5)  # lateral camera position relative to the road centre
    road_half_width: tuple = (1.6, 2.4)
    sidewalk_width: tuple = (1.0, 1.6)
    verge_width: tuple = (0.0, 0.8)  # terrain between the sidewalk and the facades
    segment_length: tuple = (1.5, 5.0)  # facade segments (one building or one gap) along the street
    gap_prob: float = 0.3  # chance a facade segment is a gap filled with trees
    building_height: tuple = (2.5, 7.0)
    hedge_height: tuple = (1.0, 2.5)  # vegetation in the gaps
    trees: float = 2.5  # sidewalk trees
    poles: float = 3.0
    sign_prob: float = 0.6  # chance a pole carries a traffic sign
    light_prob: float = 0.25  # chance a pole carries a traffic light
    cars_moving: float = 1.5  # cars in the lanes
    cars_parked: float = 1.0  # cars parked along the curbs
    car_scale: tuple = (1.0, 1.2)
    people: float = 1.5
    person_scale: tuple = (0.95, 1.15)
    props: float = 0.6  # unlabelled boxes on the sidewalks (label id 0)
    far_depth: float = 40.0  # objects are placed at depths up to this
    ego_prob: float = 0.0  # chance the ego car's hood (label id 1) shows at the bottom
    ego_height: tuple = (0.07, 0.11)  # its height, fraction of the image height


@dataclass(frozen=True)
class Look:
    """Appearance of a domain. Colours are RGB in 0..255; palettes are drawn from per instance."""
    sky_top: tuple = (70, 130, 230)
    sky_horizon: tuple = (170, 205, 245)
    cloud_strength: float = 0.15
    road: tuple = (80, 80, 88)
    marking: tuple = (235, 235, 225)
    marking_strength: float = 0.9
    sidewalk: tuple = (175, 165, 155)
    tile_strength: float = 0.12
    terrain: tuple = (125, 165, 60)
    vegetation: tuple = (45, 130, 35)
    trunk: tuple = (90, 70, 50)
    buildings: tuple = ((190, 130, 95), (210, 190, 150), (160, 160, 170), (175, 95, 80))
    window: tuple = (50, 70, 100)
    window_strength: float = 0.8
    brick_strength: float = 0.05
    side_shading: float = 0.25  # one facade side darker than the other (low sun)
    pole: tuple = (120, 120, 125)
    signs: tuple = ((220, 190, 30), (200, 40, 40), (40, 80, 200))
    light: tuple = (35, 35, 35)
    cars: tuple = ((200, 30, 30), (30, 60, 180), (230, 230, 230), (30, 30, 30), (230, 190, 40))
    car_window: tuple = (40, 50, 65)
    shadow_strength: float = 0.45  # dark ground under cars (sunlight)
    clothes: tuple = ((200, 50, 50), (50, 90, 200), (240, 200, 60), (60, 160, 80), (40, 40, 40))
    skin: tuple = (220, 180, 150)
    prop: tuple = (150, 120, 90)
    ego: tuple = (35, 35, 40)
    colour_jitter: float = 20.0  # std of a per-image, per-class colour offset
    grain: dict = dataclasses.field(default_factory=dict)  # label id -> pixel noise std
    blotch: dict = dataclasses.field(default_factory=dict)  # label id -> smooth noise std
    brightness: tuple = (0.8, 1.2)
    cast: tuple = (1.0, 1.0, 1.0)  # per-channel gain (colour cast)
    cast_jitter: float = 0.1  # std of a per-image random per-channel gain (weather, time of day)
    saturation: float = 1.15
    contrast: float = 1.1
    gamma: float = 1.0
    vignette: float = 0.0
    blur: float = 0.0  # Gaussian sigma in pixels
    sensor_noise: float = 0.0  # Gaussian std per pixel and channel


@dataclass(frozen=True)
class DomainStyle:
    name: str
    layout: Layout
    look: Look


def _blend(a, b, t):
    if isinstance(a, dict):
        return {key: _blend(a[key], b[key], t) for key in a}
    if isinstance(a, tuple):
        return tuple(_blend(x, y, t) for x, y in zip(a, b, strict=True))
    return float(a + (b - a) * t)


def _blend_fields(a, b, t):
    return type(a)(**{f.name: _blend(getattr(a, f.name), getattr(b, f.name), t)
                      for f in dataclasses.fields(a)})


def blend_styles(a, b, t, name=None):
    """Every numeric parameter of style `a` moved a fraction `t` towards style `b` (0: a, 1: b)."""
    return DomainStyle(name or f"{a.name}->{b.name}@{t:g}", _blend_fields(a.layout, b.layout, t),
                       _blend_fields(a.look, b.look, t))


@dataclass(frozen=True)
class Street:
    """The camera and the street plan of one scene (see the module docstring for q)."""
    width: int
    height: int
    horizon: float
    vanish: float
    road: tuple  # (left, right) lateral road edges, world units, left < 0 < right
    sidewalk: float
    verge: float

    @property
    def focal(self):
        return float(self.height)

    def facade(self, side):
        """Lateral position of the facade plane on `side` (-1 left, +1 right)."""
        edge = self.road[0] if side < 0 else self.road[1]
        return edge + side * (self.sidewalk + self.verge)

    def curb(self, side):
        return self.road[0] if side < 0 else self.road[1]

    def q(self, z):
        return self.focal / z

    def column(self, x_world, q):
        return self.vanish + q * x_world

    def row(self, y_world, q):
        return self.horizon + q * (1.0 - y_world)


def uniform(rng, pair):
    return float(rng.uniform(pair[0], pair[1]))


def sample_street(rng, size, layout):
    width, height = size
    offset = uniform(rng, layout.camera_offset)
    half = uniform(rng, layout.road_half_width)
    return Street(width, height,
                  horizon=uniform(rng, layout.horizon) * height,
                  vanish=width * (0.5 + layout.vanish_jitter * float(rng.standard_normal())),
                  road=(-half - offset, half - offset),
                  sidewalk=uniform(rng, layout.sidewalk_width),
                  verge=uniform(rng, layout.verge_width))


def jittered(rng, colour, std):
    return np.asarray(colour, np.float32) + rng.normal(0.0, std, 3).astype(np.float32)


def pick(rng, palette):
    return palette[int(rng.integers(len(palette)))]


def smooth_noise(rng, shape, cell):
    """Zero-mean, unit-std noise that varies over about `cell` pixels."""
    height, width = shape
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


class Canvas:
    """The label map and the image being painted, with pixel-centre coordinates."""

    def __init__(self, street):
        shape = (street.height, street.width)
        self.street = street
        self.ids = np.full(shape, SKY, np.uint8)
        self.rgb = np.zeros(shape + (3,), np.float32)
        self.xs = np.arange(street.width, dtype=np.float32)[None, :] + 0.5
        self.ys = np.arange(street.height, dtype=np.float32)[:, None] + 0.5

    def paint(self, mask, label, colour):
        """Give the pixels of `mask` a label id and a colour: (3,) or a field that broadcasts to H x W x 3."""
        colour = np.asarray(colour, np.float32)
        mask = np.broadcast_to(mask, self.ids.shape)
        self.ids[mask] = label
        self.rgb[mask] = colour if colour.ndim == 1 else np.broadcast_to(colour, self.rgb.shape)[mask]

    def box(self, x0, x1, y0, y1):
        """Pixels whose centres fall in [x0, x1) x [y0, y1); a thinner box still covers one pixel."""
        x0, x1 = _at_least_one(x0, x1)
        y0, y1 = _at_least_one(y0, y1)
        return (self.xs >= x0) & (self.xs < x1) & (self.ys >= y0) & (self.ys < y1)

    def ellipse(self, cx, cy, rx, ry):
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        return ((self.xs - cx) / rx) ** 2 + ((self.ys - cy) / ry) ** 2 <= 1.0

    def world_box(self, x0, x1, y0, y1, q):
        """A rectangle facing the camera at the depth of q: lateral x0..x1, heights y0..y1."""
        street = self.street
        return self.box(street.column(x0, q), street.column(x1, q), street.row(y1, q), street.row(y0, q))

    def side_plane(self, x_world, z0, z1, y0, y1):
        """A vertical plane at lateral `x_world`, depths z0..z1, heights y0..y1 (a car's side)."""
        street = self.street
        with np.errstate(divide="ignore"):
            q = (self.xs - street.vanish) / x_world
        inside = (q > street.q(z1)) & (q <= street.q(z0))
        return inside & (self.ys >= street.row(y1, q)) & (self.ys < street.row(y0, q))


def _at_least_one(lo, hi):
    if hi - lo < 1.0:
        centre = 0.5 * (lo + hi)
        return centre - 0.5, centre + 0.5
    return lo, hi


def class_colours(rng, look):
    """This image's colour of each stuff class: the domain colour plus a per-image offset."""
    names = ("road", "marking", "sidewalk", "terrain", "vegetation", "trunk", "pole", "prop", "ego")
    return {name: jittered(rng, getattr(look, name), look.colour_jitter) for name in names}


def paint_sky(canvas, look, rng):
    street = canvas.street
    t = np.clip(canvas.ys / max(street.horizon, 1.0), 0.0, 1.0)[..., None]
    top, bottom = (jittered(rng, c, look.colour_jitter) for c in (look.sky_top, look.sky_horizon))
    gradient = top + (bottom - top) * t
    clouds = np.clip(smooth_noise(rng, canvas.ids.shape, 10), 0.0, None)[..., None]
    white = np.float32(235.0)
    sky = gradient + look.cloud_strength * clouds * (white - gradient)
    canvas.paint(np.ones_like(canvas.ids, bool), SKY, sky)


def ground_coordinates(canvas):
    """(lateral X, depth z, below-horizon mask) of every pixel taken as a ground point."""
    street = canvas.street
    q = canvas.ys - street.horizon
    below = np.broadcast_to(q > 0, canvas.ids.shape)
    q = np.maximum(q, 1e-3)
    return (canvas.xs - street.vanish) / q, np.broadcast_to(street.focal / q, canvas.ids.shape), below


def paint_ground(canvas, look, colours, ground):
    """Terrain everywhere below the horizon, then sidewalks (tiled) and the road (marked)."""
    street, (gx, gz, below) = canvas.street, ground
    (left, right), walk = street.road, street.sidewalk
    canvas.paint(below, TERRAIN, colours["terrain"])
    tiles = (np.mod(gx, 0.6) < 0.08) | (np.mod(gz, 0.6) < 0.08)
    pavement = colours["sidewalk"] * np.where(tiles, 1.0 - look.tile_strength, 1.0)[..., None]
    canvas.paint(below & (gx > left - walk) & (gx < right + walk), SIDEWALK, pavement)
    centre = 0.5 * (left + right)
    dashes = (np.abs(gx - centre) < 0.06) & (np.mod(gz, 3.0) < 1.5)
    edges = (np.abs(gx - left - 0.2) < 0.05) | (np.abs(gx - right + 0.2) < 0.05)
    mix = look.marking_strength * (dashes | edges)[..., None]
    road = colours["road"] + mix * (colours["marking"] - colours["road"])
    canvas.paint(below & (gx > left) & (gx < right), ROAD, road)


def sample_segments(rng, layout, look, far):
    """Facade segments along one side: (end depths, is-gap flags, heights, colours)."""
    ends, gaps, heights, colours = [], [], [], []
    depth = 0.3
    while depth < far:
        depth += uniform(rng, layout.segment_length)
        gap = bool(rng.random() < layout.gap_prob)
        ends.append(depth)
        gaps.append(gap)
        heights.append(uniform(rng, layout.hedge_height if gap else layout.building_height))
        base = look.vegetation if gap else pick(rng, look.buildings)
        colours.append(jittered(rng, base, look.colour_jitter))
    return np.array(ends), np.array(gaps), np.array(heights), np.array(colours, np.float32)


def facade_texture(look, base, depth, y_world, height):
    """Facade colours: brick courses and a window grid in facade coordinates (depth, height)."""
    in_bay, in_floor = np.mod(depth, 0.9), np.mod(y_world, 0.9)
    windows = ((in_bay > 0.25) & (in_bay < 0.7) & (in_floor > 0.3) & (in_floor < 0.75)
               & (y_world > 0.9) & (y_world < height - 0.3))
    bricks = np.mod(y_world, 0.3) < 0.07
    colour = base * np.where(bricks, 1.0 - look.brick_strength, 1.0)[..., None]
    glass = (look.window_strength * windows)[..., None]
    return colour + glass * (np.asarray(look.window, np.float32) - colour)


def paint_facades(canvas, layout, look, rng, side):
    """Buildings and gaps of vegetation along one side of the street (a plane parallel to it)."""
    street = canvas.street
    ends, gaps, heights, colours = sample_segments(rng, layout, look, far=4 * layout.far_depth)
    with np.errstate(divide="ignore"):
        q = (canvas.xs - street.vanish) / street.facade(side)  # > 0 on this side's columns
    depth = street.focal / np.maximum(q, 1e-6)
    segment = np.minimum(np.searchsorted(ends, depth), len(ends) - 1)
    gap = gaps[segment]
    height = heights[segment] * (1.0 + 0.12 * np.where(gap, np.sin(3.0 * depth), 0.0))  # wavy hedges
    mask = (q > 0) & (canvas.ys >= street.row(height, q)) & (canvas.ys < street.row(0.0, q))
    y_world = 1.0 - (canvas.ys - street.horizon) / np.maximum(q, 1e-6)
    base = colours[segment] * (1.0 - look.side_shading * (side > 0))
    canvas.paint(mask & ~gap, BUILDING, facade_texture(look, base, depth, y_world, height))
    canvas.paint(mask & gap, VEGETATION, base)


# --- objects: sampled as Things, painted far to near (occlusion order) ---

def object_depth(rng, street, far):
    """A depth between the bottom row and `far`, denser near the camera (as on real streets)."""
    near = street.focal / (street.height - street.horizon) + 0.3
    return near + (far - near) * float(rng.random()) ** 1.5


def sidewalk_position(rng, street, side, lo=0.2, hi=0.8):
    """A lateral position on the sidewalk of `side`, as a fraction of its width from the curb."""
    return street.curb(side) + side * street.sidewalk * uniform(rng, (lo, hi))


def paint_car(canvas, look, rng, x_world, z, scale):
    """A car seen from behind, with the side that faces the image centre visible."""
    width, body, cabin, length = 1.2 * scale, 0.55 * scale, 0.4 * scale, 2.8 * scale
    paint = jittered(rng, pick(rng, look.cars), look.colour_jitter)
    glass = np.asarray(look.car_window, np.float32)
    near_side = x_world - width / 2 if x_world > width / 2 else x_world + width / 2
    if abs(x_world) > width / 2:
        canvas.paint(canvas.side_plane(near_side, z, z + length, 0.0, body), CAR, paint * 0.8)
        canvas.paint(canvas.side_plane(near_side, z + 0.2 * length, z + 0.85 * length, body,
                                       body + cabin), CAR, glass)
        for wheel in (0.15, 0.75):
            canvas.paint(canvas.side_plane(near_side, z + wheel * length, z + (wheel + 0.12) * length,
                                           0.0, 0.25 * scale), CAR, (20, 20, 20))
    q = canvas.street.q(z)
    left, right = x_world - width / 2, x_world + width / 2
    canvas.paint(canvas.world_box(left, right, 0.0, body, q), CAR, paint)
    canvas.paint(canvas.world_box(left + 0.15 * scale, right - 0.15 * scale, body, body + cabin, q),
                 CAR, glass)
    for x0 in (left + 0.05 * scale, right - 0.25 * scale):  # tail lights
        canvas.paint(canvas.world_box(x0, x0 + 0.2 * scale, 0.3 * scale, 0.42 * scale, q), CAR,
                     (200, 20, 20))


def paint_shadow(canvas, look, ground, x_world, z, scale):
    """Darken the ground under a car (labels unchanged)."""
    gx, gz, below = ground
    under = below & (np.abs(gx - x_world) < 0.7 * scale) & (gz > z - 0.3) & (gz < z + 2.8 * scale)
    canvas.rgb[under] *= 1.0 - look.shadow_strength


def paint_person(canvas, look, rng, x_world, z, scale):
    height, width = 1.15 * scale, 0.35 * scale
    q = canvas.street.q(z)
    trousers, shirt = (jittered(rng, pick(rng, look.clothes), look.colour_jitter) for _ in range(2))
    canvas.paint(canvas.world_box(x_world - width / 2, x_world + width / 2, 0.0, 0.47 * height, q),
                 PERSON, trousers)
    canvas.paint(canvas.world_box(x_world - width / 2, x_world + width / 2, 0.45 * height,
                                  0.86 * height, q), PERSON, shirt)
    street = canvas.street
    head = canvas.ellipse(street.column(x_world, q), street.row(0.93 * height, q),
                          0.3 * width * q, 0.07 * height * q)
    canvas.paint(head, PERSON, jittered(rng, look.skin, look.colour_jitter))


def paint_pole(canvas, look, rng, layout, x_world, z, colours):
    """A pole, perhaps with a traffic sign and/or a traffic light near its top."""
    q, height = canvas.street.q(z), uniform(rng, (2.6, 3.6))
    canvas.paint(canvas.world_box(x_world - 0.04, x_world + 0.04, 0.0, height, q), POLE, colours["pole"])
    if rng.random() < layout.light_prob:
        box = canvas.world_box(x_world - 0.13, x_world + 0.13, height - 0.7, height, q)
        canvas.paint(box, TRAFFIC_LIGHT, look.light)
        lamp = canvas.world_box(x_world - 0.06, x_world + 0.06, height - 0.25, height - 0.12, q)
        canvas.paint(lamp, TRAFFIC_LIGHT, pick(rng, ((230, 40, 30), (240, 180, 20), (40, 220, 90))))
    if rng.random() < layout.sign_prob:
        top = height - 0.8
        sign = canvas.world_box(x_world - 0.25, x_world + 0.25, top - 0.5, top, q)
        canvas.paint(sign, TRAFFIC_SIGN, jittered(rng, pick(rng, look.signs), look.colour_jitter))


def paint_tree(canvas, rng, x_world, z, colours):
    q, street = canvas.street.q(z), canvas.street
    crown = uniform(rng, (1.8, 2.8))
    canvas.paint(canvas.world_box(x_world - 0.07, x_world + 0.07, 0.0, crown, q), VEGETATION,
                 colours["trunk"])
    leaves = canvas.ellipse(street.column(x_world, q), street.row(crown + 0.4, q),
                            uniform(rng, (0.6, 1.0)) * q, uniform(rng, (0.5, 0.8)) * q)
    canvas.paint(leaves, VEGETATION, colours["vegetation"] * uniform(rng, (0.8, 1.1)))


def paint_prop(canvas, rng, x_world, z, colours):
    q = canvas.street.q(z)
    width, height = uniform(rng, (0.3, 0.7)), uniform(rng, (0.4, 0.9))
    canvas.paint(canvas.world_box(x_world - width / 2, x_world + width / 2, 0.0, height, q), UNLABELED,
                 colours["prop"] * uniform(rng, (0.7, 1.3)))


@dataclass(frozen=True)
class Thing:
    """One object of a scene: what it is, where (lateral x, depth z), its size and its own rng."""
    kind: str  # 'car', 'person', 'pole', 'tree' or 'prop'
    x: float
    z: float
    scale: float
    seed: int


def car_position(rng, street, parked, scale):
    if parked:
        side = pick(rng, (-1, 1))
        return street.curb(side) - side * 0.7 * scale
    left, right = street.road
    return left + (right - left) * pick(rng, (0.25, 0.75)) + 0.15 * float(rng.standard_normal())


def sample_things(rng, street, layout):
    """The objects of one scene: cars in the lanes and at the curbs, and sidewalk objects."""
    things = []
    for parked in (False, True):
        for _ in range(rng.poisson(layout.cars_parked if parked else layout.cars_moving)):
            scale = uniform(rng, layout.car_scale)
            x_world = car_position(rng, street, parked, scale)
            z = object_depth(rng, street, layout.far_depth)
            things.append(Thing("car", x_world, z, scale, int(rng.integers(2 ** 31))))
    # (count, kind, sidewalk band from the curb, size range)
    roadside = ((layout.people, "person", (0.15, 0.9), layout.person_scale),
                (layout.poles, "pole", (0.05, 0.15), (1.0, 1.0)),
                (layout.trees, "tree", (0.1, 0.25), (1.0, 1.0)),
                (layout.props, "prop", (0.3, 0.9), (1.0, 1.0)))
    for mean, kind, band, sizes in roadside:
        for _ in range(rng.poisson(mean)):
            x_world = sidewalk_position(rng, street, pick(rng, (-1, 1)), *band)
            things.append(Thing(kind, x_world, object_depth(rng, street, layout.far_depth),
                                uniform(rng, sizes), int(rng.integers(2 ** 31))))
    return things


def paint_thing(canvas, thing, style, colours, ground):
    rng = np.random.default_rng(thing.seed)
    look = style.look
    if thing.kind == "car":
        paint_shadow(canvas, look, ground, thing.x, thing.z, thing.scale)
        paint_car(canvas, look, rng, thing.x, thing.z, thing.scale)
    elif thing.kind == "person":
        paint_person(canvas, look, rng, thing.x, thing.z, thing.scale)
    elif thing.kind == "pole":
        paint_pole(canvas, look, rng, style.layout, thing.x, thing.z, colours)
    elif thing.kind == "tree":
        paint_tree(canvas, rng, thing.x, thing.z, colours)
    else:
        paint_prop(canvas, rng, thing.x, thing.z, colours)


def paint_ego(canvas, layout, rng, colours):
    """The ego car's hood along the bottom edge (label id 1, ignored in evaluation)."""
    if rng.random() >= layout.ego_prob:
        return
    street = canvas.street
    height = uniform(rng, layout.ego_height) * street.height
    across = (canvas.xs - street.width / 2) / (street.width / 2)
    top = street.height - height * (1.0 - 0.5 * across ** 2)
    shine = 1.0 + 0.4 * np.clip(1.0 - (canvas.ys - top) / max(height, 1.0), 0.0, 1.0)
    canvas.paint(canvas.ys >= top, EGO_VEHICLE, colours["ego"] * shine[..., None])


# --- the camera: textures, lighting, colour and sensor ---

def lookup_table(values):
    """256-entry float32 table: label id -> value (0 for ids not given)."""
    table = np.zeros(256, np.float32)
    for label, value in values.items():
        table[int(label)] = value
    return table


def add_textures(canvas, look, rng):
    """Per-class surface texture: pixel grain and smooth blotches, amplitudes from the look."""
    shape = canvas.ids.shape
    grain = rng.standard_normal(shape).astype(np.float32) * lookup_table(look.grain)[canvas.ids]
    blotch = smooth_noise(rng, shape, 4) * lookup_table(look.blotch)[canvas.ids]
    canvas.rgb += (grain + blotch)[..., None]


def develop(rgb, look, rng):
    """Lighting, colour cast, saturation, contrast, gamma, vignetting, blur and sensor noise."""
    gain = np.asarray(look.cast, np.float32) * (1.0 + look.cast_jitter * rng.standard_normal(3))
    rgb = rgb * uniform(rng, look.brightness) * gain.astype(np.float32)
    grey = rgb.mean(axis=2, keepdims=True)
    rgb = grey + look.saturation * (rgb - grey)
    rgb = 128.0 + look.contrast * (rgb - 128.0)
    rgb = 255.0 * np.clip(rgb / 255.0, 0.0, 1.0) ** look.gamma
    height, width = rgb.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    radius2 = ((xs - width / 2) / (width / 2)) ** 2 + ((ys - height / 2) / (height / 2)) ** 2
    rgb = rgb * (1.0 - look.vignette * 0.5 * radius2)[..., None]
    if look.blur > 0.05:
        rgb = cv2.GaussianBlur(rgb, (0, 0), look.blur)
    rgb = rgb + rng.normal(0.0, 1.0, rgb.shape).astype(np.float32) * look.sensor_noise
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_scene(rng, size, style):
    """One scene of `style` at `size` (width, height): (Cityscapes label ids H x W, RGB H x W x 3)."""
    layout, look = style.layout, style.look
    street = sample_street(rng, size, layout)
    canvas = Canvas(street)
    colours = class_colours(rng, look)
    ground = ground_coordinates(canvas)
    paint_sky(canvas, look, rng)
    paint_ground(canvas, look, colours, ground)
    for side in (-1, 1):
        paint_facades(canvas, layout, look, rng, side)
    things = sample_things(rng, street, layout)
    for thing in sorted(things, key=lambda t: -t.z):
        paint_thing(canvas, thing, style, colours, ground)
    paint_ego(canvas, layout, rng, colours)
    add_textures(canvas, look, rng)
    return canvas.ids.copy(), develop(canvas.rgb, look, rng)
