"""Fuzzing every reader of user files: each input is read, skipped and counted, or refused with a one-line error.

"One-line error" is an exception of ``utils.errors.ONE_LINE_ERRORS`` (InputError, OSError, OneLineError) whose
message is one line naming the file; the CLIs print it as ``error: <message>``. Anything else (KeyError,
TypeError, RecursionError, MemoryError, ...) fails the test. Examples per test: 50 under the default "ci"
profile, 2000 with ``--hypothesis-profile thorough`` (tests/conftest.py).
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

hypothesis = pytest.importorskip('hypothesis', reason='hypothesis is a dev-only extra: pip install -r '
                                                      'requirements-extra.txt')
from hypothesis import given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from utils.data.config import check_dataset  # noqa: E402
from utils.errors import ONE_LINE_ERRORS  # noqa: E402
from utils.data.label_formats import load_coco_json  # noqa: E402
from utils.data.label_scan import scan_coco, scan_voc, scan_yolo  # noqa: E402

NAMES = ['cat', 'dog', 'bird']
ROOT = Path(__file__).resolve().parents[1]


def one_line_or_value(fn, *args, names=()):
    """``fn(*args)``, or the one-line error it raised (its message names one of ``names``); anything else fails."""
    try:
        return fn(*args)
    except ONE_LINE_ERRORS as e:
        msg = str(e)
        assert msg.strip() and '\n' not in msg, repr(msg)
        assert not names or any(str(n) in msg for n in names), msg
        return e


def assert_scan_accounts_for_every_image(records, report, n_images, nc):
    """A scan either keeps an image (with valid boxes) or counts it as corrupt: nothing is lost or invented."""
    assert report.images == n_images and len(records) + report.corrupt == n_images
    for r in records:
        assert np.isfinite(r.boxes).all() and ((r.boxes >= 0) & (r.boxes <= 1)).all()
        assert ((r.cls >= 0) & (r.cls < nc)).all() and len(r.cls) == len(r.boxes) == len(r.difficult)


# ---------------------------------------------------------------- building blocks
NUMBER_TOKENS = st.one_of(
    st.sampled_from(['0', '1', '2', '3', '-1', '0.5', '.5', '1e309', '-1e309', 'nan', 'inf', '-inf', '1e-400',
                     '0x1F', '1_0', '1.0.0', '٣', '²', '+0.3', '', 'abc', '0,5', '\x00', '\u00a0']),
    st.integers(-10, 10).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=4))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


@st.composite
def mutated(draw, text):
    """``text`` as bytes with a few random insertions, deletions and replacements (invalid UTF-8 included)."""
    data = bytearray(text.encode())
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(['insert', 'delete', 'replace']))
        chunk = draw(st.binary(min_size=1, max_size=4))
        if op == 'insert':
            data[pos:pos] = chunk
        elif op == 'delete':
            del data[pos:pos + len(chunk)]
        else:
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)


def write_image(path, size=(48, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((*size, 3), 120, np.uint8))
    return path


# ---------------------------------------------------------------- YOLO txt
VALID_YOLO = '0 0.5 0.5 0.2 0.3\n2 0.25 0.75 0.1 0.1\n1 0.1 0.1 0.3 0.1 0.3 0.3\n'


@st.composite
def yolo_label_bytes(draw):
    if draw(st.booleans()):
        return draw(mutated(VALID_YOLO))
    rows = draw(st.lists(st.lists(NUMBER_TOKENS, max_size=12), max_size=8))
    sep = draw(st.sampled_from([' ', '\t', '  ', ' \x0b']))
    end = draw(st.sampled_from(['\n', '\r\n', '\r']))
    return end.join(sep.join(r) for r in rows).encode('utf-8', 'surrogatepass')


@pytest.fixture(scope='module')
def yolo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('fuzz_yolo')
    write_image(root / 'images' / 'a.jpg')
    return root


@given(label=yolo_label_bytes())
def test_fuzz_yolo_txt_rows(yolo_dir, label):
    (yolo_dir / 'labels').mkdir(exist_ok=True)
    (yolo_dir / 'labels' / 'a.txt').write_bytes(label)
    records, report = scan_yolo(yolo_dir / 'images', len(NAMES))
    assert_scan_accounts_for_every_image(records, report, 1, len(NAMES))


# ---------------------------------------------------------------- VOC XML
@st.composite
def voc_xml_bytes(draw):
    objects = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(NAMES) | st.text(max_size=5))
        fields = ''.join(f'<{k}>{draw(NUMBER_TOKENS)}</{k}>' for k in ('xmin', 'ymin', 'xmax', 'ymax')
                         if draw(st.integers(0, 9)))
        box = f'<bndbox>{fields}</bndbox>' if draw(st.integers(0, 9)) else ''
        difficult = f'<difficult>{draw(NUMBER_TOKENS)}</difficult>' if draw(st.booleans()) else ''
        objects.append(f'<object><name>{name}</name>{box}{difficult}</object>')
    doctype = draw(st.sampled_from(['', '<!DOCTYPE annotation>', '<!DOCTYPE a [<!ENTITY e "cat">]>',
                                    '<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/hostname">]>']))
    text = f'<?xml version="1.0"?>{doctype}<annotation><size><width>64</width></size>{"".join(objects)}</annotation>'
    return draw(mutated(text)) if draw(st.booleans()) else text.encode('utf-8', 'surrogatepass')


@pytest.fixture(scope='module')
def voc_dir(tmp_path_factory):
    year = tmp_path_factory.mktemp('fuzz_voc') / 'VOC2007'
    write_image(year / 'JPEGImages' / '000001.jpg')
    (year / 'ImageSets' / 'Main').mkdir(parents=True)
    (year / 'ImageSets' / 'Main' / 'train.txt').write_text('000001\n')
    (year / 'Annotations').mkdir()
    return year


@given(xml=voc_xml_bytes())
def test_fuzz_voc_xml(voc_dir, xml):
    (voc_dir / 'Annotations' / '000001.xml').write_bytes(xml)
    records, report = scan_voc(voc_dir / 'ImageSets' / 'Main' / 'train.txt', NAMES)
    assert_scan_accounts_for_every_image(records, report, 1, len(NAMES))


def billion_laughs(levels=10):
    ents = '<!ENTITY lol0 "lol">' + ''.join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, levels))
    return (f'<?xml version="1.0"?><!DOCTYPE annotation [{ents}]><annotation><object><name>&lol{levels - 1};'
            f'</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>')


@pytest.mark.parametrize('xml,reason', [
    (billion_laughs(), 'entity'),
    ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY big "' + 'x' * 100_000 + '">]><annotation><object><name>'
     + '&big;' * 1000 + '</name></object></annotation>', 'entity'),  # quadratic blow-up
    ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation><object><name>&x;'
     '</name></object></annotation>', 'entity'),  # external entity (XXE)
], ids=['billion_laughs', 'quadratic', 'external_entity'])
def test_xml_entity_expansion_is_refused(voc_dir, xml, reason):
    xml_file = voc_dir / 'Annotations' / '000001.xml'
    xml_file.write_text(xml)
    records, report = scan_voc(voc_dir / 'ImageSets' / 'Main' / 'train.txt', NAMES)
    assert records == [] and report.corrupt == 1
    (file, message), = report.messages
    assert file == str(xml_file) and reason in message and 'refused' in message and '\n' not in message


# ---------------------------------------------------------------- COCO JSON
VALID_COCO = {'images': [{'id': 1, 'file_name': 'a.jpg', 'height': 48, 'width': 64},
                         {'id': 2, 'file_name': 'b.jpg', 'height': 48, 'width': 64}],
              'annotations': [{'id': 1, 'image_id': 1, 'category_id': 3, 'bbox': [4, 4, 20, 10], 'iscrowd': 0},
                              {'id': 2, 'image_id': 2, 'category_id': 7, 'bbox': [1, 2, 3, 4], 'iscrowd': 1}],
              'categories': [{'id': 3, 'name': 'cat'}, {'id': 5, 'name': 'dog'}, {'id': 7, 'name': 'bird'}]}


@st.composite
def coco_json_bytes(draw):
    kind = draw(st.sampled_from(['mutated_text', 'fields', 'any_json']))
    if kind == 'mutated_text':
        return draw(mutated(json.dumps(VALID_COCO)))
    if kind == 'any_json':
        return json.dumps(draw(JSON_VALUES)).encode()
    d = json.loads(json.dumps(VALID_COCO))
    for _ in range(draw(st.integers(1, 6))):  # replace or delete fields anywhere in the valid structure
        section = draw(st.sampled_from(['images', 'annotations', 'categories']))
        if draw(st.integers(0, 5)) == 0:
            d[section] = draw(JSON_VALUES)
            continue
        items = d[section] if isinstance(d[section], list) else []
        if items and isinstance(items[0], dict):
            item = items[draw(st.integers(0, len(items) - 1))]
            keys = st.sampled_from(sorted(item)) | st.text(max_size=3) if item else st.text(max_size=3)
            key = draw(keys) if isinstance(item, dict) else None  # an emptied item: only new keys
            if key is not None and draw(st.integers(0, 3)) == 0:
                item.pop(key, None)
            elif key is not None:
                item[key] = draw(JSON_VALUES | st.lists(st.floats(), min_size=4, max_size=4))
    return json.dumps(d).encode()


@pytest.fixture(scope='module')
def coco_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('fuzz_coco')
    for name in ('a.jpg', 'b.jpg'):
        write_image(root / 'images' / name)
    return root


@given(data=coco_json_bytes())
def test_fuzz_coco_json(coco_dir, data):
    json_file = coco_dir / 'instances.json'
    json_file.write_bytes(data)
    note(data[:300])
    out = one_line_or_value(scan_coco, coco_dir / 'images', json_file, len(NAMES), names=[json_file])
    if not isinstance(out, Exception):
        records, report = out
        assert len(records) + report.corrupt == report.images and len(records) <= 2


@pytest.mark.parametrize('text', ['[' * 100_000, '{"a":' * 100_000, '"\\ud800"', '\ufeff{}', 'NaN'],
                         ids=['deep_list', 'deep_dict', 'lone_surrogate', 'bom', 'nan'])
def test_pathological_json_is_a_one_line_error(tmp_path, text):
    f = tmp_path / 'instances.json'
    f.write_text(text, errors='surrogatepass')
    with pytest.raises(ValueError, match='instances.json'):
        load_coco_json(f)


# ---------------------------------------------------------------- data YAML
DATA_KEYS = ['path', 'train', 'val', 'test', 'nc', 'names', 'format', 'eval', 'annotations', 'generate', 'download']
PLAUSIBLE = {'path': st.sampled_from(['.', 'sub', '', '/', '..']), 'train': st.sampled_from(['images', ['images']]),
             'val': st.sampled_from(['images', 'images/a.jpg', ['images', 'images']]), 'nc': st.integers(-2, 5),
             'names': st.sampled_from([NAMES, {0: 'a', 1: 'b'}, {1: 'a'}, {'0': 'a'}, ['a', None], []]),
             'format': st.sampled_from(['yolo', 'voc', 'coco', 'kitti']),
             'eval': st.sampled_from(['coco', 'voc07', None, 'x']), 'generate': st.sampled_from(['other', None])}


@st.composite
def data_cfgs(draw):
    cfg = {}
    for key in draw(st.lists(st.sampled_from(DATA_KEYS) | st.text(max_size=4), max_size=8)):
        plausible = PLAUSIBLE.get(key)
        cfg[key] = draw(plausible) if plausible is not None and draw(st.booleans()) else draw(JSON_VALUES)
    if cfg.get('generate') == 'shapes':  # would write a 464-image data set: tested in test_datasets.py
        cfg['generate'] = None
    return cfg


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('fuzz_data')
    write_image(root / 'images' / 'a.jpg')
    return root


@given(cfg=data_cfgs(), as_text=st.booleans())
def test_fuzz_data_yaml(data_dir, cfg, as_text):
    if as_text:
        f = data_dir / 'data.yaml'
        f.write_text(yaml.safe_dump(cfg))
        one_line_or_value(check_dataset, f, names=[f])
    else:
        one_line_or_value(check_dataset, {**cfg, 'path': str(data_dir / str(cfg.get('path', '')))})


@given(text=st.one_of(mutated('path: .\ntrain: images\nval: images\nnames: [cat, dog]\n'),
                      st.text(max_size=60).map(lambda t: t.encode('utf-8', 'surrogatepass'))))
def test_fuzz_data_yaml_text(data_dir, text):
    f = data_dir / 'text.yaml'
    f.write_bytes(text)
    one_line_or_value(check_dataset, f, names=[f])


def yaml_alias_bomb(levels=9):
    lines = ['l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]']
    lines += [f'l{i}: &l{i} [{", ".join([f"*l{i - 1}"] * 9)}]' for i in range(1, levels)]
    return '\n'.join(lines) + f'\ntrain: images\nval: images\nnames: *l{levels - 1}\n'


@pytest.mark.parametrize('text,reason', [
    (yaml_alias_bomb(), 'expands to more than'),
    ('a: &a [*a]\ntrain: images\nval: images\nnames: *a\n', 'expands to more than'),  # a list holding itself
    ('names: ' + '[' * 5000 + ']' * 5000 + '\n', 'nested too deeply'),
], ids=['alias_bomb', 'self_reference', 'deep_nesting'])
def test_yaml_bombs_are_refused(data_dir, text, reason):
    f = data_dir / 'bomb.yaml'
    f.write_text(text)
    with pytest.raises(ValueError, match=reason) as e:
        check_dataset(f)
    assert str(e.value).startswith(str(f))


# ---------------------------------------------------------------- model YAML
@pytest.fixture(scope='module')
def base_model_cfg():
    from models.yolo import load_yaml_cfg
    return load_yaml_cfg('v6/yolov5n.yaml')


MODEL_VALUES = st.one_of(JSON_VALUES, st.integers(-3, 2 ** 20), st.floats(-4, 1e6),
                         st.sampled_from(['Conv', 'C3', 'SPPF', 'Concat', 'Detect', 'nn.Upsample', 'nc', 'anchors',
                                          'None', 'nearest', 'os.system', [-1, 6], [-1, -2], [17, 20, 23]]))


@st.composite
def model_cfgs(draw, base):
    cfg = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(['top', 'row', 'arg']))
        if where == 'top':
            cfg[draw(st.sampled_from(['nc', 'depth_multiple', 'width_multiple', 'anchors', 'activation',
                                      'backbone', 'head']))] = draw(MODEL_VALUES)
            continue
        rows = cfg.get('backbone') if draw(st.booleans()) else cfg.get('head')
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], list):
            continue
        row = rows[draw(st.integers(0, len(rows) - 1))]
        if where == 'row' or not isinstance(row[-1], list) or not row[-1]:
            row[draw(st.integers(0, len(row) - 1))] = draw(MODEL_VALUES)
        else:
            row[-1][draw(st.integers(0, len(row[-1]) - 1))] = draw(MODEL_VALUES)
    return cfg


@pytest.fixture
def small_model_limit(monkeypatch):
    """A 20M-parameter ceiling: the size guard answers more of the examples, and none takes long to build."""
    import models.probe
    monkeypatch.setattr(models.probe, 'MAX_PARAMS', 20_000_000)


@pytest.mark.slow
@given(data=st.data())
def test_fuzz_model_yaml(base_model_cfg, data, tmp_path_factory, small_model_limit):
    from models.yolo import Model
    cfg = data.draw(model_cfgs(base_model_cfg))
    f = tmp_path_factory.getbasetemp() / 'fuzz_model.yaml'
    f.write_text(yaml.safe_dump(cfg))
    one_line_or_value(Model, str(f), names=[f.name])


@given(text=mutated((ROOT / 'models' / 'v6' / 'yolov5n.yaml').read_text()))
def test_fuzz_model_yaml_text(text, tmp_path_factory, small_model_limit):
    from models.yolo import Model
    f = tmp_path_factory.getbasetemp() / 'fuzz_model_text.yaml'
    f.write_bytes(text)
    one_line_or_value(Model, str(f), names=[f.name])


# ---------------------------------------------------------------- --freeze specs
FREEZE_TOKENS = st.one_of(st.sampled_from(['0', '10', '24', '25', '-1', 'backbone', 'all', 'model.24.', 'model.1',
                                           'model.99.', 'model.', 'model..', '²', '١٠', '1.5', '0x3', '', ' ']),
                          st.integers(-3, 30), st.text(max_size=8))


@pytest.fixture(scope='module')
def small_model():
    from models.yolo import Model
    return Model('v6/yolov5n.yaml', nc=3)


@given(spec=st.one_of(FREEZE_TOKENS, st.lists(FREEZE_TOKENS, max_size=5)))
def test_fuzz_freeze_specs(small_model, spec):
    from utils.freeze.plan import freeze, unfreeze
    try:
        prefixes = one_line_or_value(freeze, small_model, spec, names=['--freeze'])
        if not isinstance(prefixes, Exception):
            assert all(p.startswith('model.') and p.endswith('.') for p in prefixes)
    finally:
        unfreeze(small_model)

