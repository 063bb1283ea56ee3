"""Data YAMLs, the three annotation formats, bad-input handling, cache, loader and the shapes set."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.boxes import scale_boxes, xywhn2xyxy
from utils.data.datasets import DetectionDataset, check_dataset, create_dataloader, load_hyp, load_records
from utils.data.label_scan import Record, scan_source
from utils.data import image_cache
from utils.data.image_cache import auto_cache, resized_bytes
from utils.data.shapes import ensure_shapes

SHARED = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
VOC = SHARED / 'voc_fixture' / 'VOCdevkit'
COCO64 = SHARED / 'coco64dev'
VOC_NAMES = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable',
             'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor']
needs_voc = pytest.mark.skipif(not VOC.is_dir(), reason='../shared/data/voc_fixture not present')
needs_coco = pytest.mark.skipif(not COCO64.is_dir(), reason='../shared/data/coco64dev not present')


def write_yaml(path, text):
    path.write_text(text)
    return path


def make_yolo(root, items, nc=3, size=(60, 80)):
    """Small YOLO dataset: items maps image stem -> label text (None = no label file). PNG images."""
    (root / 'images' / 'train').mkdir(parents=True)
    (root / 'labels' / 'train').mkdir(parents=True)
    for stem, label in items.items():
        im = np.full((*size, 3), 90, np.uint8)
        cv2.imwrite(str(root / 'images' / 'train' / f'{stem}.png'), im)
        if label is not None:
            (root / 'labels' / 'train' / f'{stem}.txt').write_text(label)
    return write_yaml(root / 'data.yaml', f'path: .\ntrain: images/train\nval: images/train\nnc: {nc}\n'
                                          f'names: {{0: a, 1: b, 2: c}}\n')


# ---------------------------------------------------------------- data YAML
def test_check_dataset_resolves_relative_path_names_mapping_and_lists(tmp_path):
    yml = make_yolo(tmp_path / 'd', {'x': '0 0.5 0.5 0.2 0.2\n'})
    d = check_dataset(yml)
    assert d['path'] == (tmp_path / 'd').resolve() and d['names'] == ['a', 'b', 'c'] and d['nc'] == 3
    assert d['train'] == [str((tmp_path / 'd' / 'images' / 'train').resolve())]
    assert d['format'] == 'yolo' and d['eval'] is None and d['test'] == [] and d['annotations'] == {}
    assert check_dataset(d)['train'] == d['train']  # idempotent on its own output


@pytest.mark.parametrize('text,err,needle', [
    ('train: [unclosed\n', ValueError, 'invalid YAML'),
    ('- a\n- b\n', ValueError, 'mapping'),
    ('train: a\nval: a\nnc: 2\nnames: [x]\n', ValueError, 'nc is 2 but 1 names'),
    ('train: a\nval: missing_dir\nnc: 1\n', FileNotFoundError, 'val source'),
    ('train: a\nval: a\nnc: 1\nformat: kitti\n', ValueError, "format 'kitti'"),
])
def test_bad_data_yaml_gives_one_line_error_naming_the_file(tmp_path, text, err, needle):
    (tmp_path / 'a').mkdir()
    yml = write_yaml(tmp_path / 'bad.yaml', text)
    with pytest.raises(err) as e:
        check_dataset(yml)
    assert needle in str(e.value) and 'bad.yaml' in str(e.value) and '\n' not in str(e.value)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.yaml'):
        check_dataset(tmp_path / 'nope.yaml')


def test_datasets_env_reroots_built_in_yamls_only(tmp_path, monkeypatch, capsys):
    """$YOLOV5_FREEZE_DATASETS moves data/*.yaml's ``../datasets/...`` roots, bare names included; nothing else."""
    from utils.data.config import REPO, datasets_override
    main = tmp_path / 'ds' / 'VOC' / 'VOCdevkit' / 'VOC2007' / 'ImageSets' / 'Main'
    main.mkdir(parents=True)
    (main / 'test.txt').write_text('000001\n')
    (main / 'trainval.txt').write_text('000002\n')  # every source present: voc.yaml's download: stays unused
    main12 = tmp_path / 'ds' / 'VOC' / 'VOCdevkit' / 'VOC2012' / 'ImageSets' / 'Main'
    main12.mkdir(parents=True)
    (main12 / 'trainval.txt').write_text('2008_000001\n')
    monkeypatch.setenv('YOLOV5_FREEZE_DATASETS', str(tmp_path / 'ds'))
    for name in ('voc.yaml', REPO / 'data' / 'voc.yaml'):
        d = check_dataset(name)
        assert d['path'] == tmp_path / 'ds' / 'VOC' and d['eval'] == 'voc07'
        assert d['val'] == [str(main / 'test.txt')] and d['train'][1].endswith('VOC2012/ImageSets/Main/trainval.txt')
    assert capsys.readouterr().out == ''  # says nothing extra
    own = tmp_path / 'own' / 'd.yaml'
    assert datasets_override('../datasets/x', own) == '../datasets/x'  # not a built-in YAML: as written
    built_in = REPO / 'data' / 'coco.yaml'
    assert datasets_override('../datasets/coco', built_in) == tmp_path / 'ds' / 'coco'
    assert datasets_override('../other/coco', built_in) == '../other/coco'  # only ../datasets/ moves
    assert datasets_override('/abs/coco', built_in) == '/abs/coco'
    monkeypatch.setenv('YOLOV5_FREEZE_DATASETS', 'rel')  # relative to the working directory, not to data/
    assert datasets_override('../datasets/VOC', built_in) == Path.cwd() / 'rel' / 'VOC'
    monkeypatch.delenv('YOLOV5_FREEZE_DATASETS')
    assert datasets_override('../datasets/VOC', built_in) == '../datasets/VOC'


def test_hyp_files_have_yolov5_keys_and_defaults():
    scratch, finetune = load_hyp('data/hyps/hyp.scratch.yaml'), load_hyp('data/hyps/hyp.finetune.yaml')
    assert (scratch['lr0'], scratch['momentum'], scratch['box'], scratch['anchor_t'], scratch['mosaic']) == \
        (0.01, 0.937, 0.05, 4.0, 1.0)
    assert finetune['lr0'] == 0.0032 and finetune['mixup'] == 0.243
    with pytest.raises(ValueError, match='missing keys'):
        load_hyp({'lr0': 0.1})


# ---------------------------------------------------------------- YOLO format and bad input
def test_every_bad_input_is_a_counted_skip_with_reason(tmp_path):
    items = {'good': '0 0.5 0.5 0.2 0.2\n1 0.25 0.25 0.1 0.1\n', 'cols': '0 0.5 0.5 0.2\n',
             'cls': '3 0.5 0.5 0.2 0.2\n', 'range': '0 1.4 0.5 0.2 0.2\n', 'text': '0 a b c d\n',
             'zero': '0 0.5 0.5 0.0 0.2\n1 0.5 0.5 0.3 0.3\n', 'dup': '2 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n',
             'nolabel': None, 'empty': '', 'corrupt': '0 0.5 0.5 0.2 0.2\n', 'trunc': '0 0.5 0.5 0.2 0.2\n'}
    yml = make_yolo(tmp_path, items)
    img_dir = tmp_path / 'images' / 'train'
    (img_dir / 'corrupt.png').write_bytes(b'definitely not an image')
    ok, buf = cv2.imencode('.jpg', np.full((40, 40, 3), 50, np.uint8))
    (img_dir / 'trunc.jpg').write_bytes(buf.tobytes()[:-200])
    (img_dir / 'trunc.png').unlink()
    (tmp_path / 'labels' / 'train' / 'trunc.txt').write_text('0 0.5 0.5 0.2 0.2\n')
    records, rep = load_records(check_dataset(yml)['train'], check_dataset(yml), use_cache=False, verbose=False)
    kept = {Path(r.im_file).stem: r for r in records}
    assert set(kept) == {'good', 'zero', 'dup', 'nolabel', 'empty'}
    assert (rep.images, rep.missing, rep.empty, rep.corrupt, rep.dropped) == (11, 1, 1, 6, 2)
    reasons = {Path(f).stem: r for f, r in rep.messages}
    assert 'expected 5 columns' in reasons['cols'] and 'class id 3' in reasons['cls']
    assert 'outside [0, 1]' in reasons['range'] and 'non-numeric' in reasons['text']
    assert 'unreadable image' in reasons['corrupt'] and 'truncated JPEG' in reasons['trunc']
    assert 'zero-size' in reasons['zero'] and 'duplicate' in reasons['dup'] and 'missing' in reasons['nolabel']
    assert kept['zero'].cls.tolist() == [1] and kept['dup'].cls.tolist() == [2]
    assert np.allclose(kept['good'].boxes, [[0.5, 0.5, 0.2, 0.2], [0.25, 0.25, 0.1, 0.1]])
    assert rep.summary().startswith('11 images, 8 labels found, 1 missing, 1 empty, 6 corrupt')


def test_loader_survives_an_image_that_breaks_after_scanning(tmp_path):
    yml = make_yolo(tmp_path, {f'i{k}': '0 0.5 0.5 0.4 0.4\n' for k in range(4)})
    d = check_dataset(yml)
    loader, ds = create_dataloader(d['train'], 64, 2, 32, augment=True, data=d, verbose=False)
    (tmp_path / 'images' / 'train' / 'i1.png').write_bytes(b'gone bad')
    batches = list(loader)
    assert sum(len(b[0]) for b in batches) == 4


def test_label_cache_is_used_rebuilt_when_stale_and_ignored_when_broken(tmp_path):
    make_yolo(tmp_path, {'a': '0 0.5 0.5 0.2 0.2\n', 'b': '1 0.5 0.5 0.2 0.2\n'})
    src = str(tmp_path / 'images' / 'train')
    cache = tmp_path / 'labels' / 'train.cache'
    recs, rep, cached = scan_source(src, 'yolo', 3, None)
    assert not cached and cache.is_file()
    recs2, _, cached = scan_source(src, 'yolo', 3, None)
    assert cached and [r.cls.tolist() for r in recs2] == [r.cls.tolist() for r in recs]
    label = tmp_path / 'labels' / 'train' / 'b.txt'
    label.write_text('2 0.5 0.5 0.2 0.2\n2 0.1 0.1 0.1 0.1\n')
    recs3, _, cached = scan_source(src, 'yolo', 3, None)
    assert not cached and recs3[1].cls.tolist() == [2, 2]
    cache.write_text('{broken')
    assert not scan_source(src, 'yolo', 3, None)[2]
    assert scan_source(src, 'yolo', 3, None)[2]


def test_cache_not_written_into_read_only_folder(tmp_path):
    make_yolo(tmp_path, {'a': '0 0.5 0.5 0.2 0.2\n'})
    labels = tmp_path / 'labels'
    os.chmod(labels, 0o555)
    try:
        scan_source(str(tmp_path / 'images' / 'train'), 'yolo', 3, None)
        assert not (labels / 'train.cache').exists()
    finally:
        os.chmod(labels, 0o755)


# ---------------------------------------------------------------- VOC
def voc_yaml(tmp_path, root):
    return write_yaml(tmp_path / 'voc.yaml', f'path: {root}\nformat: voc\ntrain:\n'
                      '  - VOCdevkit/VOC2007/ImageSets/Main/trainval.txt\n'
                      '  - VOCdevkit/VOC2012/ImageSets/Main/trainval.txt\n'
                      f'val: VOCdevkit/VOC2007/ImageSets/Main/test.txt\nnc: 20\nnames: {VOC_NAMES}\n')


@needs_voc
def test_voc_devkit_years_combine_with_hand_checked_boxes(tmp_path):
    d = check_dataset(voc_yaml(tmp_path, VOC.parent))
    assert d['format'] == 'voc' and d['eval'] == 'voc07' and len(d['train']) == 2
    recs, rep = load_records(d['train'], d, use_cache=False, verbose=False)
    assert rep.images == 2 and rep.corrupt == 0
    dog_person, train = recs
    assert dog_person.shape == (500, 353) and train.shape == (500, 335)
    assert [VOC_NAMES[c] for c in dog_person.cls] == ['dog', 'person'] and VOC_NAMES[train.cls[0]] == 'train'
    px = xywhn2xyxy(dog_person.boxes.astype(np.float64), 353, 500)
    assert np.allclose(px, [[47, 239, 195, 371], [7, 11, 352, 498]], atol=1e-3)  # 1-based -> pixel edges
    assert np.allclose(xywhn2xyxy(train.boxes.astype(np.float64), 335, 500), [[138, 199, 207, 301]], atol=1e-3)
    assert not dog_person.difficult.any()


@needs_voc
def test_voc_difficult_flag_reaches_records_and_val_targets_but_not_training(tmp_path):
    root = tmp_path / 'VOC'
    shutil.copytree(VOC, root / 'VOCdevkit')
    xml = root / 'VOCdevkit' / 'VOC2007' / 'Annotations' / '000001.xml'
    xml.write_text(xml.read_text().replace('<difficult>0</difficult>', '<difficult>1</difficult>', 1))
    d = check_dataset(voc_yaml(tmp_path, root))
    _, val = create_dataloader(d['val'], 128, 1, 32, data=d, verbose=False)
    assert val.records[0].difficult.tolist() == [True, False]
    assert len(val[0][1]) == 2  # val targets: all boxes in record order, difficult included
    _, train = create_dataloader(d['val'], 128, 1, 32, augment=True, data=d, verbose=False)
    assert train.labels[0][:, 0].tolist() == [VOC_NAMES.index('person')]
    _, keep = create_dataloader(d['val'], 128, 1, 32, augment=True, data=d, keep_difficult=True, verbose=False)
    assert len(keep.labels[0]) == 2


def test_training_labels_leave_out_crowd_always_and_difficult_unless_kept():
    rec = Record('x.jpg', (100, 100), cls=np.array([0, 1, 2]), boxes=np.full((3, 4), 0.5, np.float32),
                 difficult=np.array([False, True, False]), crowd=np.array([False, False, True]))
    classes = {(augment, keep): DetectionDataset._training_labels(rec, augment, keep, False)[:, 0].tolist()
               for augment in (True, False) for keep in (True, False)}
    assert classes == {(True, False): [0], (True, True): [0, 1], (False, False): [0, 1, 2], (False, True): [0, 1, 2]}


@needs_voc
def test_voc_unknown_class_and_broken_xml_are_counted_skips(tmp_path):
    root = tmp_path / 'VOC'
    shutil.copytree(VOC, root / 'VOCdevkit')
    ann = root / 'VOCdevkit' / 'VOC2007' / 'Annotations' / '000001.xml'
    ann.write_text(ann.read_text().replace('<name>dog</name>', '<name>dragon</name>'))
    (root / 'VOCdevkit' / 'VOC2012' / 'Annotations' / '000001.xml').write_text('<annotation><object>')
    d = check_dataset(voc_yaml(tmp_path, root))
    with pytest.raises(ValueError, match='no usable images'):
        load_records(d['train'], d, use_cache=False, verbose=False)
    _, rep = scan_source(d['train'][0], 'voc', 20, VOC_NAMES, use_cache=False)[:2]
    assert rep.corrupt == 1 and "unknown class 'dragon'" in rep.messages[0][1]


# ---------------------------------------------------------------- COCO
@needs_coco
def test_coco64dev_yaml_exposes_official_json_for_pycocotools():
    d = check_dataset(COCO64 / 'coco64dev.yaml')
    assert d['annotations']['val'].resolve() == (COCO64 / 'annotations' / 'instances_train2017.json').resolve()
    assert d['eval'] == 'coco' and d['nc'] == 80 and d['names'][79] == 'toothbrush'


@needs_coco
def test_coco_json_and_yolo_labels_agree_box_for_box():
    d = check_dataset(COCO64 / 'coco64dev.yaml')
    yolo, _ = load_records(d['val'], d, verbose=False)
    coco, rep = load_records(d['val'], {**d, 'format': 'coco'}, verbose=False)
    assert len(yolo) == len(coco) == 64 and rep.corrupt == 0
    assert sum(int(r.crowd.sum()) for r in coco) == 7 and sum(len(r.cls) for r in coco) == 430
    by_file = {r.im_file: r for r in yolo}
    for c in coco:
        y = by_file[c.im_file]
        assert c.shape == y.shape and c.image_id == y.image_id == int(Path(c.im_file).stem)
        a = np.concatenate((c.cls[~c.crowd, None], c.boxes[~c.crowd]), 1)
        b = np.concatenate((y.cls[:, None], y.boxes), 1)
        a, b = a[np.lexsort(a.T[::-1])], b[np.lexsort(b.T[::-1])]
        assert a.shape == b.shape and np.array_equal(a[:, 0], b[:, 0]), c.im_file
        assert np.abs(a[:, 1:] - b[:, 1:]).max(initial=0) < 2e-3, c.im_file


@needs_coco
def test_coco_format_yaml_with_category_mapping_and_crowd(tmp_path):
    yml = write_yaml(tmp_path / 'c.yaml', f'path: {COCO64}\nformat: coco\ntrain: images/train2017\n'
                     'val: images/train2017\nannotations: {train: annotations/instances_train2017.json, '
                     'val: annotations/instances_train2017.json}\n')
    d = check_dataset(yml)
    assert d['nc'] == 80 and d['names'][0] == 'person' and d['names'][-1] == 'toothbrush' and d['eval'] == 'coco'
    recs, _ = load_records(d['val'], d, verbose=False)
    r = next(r for r in recs if r.image_id == 9)
    assert sorted(set(r.cls.tolist())) == [45, 49, 50]  # bowl 51 -> 45, orange 55 -> 49, broccoli 56 -> 50
    assert not list(COCO64.rglob('*.cache'))  # shared data is read-only: no cache written there


def test_coco_unknown_category_dropped_and_missing_json_is_an_error(tmp_path):
    make_yolo(tmp_path, {'1': None})
    js = {'images': [{'id': 1, 'file_name': '1.png', 'width': 80, 'height': 60}],
          'annotations': [{'id': 1, 'image_id': 1, 'category_id': 7, 'bbox': [10, 10, 20, 20], 'iscrowd': 0},
                          {'id': 2, 'image_id': 1, 'category_id': 99, 'bbox': [0, 0, 5, 5], 'iscrowd': 0}],
          'categories': [{'id': 7, 'name': 'cat'}]}
    (tmp_path / 'i.json').write_text(json.dumps(js))
    d = check_dataset({'path': str(tmp_path), 'format': 'coco', 'train': 'images/train', 'val': 'images/train',
                       'annotations': {'train': 'i.json', 'val': 'i.json'}})
    recs, rep = load_records(d['val'], d, verbose=False)
    assert d['names'] == ['cat'] and recs[0].cls.tolist() == [0] and rep.dropped == 1
    assert np.allclose(recs[0].boxes, [[20 / 80, 20 / 60, 20 / 80, 20 / 60]])
    with pytest.raises(FileNotFoundError, match='instances JSON'):
        check_dataset({'path': str(tmp_path), 'format': 'coco', 'train': 'images/train', 'val': 'images/train'})


# ---------------------------------------------------------------- loader
@pytest.fixture(scope='module')
def shapes_data(tmp_path_factory):
    root = ensure_shapes(tmp_path_factory.mktemp('s') / 'shapes', splits={'train': 24, 'val': 10}, img_size=320)
    return check_dataset({'path': str(root), 'train': 'images/train', 'val': 'images/val', 'nc': 4,
                          'names': ['circle', 'square', 'triangle', 'star']})


def test_train_batches_have_yolov5_layout_and_are_reproducible(shapes_data):
    d = shapes_data

    def first_batch(workers):
        loader, ds = create_dataloader(d['train'], 128, 4, 32, augment=True, shuffle=True, seed=5, data=d,
                                       workers=workers, verbose=False)
        return next(iter(loader))
    imgs, targets, paths, shapes = first_batch(0)
    assert imgs.dtype == torch.uint8 and imgs.shape == (4, 3, 128, 128)
    assert targets.dtype == torch.float32 and targets.shape[1] == 6 and len(targets)
    assert set(targets[:, 0].long().tolist()) <= {0, 1, 2, 3} and ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()
    assert len(paths) == len(shapes) == 4
    again = first_batch(0)
    assert torch.equal(imgs, again[0]) and torch.equal(targets, again[1])
    w1, w2 = first_batch(1), first_batch(2)  # the same batch whichever process loads each image
    assert torch.equal(w1[0], imgs) and torch.equal(w1[1], targets)
    assert torch.equal(w2[0], imgs) and torch.equal(w2[1], targets)


def test_close_mosaic_switch_gives_letterboxed_train_images(shapes_data):
    loader, ds = create_dataloader(shapes_data['train'], 128, 4, 32, augment=True, data=shapes_data,
                                   verbose=False)
    ds.mosaic = False
    imgs, targets, paths, metas = next(iter(loader))
    assert imgs.shape == (4, 3, 128, 128) and [m.path for m in metas] == list(paths)


def test_val_rect_targets_map_back_to_original_boxes(shapes_data, tmp_path):
    # a non-square image so rect batches and padding matter
    src = Path(shapes_data['val'][0])
    root = tmp_path / 'd'
    (root / 'images').mkdir(parents=True)
    (root / 'labels').mkdir()
    for k, p in enumerate(sorted(src.glob('*.jpg'))[:3]):
        im = cv2.imread(str(p))[: 160 + 40 * k]  # crop the height
        cv2.imwrite(str(root / 'images' / p.name), im)
        h = im.shape[0]
        (root / 'labels' / f'{p.stem}.txt').write_text(f'1 0.5 {100 / h:.6f} 0.25 {60 / h:.6f}\n0 0.2 0.3 0.1 0.1\n')
    d = check_dataset({'path': str(root), 'train': 'images', 'val': 'images', 'nc': 4})
    loader, ds = create_dataloader(d['val'], 160, 2, 32, rect=True, data=d, verbose=False)
    for imgs, targets, paths, metas in loader:
        for i, meta in enumerate(metas):
            rec = ds.records[meta.index]  # ground truth found by index
            assert rec.im_file == paths[i] == meta.path and meta.orig_hw == rec.shape
            t = targets[targets[:, 0] == i]
            assert t[:, 1].long().tolist() == rec.cls.tolist()  # all boxes, record order
            h1, w1 = imgs.shape[2:]
            boxes = xywhn2xyxy(t[:, 2:].clone(), w1, h1)
            back = scale_boxes(boxes, meta)
            expect = xywhn2xyxy(torch.from_numpy(rec.boxes).float(), rec.shape[1], rec.shape[0])
            assert torch.allclose(back, expect, atol=1.5), (back, expect)
        assert imgs.shape[2] < imgs.shape[3]  # rect: wider than tall


def test_ram_cache_gives_same_val_batches(shapes_data):
    a = next(iter(create_dataloader(shapes_data['val'], 96, 5, 32, data=shapes_data, verbose=False)[0]))
    b = next(iter(create_dataloader(shapes_data['val'], 96, 5, 32, data=shapes_data, cache='ram',
                                    verbose=False)[0]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_auto_cache_keeps_small_sets_in_ram_and_reads_large_ones_from_disk(monkeypatch):
    shapes = [(480, 640), (640, 427)]
    assert resized_bytes(shapes, 320) == 240 * 320 * 3 + 320 * 214 * 3
    small = auto_cache(shapes, 320, available=10 ** 9)
    assert small.use and 'kept in RAM' in small.line('train: ')
    large = auto_cache(shapes, 320, available=10 * resized_bytes(shapes, 320) - 1)  # needs just over 10%
    assert not large.use and 'read from disk' in large.line() and '--cache ram' in large.line()
    monkeypatch.setattr(image_cache, 'available_memory', lambda: None)
    assert not auto_cache(shapes, 320).use  # free memory unknown: no cache


def test_auto_cache_trains_on_the_same_pixels_as_reading_from_disk(shapes_data, capsys):
    def batches(cache):
        loader, dataset = create_dataloader(shapes_data['train'], 96, 4, 32, data=shapes_data, augment=True,
                                            shuffle=True, seed=3, cache=cache, prefix='train: ')
        return dataset, [b[:2] for _, b in zip(range(3), loader)]
    cached, a = batches('auto')
    uncached, b = batches('off')
    assert cached.ims is not None and uncached.ims is None
    assert 'train: --cache auto: images kept in RAM' in capsys.readouterr().out
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, batches('auto')[1]))  # the cache is never altered


# ---------------------------------------------------------------- shapes set
def test_shapes_set_is_deterministic_complete_and_regenerated_when_incomplete(tmp_path):
    a = ensure_shapes(tmp_path / 'a', splits={'train': 5, 'val': 2})
    b = ensure_shapes(tmp_path / 'b', splits={'train': 5, 'val': 2})
    files = sorted(p.relative_to(a) for p in a.rglob('*') if p.is_file())
    assert len(files) == 15 and files == sorted(p.relative_to(b) for p in b.rglob('*') if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    rows = np.loadtxt(a / 'labels' / 'train' / 'train_0000.txt', ndmin=2)
    assert rows.shape[1] == 5 and ((rows[:, 3:] * 192 >= 30) & (rows[:, 3:] * 192 <= 121)).all()
    for f in (a / 'labels').rglob('*.txt'):  # no label hidden under a later shape
        r = np.loadtxt(f, ndmin=2)
        lo, hi = r[:, 1:3] - r[:, 3:5] / 2, r[:, 1:3] + r[:, 3:5] / 2
        wh = np.clip(np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None]), 0, None)
        area = r[:, 3] * r[:, 4]
        cover = wh.prod(2) / np.minimum(area[:, None], area[None])  # of the smaller box
        assert (cover[~np.eye(len(r), dtype=bool)] < 0.35).all(), f  # placements < 0.25; tight boxes are smaller
    (a / 'labels' / 'val' / 'val_0001.txt').unlink()
    ensure_shapes(tmp_path / 'a', splits={'train': 5, 'val': 2})
    assert (a / 'labels' / 'val' / 'val_0001.txt').read_bytes() == (b / 'labels' / 'val' / 'val_0001.txt').read_bytes()


def test_shapes_yaml_generates_under_repo_datasets():
    d = check_dataset('data/shapes.yaml')
    root = Path(__file__).resolve().parents[1] / 'datasets' / 'shapes'
    assert d['path'] == root and d['names'] == ['circle', 'square', 'triangle', 'star']
    assert len(list((root / 'images' / 'train').glob('*.jpg'))) == 400
    assert len(list((root / 'labels' / 'val').glob('*.txt'))) == 64


def test_yolov5_segment_rows_become_their_bounding_box(tmp_path):
    from utils.data.label_formats import read_yolo_label
    f = tmp_path / 'seg.txt'
    f.write_text('2 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n0 0.5 0.5 0.2 0.2\n')
    cls, xyxy = read_yolo_label(f, nc=3)
    assert cls.tolist() == [2, 0]
    assert np.allclose(xyxy, [[0.1, 0.2, 0.5, 0.6], [0.4, 0.4, 0.6, 0.6]])
    f.write_text('1 0.1 0.2 0.5 0.2 0.5 0.6\n1 0.1 0.2 0.3\n')
    with pytest.raises(ValueError, match='row 2: expected 5 columns'):
        read_yolo_label(f, nc=3)


def test_image_meta_identifies_each_image_and_its_placement(shapes_data, tmp_path):
    """Ground truth by index, unique ids when two folders hold the same file name, no placement for a mosaic."""
    src = sorted(Path(shapes_data['val'][0]).glob('*.jpg'))[:2]
    for folder in ('a', 'b'):
        for k, p in enumerate(src):
            (tmp_path / folder / 'images').mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / folder / 'images' / f'{k}.jpg'), cv2.imread(str(p))[:100 + 20 * k])
    d = check_dataset({'path': str(tmp_path), 'train': ['a/images', 'b/images'], 'val': ['a/images', 'b/images'],
                       'nc': 4})
    loader, ds = create_dataloader(d['val'], 96, 4, 32, data=d, rect=True, pad=0.5, verbose=False)
    _, _, paths, metas = next(iter(loader))
    assert sorted(m.index for m in metas) == [0, 1, 2, 3] and [m.path for m in metas] == list(paths)
    assert sorted(m.image_id for m in metas) == [1, 2, 3, 4]  # stems 0 and 1 twice: ids by sorted path instead
    for m in metas:
        assert ds.records[m.index].im_file == m.path and m.orig_hw == ds.records[m.index].shape
        assert all(float(p).is_integer() for p in m.pad_xy) and m.gain_xy[0] == pytest.approx(96 / max(m.orig_hw), abs=0.01)
    _, train = create_dataloader(d['train'], 96, 4, 32, data=d, augment=True, verbose=False)
    train.hyp = {**train.hyp, 'mosaic': 1.0}
    meta = train[2][3]
    assert meta.index == 2 and meta.gain_xy is None and meta.pad_xy is None  # four images: no single placement


@pytest.mark.slow
def test_a_process_exits_while_a_loader_with_kept_workers_is_still_referenced(tiny_data, tmp_path):
    """Kept workers ignore SIGTERM; a script whose kept-workers loader is a module global once waited forever at
    exit (benchmarks/val_memo.py did). The loader's exit hook ends them first."""
    script = tmp_path / 'kept.py'
    script.write_text(f"""import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from utils.data.datasets import check_dataset, create_dataloader
data = check_dataset({str(tiny_data)!r})
loader = create_dataloader(data['val'], 64, 4, 32, data=data, workers=1, keep_workers=True, verbose=False)[0]
for _ in loader:
    pass
print('pass done')
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and 'pass done' in proc.stdout, proc.stderr


def test_one_pass_loader_ends_its_workers_with_the_pass(tiny_data):
    """val.py's loader is iterated once: its workers end with the pass even while the loader is still referenced.
    Kept workers ignore SIGTERM, so workers outliving the pass would make the interpreter's exit wait for them
    forever (the suite once hung after its summary). The trainer's val loader still keeps its workers."""
    import gc
    import multiprocessing
    import val
    data = check_dataset(str(tiny_data))
    kept = create_dataloader(data['val'], 64, 4, 32, data=data, workers=1, keep_workers=True)[0]  # as the trainer's
    one_pass = val.build_dataloader(data, 'val', 64, 4, 32, 1, False)
    assert kept.persistent_workers and not one_pass.persistent_workers
    for _ in one_pass:
        pass
    assert multiprocessing.active_children() == []  # the one-pass loader's worker has ended, the loader lives on
    for _ in kept:
        pass
    assert len(multiprocessing.active_children()) == 1  # the kept loader's worker waits for the next pass
    del kept  # dropping the loader ends its kept workers (this test leaves none behind)
    gc.collect()
    assert multiprocessing.active_children() == []
