"""JSON / YAML reading and atomic writing (no pickle anywhere).

The writes go through the output layer's `atomic_path`: pass `writer` (the script's name) for a
file in a folder that may hold the user's files too, so that it is recorded there and never
replaces a file the project did not write."""
import json

import yaml

from advent.utils.output_dir import atomic_path


def json_load(path):
    with open(path) as f:
        return json.load(f)


def json_dump(data, path, writer=None):
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path, writer) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def yaml_load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def yaml_dump(data, path, writer=None):
    """Write `data` (plain dicts, lists and scalars) as YAML, atomically."""
    with atomic_path(path, writer) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, default_flow_style=None)
