"""A synthetic two-domain benchmark in the real GTA5 and Cityscapes on-disk formats (the demo's data).

`write_demo_data(out_dir)` writes, deterministically for a seed, a labelled source domain
("GTA5-like": clean, sunny, saturated renderings) and a target domain ("Cityscapes-like":
overcast photographs) of procedural street scenes (advent.demo.synthetic_scene), small
enough that the whole ESL pipeline trains on a laptop CPU:

  <out>/GTA5/images/NNNNN.png       RGB
  <out>/GTA5/labels/NNNNN.png       8-bit palette ('P') PNG; indices are Cityscapes label ids,
                                    colours the Cityscapes palette (as the real GTA5 labels)
  <out>/GTA5/all.txt                the source training split (entries 'NNNNN.png')
  <out>/GTA5/val.txt                a held-out source split (further images, not in all.txt)
  <out>/Cityscapes/leftImg8bit/{train,val}/{city}/{city}_{seq:06d}_000019_leftImg8bit.png
  <out>/Cityscapes/gtFine/{train,val}/{city}/{city}_{seq:06d}_000019_gtFine_labelIds.png
                                    8-bit grayscale ('L') Cityscapes label ids
  <out>/Cityscapes/{train,val}.txt  entries '{city}/{name}_leftImg8bit.png'
  <out>/synthetic_manifest.json     the generation parameters, written last

So DATA_DIRECTORY_SOURCE = <out>/GTA5, DATA_LIST_SOURCE = <out>/GTA5/{}.txt,
DATA_DIRECTORY_TARGET = <out>/Cityscapes, DATA_LIST_TARGET = <out>/Cityscapes/{}.txt
(`DemoData.cfg_paths()`). Target train has labels too (Cityscapes ships them); training
ignores them, the oracle and ESL's pseudo-label quality report use them.

Classes (Cityscapes label id -> train id): road 7->0, sidewalk 8->1, building 11->2,
pole 17->5, traffic light 19->6, traffic sign 20->7, vegetation 21->8, terrain 22->9,
sky 23->10, person 24->11, car 26->13; ignored: unlabelled props (id 0) in both domains
and the ego car's hood (id 1) in the target. Pixel shares are imbalanced as in real street
scenes (road, building, sky, vegetation large; poles, signs, lights, people small).

Domain shifts, source -> target (each a field of Layout / Look; `shift` scales all of them):
  colour/lighting  sky: saturated blue gradient -> paler, greyer blue with more cloud; road
                   lighter, sidewalk closer to the road; buildings warm saturated ->
                   greyer; vegetation and terrain duller; car and clothing palettes bright
                   -> muted; hard sun (car shadows 0.45 -> 0.15, one facade side shaded
                   0.25 -> 0.08) -> diffuse light; brightness range 0.8-1.2 -> 0.85-1.05.
  camera colour    global cast (0.97, 1.02, 0.92) (green-yellow), saturation x1.15 -> x0.85,
                   contrast x1.1 -> x0.92, gamma 1.0 -> 1.08.
  variety          the source varies more from image to image (as GTA5's weather and time
                   of day): per-class colour jitter 20 -> 10, per-image random channel gain
                   std 0.10 -> 0.03.
  texture          road/sidewalk/terrain/building pixel grain and blotches stronger (about
                   x2), vegetation blotches weaker; facades: large clean windows -> fainter
                   windows plus brick courses; worn (fainter) lane markings; sidewalk tiles
                   more visible.
  camera noise     sensor noise 0 -> 4 grey levels std, Gaussian blur 0 -> 0.5 px, vignetting
                   0 -> 0.25; the ego car's hood along the bottom edge (ignored label id 1).
  object stats     more parked (4 vs 1 per image) and fewer moving cars (0.8 vs 1.5), cars
                   smaller (scale 0.8-0.95 vs 1.0-1.2, as from a higher camera), twice as many
                   and smaller people, more poles and trees, more facade gaps with vegetation,
                   narrower roads and sidewalks, horizon lower, objects spread further away.

Measured effect (benchmarks/synthetic_gap.py, DeepLabv2-Tiny from scratch, 300 Adam
iterations of batch 8 at 128x64, mean of seeds 0 and 1): source-only 52.9 mIoU on held-out
source, 26.2 on target val; a model trained on target labels reaches 54.8.
"""
import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from advent.dataset.class_info import INFO_PATH, load_class_info
from advent.demo.synthetic_scene import (
    BUILDING, CAR, PERSON, POLE, ROAD, SIDEWALK, SKY, TERRAIN, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION,
    DomainStyle, Layout, Look, blend_styles, render_scene)
