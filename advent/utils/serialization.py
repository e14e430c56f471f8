"""JSON / YAML reading and atomic writing (no pickle anywhere).

The writes go through the output layer's `atomic_path`: pass `writer` (the script's name) for a
file in a folder that may hold the user's files too, so that it is recorded there and never
replaces a file the project did not write."""
import json
from pathlib import Path

import yaml

from advent.utils.output_dir import atomic_path


def json_load(path):
    with open(path) as f:
        return json.load(f)


def text_dump(text, path, writer=None):
    """Write the string `text`, atomically."""
    with atomic_path(path, writer) as tmp:
        Path(tmp).write_text(text)


def json_dump(data, path, writer=None, new=False):
    """Write `data` as indented JSON, atomically (with `new`, only where `path` does not exist:
    FileExistsError else)."""
    with atomic_path(path, writer, new) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping: PyYAML would keep the last
    silently, so a second `TRAIN:` section would drop every key of the first."""


def _mapping_without_repeats(loader, node):
    first_line = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool, type(None))):
            continue  # construct_mapping explains unhashable keys itself
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key} given twice (first at line {first_line[key] + 1})", key_node.start_mark)
        first_line[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def yaml_parse(stream):
    """yaml.safe_load, but a key repeated in a mapping is a yaml.YAMLError (naming its line)."""
    return yaml.load(stream, Loader=_StrictLoader)


def yaml_load(path):
    with open(path) as f:
        return yaml_parse(f)


def yaml_dump(data, path, writer=None):
    """Write `data` (plain dicts, lists and scalars) as YAML, atomically."""
    with atomic_path(path, writer) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, default_flow_style=None)
