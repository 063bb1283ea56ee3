"""YAML files read without surprises: invalid text, deep nesting and alias bombs end in one-line errors.

``yaml.safe_load`` builds no Python objects beyond plain data, but an alias ("billion laughs") bomb loads in
microseconds as a few shared lists that expand to billions of values as soon as anything walks or prints them,
and deep nesting exhausts the recursion limit. ``load_yaml_file`` refuses both before the data is used.
"""
from pathlib import Path

import yaml
from utils.errors import InputError

MAX_VALUES = 1_000_000  # far above any real data/model/hyp YAML (COCO's 80 names, LVIS's 1,203)


def load_yaml_file(path, what='YAML'):
    """The YAML document in ``path`` (any type); FileNotFoundError / ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: {what} file not found')
    try:
        data = yaml.safe_load(path.read_text(encoding='utf-8'))
    except RecursionError:
        raise InputError(f'{path}: invalid YAML (nested too deeply)') from None
    except (yaml.YAMLError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f'{path}: invalid YAML ({" ".join(str(e).split())[:300]})') from None
    if count_values(data, MAX_VALUES) > MAX_VALUES:
        raise InputError(f'{path}: {what} expands to more than {MAX_VALUES:,} values (nested aliases?)')
    return data


def count_values(data, limit):
    """How many values ``data`` holds when every alias is expanded, counting stops just past ``limit``
    (so a self-referencing list or an alias bomb costs at most ``limit`` steps)."""
    count, stack = 0, [data]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
    return count