from advent.utils.output_dir import FolderReplacement
from advent.utils.serialization import json_dump, json_load

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the rendering code changes (style changes: see style_fingerprint)
MANIFEST = "synthetic_manifest.json"
WRITER = "make_synthetic_data.py"  # the output layer's name for this data, whoever asks for it
TRAIN_CITIES = ("aachen", "bochum", "bremen")
VAL_CITIES = ("frankfurt", "lindau", "munster")
DOMAIN_CODES = {"source": 0, "target": 1}
SPLIT_CODES = {"all": 0, "val": 1, "train": 2}

SOURCE_STYLE = DomainStyle("GTA5-like", Layout(), Look(
    grain={ROAD: 3, SIDEWALK: 3, BUILDING: 3, VEGETATION: 8, TERRAIN: 5, CAR: 2, PERSON: 2},
    blotch={ROAD: 5, SIDEWALK: 5, BUILDING: 6, VEGETATION: 22, TERRAIN: 12, CAR: 0, PERSON: 0}))

TARGET_STYLE = DomainStyle(
    "Cityscapes-like",
    Layout(horizon=(0.42, 0.52), road_half_width=(1.5, 2.2), sidewalk_width=(0.8, 1.4),
           gap_prob=0.45, building_height=(3.0, 9.0), trees=4.0, poles=4.5, cars_moving=0.8,
           cars_parked=4.0, car_scale=(0.8, 0.95), people=3.0, person_scale=(0.85, 1.0),
           far_depth=55.0, ego_prob=1.0, ego_height=(0.05, 0.09)),
    Look(sky_top=(115, 150, 205), sky_horizon=(190, 205, 225), cloud_strength=0.3,
         road=(92, 90, 100), marking=(205, 205, 200), marking_strength=0.55,
         sidewalk=(150, 140, 136), tile_strength=0.22, terrain=(130, 150, 80),
         vegetation=(60, 115, 45), trunk=(75, 65, 55),
         buildings=((170, 135, 110), (190, 175, 150), (140, 140, 148), (165, 105, 90)),
         window=(45, 55, 70), window_strength=0.55, brick_strength=0.2, side_shading=0.08,
         pole=(105, 105, 108), signs=((210, 180, 40), (170, 50, 50), (50, 75, 160)),
         cars=((150, 35, 35), (40, 55, 120), (200, 200, 200), (35, 35, 40), (160, 140, 60)),
         shadow_strength=0.15,
         clothes=((70, 70, 90), (110, 80, 60), (160, 160, 170), (40, 40, 40), (140, 50, 50)),
         skin=(200, 165, 140), prop=(120, 110, 95), colour_jitter=10.0,
         grain={ROAD: 8, SIDEWALK: 7, BUILDING: 6, VEGETATION: 11, TERRAIN: 9, CAR: 3, PERSON: 3},
         blotch={ROAD: 9, SIDEWALK: 9, BUILDING: 10, VEGETATION: 16, TERRAIN: 14, CAR: 2, PERSON: 2},
         brightness=(0.85, 1.05), cast=(0.97, 1.02, 0.92), cast_jitter=0.03, saturation=0.85,
         contrast=0.92, gamma=1.08, vignette=0.25, blur=0.5, sensor_noise=4.0))

# The classes the scenes contain, as Cityscapes label ids (the others never occur).
SCENE_CLASSES = (ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN,
                 SKY, PERSON, CAR)


def target_style(shift=1.0):
    """The target domain with every difference from the source scaled by `shift` (0: the source)."""
    if shift == 1.0:
        return TARGET_STYLE
    return blend_styles(SOURCE_STYLE, TARGET_STYLE, shift, name=f"Cityscapes-like@{shift:g}")


def scene_rng(seed, domain, split, index):
    """The generator of one image: depends only on (seed, domain, split, index), not on counts."""
    return np.random.default_rng([seed, DOMAIN_CODES[domain], SPLIT_CODES[split], index])


@dataclass(frozen=True)
class DemoData:
    """Where write_demo_data put the two domains, and the config values that point at them."""
    root: Path
    source_root: Path  # DATA_DIRECTORY_SOURCE
    source_list: str  # DATA_LIST_SOURCE: '<root>/GTA5/{}.txt', splits 'all' (train) and 'val'
    target_root: Path  # DATA_DIRECTORY_TARGET
    target_list: str  # DATA_LIST_TARGET: '<root>/Cityscapes/{}.txt', splits 'train' and 'val'
    size: tuple  # (width, height) of every image
    counts: dict  # images per split: source 'all' / 'val', target 'train' / 'val'

    def cfg_paths(self):
        """The four top-level config keys that select this data."""
        return {"DATA_DIRECTORY_SOURCE": str(self.source_root), "DATA_LIST_SOURCE": self.source_list,
                "DATA_DIRECTORY_TARGET": str(self.target_root), "DATA_LIST_TARGET": self.target_list}


