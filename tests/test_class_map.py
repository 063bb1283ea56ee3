"""Class mapping (data class <- checkpoint classes): names, VOC/COCO synonyms, the data YAML's class_map key."""
import pytest
import yaml

from utils.freeze.transfer import build_class_map, canonical, check_class_map_spec
from utils.data.datasets import check_dataset

COCO = ['person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'dog', 'cat',
        'couch', 'potted plant', 'dining table', 'tv']
VOC = ['aeroplane', 'bicycle', 'motorbike', 'sofa', 'tvmonitor', 'diningtable', 'pottedplant', 'Person', 'horse']


def test_names_match_after_normalisation_and_voc_synonyms():
    cmap = build_class_map(VOC, COCO)
    assert cmap.sources == ((4,), (1,), (3,), (11,), (14,), (13,), (12,), (0,), ())
    assert cmap.mapped == list(range(8)) and cmap.unmapped == [8] and not cmap.explicit
    assert cmap.describe()[0] == 'aeroplane <- airplane' and cmap.describe()[-1] == 'horse: new'
    assert cmap.summary() == '8/9 data classes mapped to checkpoint classes; no source (new): horse'
    assert canonical('Dining_Table') == canonical('dining-table') == 'diningtable'
    back = build_class_map(COCO[:5], VOC)  # a VOC checkpoint to COCO names: the synonyms work both ways
    assert back.sources == ((7,), (1,), (), (2,), (0,))


def test_identical_classes_are_the_identity_map():
    assert build_class_map(COCO, COCO).is_identity
    assert not build_class_map(COCO[::-1], COCO).is_identity


def test_class_map_single_name_list_and_empty_override_the_automatic_match():
    spec = {'vehicle': ['car', 'Bus', 'motorbike'], 'pet': 'dog', 'cat': 'dog', 'person': []}
    cmap = build_class_map(['person', 'vehicle', 'pet', 'cat'], COCO, spec, where='mine.yaml')
    assert cmap.sources == ((), (2, 5, 3), (9,), (9,))  # explicit 'cat: dog' beats the automatic 'cat'
    assert cmap.explicit == {0, 1, 2, 3}
    assert cmap.describe() == ['person: new (class_map)', 'vehicle <- car, bus, motorcycle (class_map)',
                               'pet <- dog (class_map)', 'cat <- dog (class_map)']
    assert cmap.source_list(1) == 'car+bus+motorcycle' and cmap.source_list(0) == 'new'


@pytest.mark.parametrize('off', ['none', 'None', 'off', False])
def test_class_map_none_turns_mapping_off(off):
    cmap = build_class_map(['person', 'car'], COCO, off)
    assert cmap.off and cmap.sources == ((), ()) and not cmap.is_identity
    assert cmap.summary() == 'class mapping off (class_map: none)'


@pytest.mark.parametrize('spec, words', [
    ({'vehicle': ['car', 'truk']}, ["mine.yaml: class_map 'vehicle': 'truk' is not a class of the checkpoint",
                                   'closest: truck']),
    ({'vehicle': 'aeroplan'}, ["'aeroplan' is not a class", 'closest: airplane']),
    ({'vehicles': 'car'}, ["class_map key 'vehicles' is not a data class", 'closest data names: vehicle']),
    ({'vehicle': None}, ["class_map 'vehicle' must be a checkpoint class name or a list"]),
    ({'vehicle': [2, 7]}, ["class_map 'vehicle' must be a checkpoint class name or a list"]),
    (['car'], ['class_map must be a mapping']),
])
def test_bad_class_map_entries_give_one_line_errors(spec, words):
    with pytest.raises(ValueError) as e:
        build_class_map(['person', 'vehicle'], COCO, spec, where='mine.yaml')
    msg = str(e.value)
    assert msg.startswith('mine.yaml: ') and '\n' not in msg
    for w in words:
        assert w in msg


def test_check_dataset_validates_class_map_early(tmp_path):
    (tmp_path / 'images').mkdir()
    cfg = {'path': '.', 'train': 'images', 'val': 'images', 'names': ['person', 'vehicle'],
           'class_map': {'vehicle': ['car', 'bus']}}
    f = tmp_path / 'd.yaml'
    f.write_text(yaml.safe_dump(cfg))
    assert check_dataset(f)['class_map'] == {'vehicle': ['car', 'bus']}
    f.write_text(yaml.safe_dump(cfg).replace('class_map:\n  vehicle', 'class_map:\n  vehicel'))
    with pytest.raises(ValueError, match=r"d\.yaml: class_map key 'vehicel' is not a data class"):
        check_dataset(f)
    f.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != 'class_map'}) + 'class_map: none\n')
    assert check_dataset(f)['class_map'] == 'none'
    assert check_class_map_spec(None, ['a']) is None


def test_remap_detections_merges_sources_by_class_aware_nms_and_drops_the_rest():
    import torch
    from utils.freeze.transfer import remap_detections
    cmap = build_class_map(['vehicle', 'person', 'pet'], COCO, {'vehicle': ['car', 'truck'], 'pet': 'dog'})
    det = torch.tensor([[0, 0, 10, 10, 0.9, 2],    # car
                        [1, 0, 10, 10, 0.8, 7],    # truck on the same object: merged into the car box
                        [50, 50, 60, 60, 0.7, 7],  # truck elsewhere: kept
                        [0, 0, 10, 10, 0.6, 0],    # person on the car box: another data class, kept
                        [5, 5, 9, 9, 0.5, 10]], dtype=torch.float64)  # cat: no data class, dropped
    out = remap_detections(det, cmap, iou_thres=0.5)
    assert out.tolist() == [[0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.7, 0], [0, 0, 10, 10, 0.6, 1]]
    assert remap_detections(det, cmap, 0.5, max_det=1).shape == (1, 6)
    assert remap_detections(det[4:], cmap, 0.5).shape == (0, 6)
