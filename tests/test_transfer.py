"""Class-mapped Detect transfer: exact 1:1 rows, kept member rows folded by Detect, fresh rows, --cfg anchors,
grouped models saved and rebuilt, and the transfer set."""
from pathlib import Path

import pytest
import torch

from models.yolo import Model
from utils.weights.checkpoint import FORMAT, load_model, read_weights, save_checkpoint
from utils.freeze.transfer import build_class_map, class_rows_for, format_transfer_report, transfer_weights

SHARED = Path(__file__).resolve().parents[1].parent / 'shared'
COCO64 = SHARED / 'data' / 'coco64dev'
COCO_NAMES = [f'c{i}' for i in range(80)]
COCO_NAMES[:10] = ['person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'dog']


@pytest.fixture(scope='module')
def source():
    """A v6 yolov5n with 80 classes, randomly initialised (seeded) and given distinct class biases."""
    torch.manual_seed(1)
    m = Model('v6/yolov5n.yaml').eval()
    with torch.no_grad():
        for conv in m.model[-1].m:
            conv.bias.add_(torch.randn_like(conv.bias))
    m.names = list(COCO_NAMES)
    return m


def scores(model, x):
    with torch.no_grad():
        return model.eval()(x)[0]


def transferred(source, data_names, spec=None, keep_rows=True, cfg=None):
    cmap = build_class_map(data_names, source.names, spec, where='test.yaml')
    rows = class_rows_for(cmap, source.yaml) if keep_rows else []
    torch.manual_seed(2)
    model = Model(cfg or source.yaml, nc=len(data_names), class_rows=rows)
    report = transfer_weights(model, source.state_dict(), 'yolov5n.pt', cmap, source.yaml, keep_anchors=bool(cfg))
    return model, report


@pytest.mark.slow
def test_one_to_one_match_copies_rows_exactly_so_scores_equal_the_source_class(source):
    model, report = transferred(source, ['dog', 'Person', 'motor_bike', 'unicorn'])
    for i in range(3):
        for p in ('weight', 'bias'):
            dst, src = model.model[24].m[i].state_dict()[p], source.model[24].m[i].state_dict()[p]
            for a in range(3):
                assert torch.equal(dst[a * 9:a * 9 + 5], src[a * 85:a * 85 + 5])  # box + objectness
                for k, j in enumerate((9, 0, 3)):  # dog, person, motorcycle
                    assert torch.equal(dst[a * 9 + 5 + k], src[a * 85 + 5 + j])
    x = torch.rand(2, 3, 128, 96)
    new, old = scores(model, x), scores(source, x)
    assert torch.allclose(new[..., :5], old[..., :5], rtol=0, atol=1e-6)
    for k, j in enumerate((9, 0, 3)):
        assert torch.allclose(new[..., 5 + k], old[..., 5 + j], rtol=0, atol=1e-6)
    assert not torch.allclose(new[..., 8], old[..., 5:].amax(-1))  # 'unicorn' kept its fresh rows
    text = format_transfer_report(report)
    assert 'class rows from the checkpoint for 3/4 classes' in text
    assert text.endswith('Class rows (data <- checkpoint): dog <- dog | Person <- person | motor_bike <- motorcycle'
                         ' | unicorn: new')


def test_many_to_one_keeps_member_rows_and_scores_their_max(source):
    model, report = transferred(source, ['person', 'vehicle'], {'vehicle': ['car', 'bus', 'truck']})
    assert model.model[24].class_rows == (1, 3) and model.model[24].m[0].weight.shape[0] == 3 * (5 + 4)
    x = torch.rand(1, 3, 96, 128)
    new, old = scores(model, x), scores(source, x)
    assert torch.allclose(new[..., 5], old[..., 5], rtol=0, atol=1e-6)
    assert torch.allclose(new[..., 6], old[..., [7, 10, 12]].amax(-1), rtol=0, atol=1e-6)
    assert format_transfer_report(report).endswith('person <- person | vehicle <- max(car, bus, truck)')
    model.train()
    raw = model(x)
    assert [r.shape[-1] for r in raw] == [7, 7, 7]  # the loss sees 5 + nc outputs


def test_many_to_one_in_a_one_row_head_averages_the_member_rows(source):
    model, report = transferred(source, ['vehicle'], {'vehicle': ['car', 'bus']}, keep_rows=False)
    w, s = model.model[24].m[1].weight, source.model[24].m[1].weight
    assert torch.allclose(w[5], (s[5 + 2] + s[5 + 5]) / 2) and torch.equal(w[6 + 4], s[85 + 4])
    assert torch.allclose(w[6 + 5], (s[85 + 5 + 2] + s[85 + 5 + 5]) / 2)
    assert format_transfer_report(report).endswith('vehicle <- mean(car, bus)')


def test_mapping_off_keeps_fresh_class_rows(source):
    model, report = transferred(source, ['person', 'car'], 'none')
    torch.manual_seed(2)  # the seed transferred() builds with
    fresh = Model('v6/yolov5n.yaml', nc=2)
    assert torch.equal(model.model[24].m[0].weight[:5], source.model[24].m[0].weight[:5])
    assert torch.equal(model.model[24].m[0].bias[5:7], fresh.model[24].m[0].bias[5:7])  # the prior bias
    assert 'class rows from the checkpoint for 0/2 classes' in format_transfer_report(report)


def test_cfg_anchors_are_kept_with_weights(source):
    cfg = dict(source.yaml, anchors=[[8, 9, 17, 20, 30, 25], [40, 60, 70, 50, 60, 120],
                                     [120, 90, 160, 200, 380, 330]])
    model, report = transferred(source, ['person'], cfg=cfg)
    expected = Model(cfg, nc=1).model[24].anchors
    assert torch.equal(model.model[24].anchors, expected)
    assert not torch.equal(model.model[24].anchors, source.model[24].anchors)
    assert report['anchors_kept'] == ['model.24.anchors'] and 'Anchors from --cfg kept' in format_transfer_report(report)


@pytest.mark.slow
def test_grouped_model_saves_rebuilds_and_transfers_again(tmp_path, source):
    model, _ = transferred(source, ['person', 'vehicle'], {'vehicle': ['car', 'bus', 'truck']})
    ckpt = {'format': FORMAT, 'yaml': model.yaml, 'names': ['person', 'vehicle'], 'nc': 2,
            'model': model.state_dict(), 'ema': None}
    path = save_checkpoint(ckpt, tmp_path / 'grouped.pt')
    loaded = load_model(path)
    assert list(loaded.state_dict()) == list(model.state_dict())  # names stay YOLOv5's model.N....
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(scores(loaded, x), scores(model, x))
    w = read_weights(path)  # the grouped checkpoint as a source: its vehicle rows travel together
    again = build_class_map(['car-ish', 'person'], w['names'], {'car-ish': 'vehicle'})
    m2 = Model(w['yaml'], nc=2, class_rows=class_rows_for(again, w['yaml']))
    transfer_weights(m2, w['state_dict'], class_map=again, source_yaml=w['yaml'])
    out2, out1 = scores(m2, x), scores(model, x)
    assert torch.allclose(out2[..., 5], out1[..., 6], rtol=0, atol=1e-6)
    assert torch.allclose(out2[..., 6], out1[..., 5], rtol=0, atol=1e-6)


@pytest.mark.skipif(not COCO64.is_dir(), reason='../shared/data/coco64dev not present')
def test_transfer_sets_are_built_once_split_and_mapped(tmp_path):
    from utils.data.datasets import check_dataset
    from utils.freeze.transfer_set import make_transfer_set
    path = make_transfer_set('grouped', tmp_path / 'g', COCO64)
    data = check_dataset(path)
    assert data['names'] == ['person', 'vehicle', 'animal'] and data['class_map']['vehicle'][0] == 'bicycle'
    train, val = (sorted(p.name for p in (tmp_path / 'g' / 'images' / s).iterdir()) for s in ('train', 'val'))
    assert len(train) == len(val) == 32 and not set(train) & set(val)
    for split in ('train', 'val'):  # every class in both halves, ids 0-2 only
        ids = {int(r.split()[0]) for f in (tmp_path / 'g' / 'labels' / split).glob('*.txt')
               for r in f.read_text().splitlines()}
        assert ids == {0, 1, 2}
    stamp = path.stat().st_mtime_ns
    assert make_transfer_set('grouped', tmp_path / 'g', COCO64) == path and path.stat().st_mtime_ns == stamp
    renamed = check_dataset(make_transfer_set('renamed', tmp_path / 'r', COCO64))
    coco = check_dataset(COCO64 / 'coco64dev.yaml')['names']
    cmap = build_class_map(renamed['names'], coco, renamed['class_map'])
    assert renamed['class_map'] is None and cmap.sources == ((0,), (3,), (16,))
    assert not list(COCO64.rglob('*.cache'))