def gta5_label_palette():
    """768 palette values: each Cityscapes label id gets its train class colour (black if ignored)."""
    info = load_class_info(INFO_PATH)
    palette = np.zeros((256, 3), np.uint8)
    for label_id, train_id in enumerate(info.label2train):
        if train_id < info.num_classes:
            palette[label_id] = info.palette[train_id]
    return palette.ravel().tolist()


def save_png(array, path, mode, palette=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode=mode)
    if palette is not None:
        image.putpalette(palette)
    image.save(path)


def write_source_split(root, split, count, first, seed, size, style):
    """`count` GTA5-layout pairs of `split`, files numbered from first + 1; returns the names."""
    palette = gta5_label_palette()
    names = []
    for index in range(count):
        ids, rgb = render_scene(scene_rng(seed, "source", split, index), size, style)
        name = f"{first + index + 1:05d}.png"
        save_png(rgb, root / "images" / name, "RGB")
        save_png(ids, root / "labels" / name, "P", palette)
        names.append(name)
    return names


def cityscapes_name(cities, index):
    """Entry `index` of a split: the cities in turn, each with its own sequence numbers."""
    city, seq = cities[index % len(cities)], index // len(cities)
    return f"{city}/{city}_{seq:06d}_000019_leftImg8bit.png"


def write_target_split(root, split, count, seed, size, style):
    """`count` Cityscapes-layout images and labelIds of `split`, taking three cities in turn."""
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    names = []
    for index in range(count):
        ids, rgb = render_scene(scene_rng(seed, "target", split, index), size, style)
        name = cityscapes_name(cities, index)
        save_png(rgb, root / "leftImg8bit" / split / name, "RGB")
        label = name.replace("_leftImg8bit", "_gtFine_labelIds")
        save_png(ids, root / "gtFine" / split / label, "L")
        names.append(name)
    return names


def write_list(path, names):
    path.write_text("".join(f"{name}\n" for name in names))


def write_demo_data(out_dir, seed=0, num_source=400, num_source_val=100, num_target_train=400,
                    num_target_val=100, size=(128, 64), shift=1.0, overwrite=False):
    """Write both domains under `out_dir` (see the module docstring) and return a DemoData.

    Image i of a split depends only on (seed, domain, split, i): a larger count adds images
    and keeps the others byte for byte. `shift` in [0, 1] scales every domain difference.
    Unless `overwrite`, a folder whose manifest records the same parameters is reused as is.
    The folder is replaced as a whole (output_dir.FolderReplacement): built beside it and swapped
    in, so a kill leaves the earlier data; a folder holding anything else (a real dataset) is
    refused with one line.
    """
    out_dir = Path(out_dir).resolve()  # the config paths must not depend on the working directory
    size = (int(size[0]), int(size[1]))
    counts = {"source_all": int(num_source), "source_val": int(num_source_val),
              "target_train": int(num_target_train), "target_val": int(num_target_val)}
    target = target_style(shift)
    params = {"format_version": FORMAT_VERSION, "seed": int(seed), "size": list(size),
              "shift": float(shift), "counts": counts, "styles": style_fingerprint(SOURCE_STYLE, target)}
    data = _demo_data(out_dir, size, counts)
    if not overwrite and _manifest(out_dir) == params:
        log.info("synthetic data in %s is up to date; reusing it", out_dir)
        return data
    output = FolderReplacement(out_dir, WRITER, "the synthetic data folder",
                               advice="choose a new or empty folder (it is replaced as a whole)")
    with output.held(), output.staged() as staging:
        _write_domains(_demo_data(staging, size, counts), int(seed), size, counts, target)
        json_dump(params, staging / MANIFEST)
    return data


def style_fingerprint(*styles):
    """A short hash of every style parameter: data drawn with other parameters is regenerated."""
    text = repr([asdict(style) for style in styles])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _demo_data(out_dir, size, counts):
    source, target = out_dir / "GTA5", out_dir / "Cityscapes"
    return DemoData(out_dir, source, str(source / "{}.txt"), target, str(target / "{}.txt"), size, counts)


def _manifest(out_dir):
    try:
        return json_load(out_dir / MANIFEST)
    except (OSError, ValueError):  # none, unreadable, or `out_dir` no folder (the folder check says so)
        return None


def _write_domains(data, seed, size, counts, target):
    data.source_root.mkdir(parents=True, exist_ok=True)
    data.target_root.mkdir(parents=True, exist_ok=True)
    train = write_source_split(data.source_root, "all", counts["source_all"], 0, seed, size, SOURCE_STYLE)
    val = write_source_split(data.source_root, "val", counts["source_val"], counts["source_all"], seed,
                             size, SOURCE_STYLE)
    write_list(data.source_root / "all.txt", train)
    write_list(data.source_root / "val.txt", val)
    for split in ("train", "val"):
        names = write_target_split(data.target_root, split, counts[f"target_{split}"], seed, size, target)
        write_list(data.target_root / f"{split}.txt", names)

