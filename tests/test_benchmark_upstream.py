"""benchmarks/upstream.py: a VOC-XML data set converted to the YOLO text labels upstream YOLOv5 reads."""
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
from upstream import upstream_data_yaml  # noqa: E402

FIXTURE = ROOT.parent / 'shared' / 'data' / 'voc_fixture' / 'VOCdevkit' / 'VOC2007'

XML = """<annotation><size><width>353</width><height>500</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult>
<bndbox><xmin>48</xmin><ymin>240</ymin><xmax>195</xmax><ymax>371</ymax></bndbox></object>
<object><name>person</name><difficult>1</difficult>
<bndbox><xmin>8</xmin><ymin>12</ymin><xmax>352</xmax><ymax>498</ymax></bndbox></object>
</annotation>"""


NAMES = ['cat', 'dog', 'person']
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason='../shared/data/voc_fixture not present')


def voc_data(root, xml=XML):
    """A one-image VOC set (the fixture's image, ``xml`` as its annotation) in both splits; its data YAML."""
    year = root / 'VOCdevkit' / 'VOC2007'
    (year / 'ImageSets' / 'Main').mkdir(parents=True)
    (year / 'Annotations').mkdir()
    shutil.copytree(FIXTURE / 'JPEGImages', year / 'JPEGImages')
    (year / 'Annotations' / '000001.xml').write_text(xml)
    for split in ('trainval', 'test'):
        (year / 'ImageSets' / 'Main' / f'{split}.txt').write_text('000001\n')
    data = root / 'mini.yaml'
    lists = 'VOCdevkit/VOC2007/ImageSets/Main'
    data.write_text(yaml.safe_dump({'path': '.', 'format': 'voc', 'train': f'{lists}/trainval.txt',
                                    'val': f'{lists}/test.txt', 'nc': 3, 'names': NAMES}))
    return data, year


@needs_fixture
def test_voc_data_becomes_yolo_labels_without_difficult_objects(tmp_path):
    data, year = voc_data(tmp_path)
    out = upstream_data_yaml(data, tmp_path / 'work' / 'upstream-data.yaml')
    d = yaml.safe_load(out.read_text())
    assert d['names'] == NAMES and d['nc'] == 3 and 'format' not in d
    for split in ('train', 'val'):
        image = Path(d['path']) / d[split] / '000001.jpg'
        assert image.resolve() == (year / 'JPEGImages' / '000001.jpg').resolve()
        label = Path(str(image).replace('/images/', '/labels/')).with_suffix('.txt')  # upstream's rule
        rows = [line.split() for line in label.read_text().splitlines()]
        assert len(rows) == 1 and rows[0][0] == '1'  # the dog; the difficult person is left out
        cx, cy, w, h = map(float, rows[0][1:])
        assert cx == pytest.approx((47 + 195) / 2 / 353, abs=1e-6) and w == pytest.approx((195 - 47) / 353, abs=1e-6)
        assert cy == pytest.approx((239 + 371) / 2 / 500, abs=1e-6) and h == pytest.approx((371 - 239) / 500, abs=1e-6)


@needs_fixture
def test_a_malformed_annotation_is_a_counted_skip(tmp_path, capsys):
    data, _ = voc_data(tmp_path, xml='<annotation><object>')
    out = upstream_data_yaml(data, tmp_path / 'work' / 'upstream-data.yaml')
    assert '1 corrupt (skipped)' in capsys.readouterr().out
    d = yaml.safe_load(out.read_text())
    assert not list((Path(d['path']) / d['train']).iterdir())  # nothing copied for the skipped image


def test_a_bad_data_yaml_is_one_line_naming_it(tmp_path):
    data = tmp_path / 'broken.yaml'
    data.write_text('format: voc\nnames: [a]\n')  # no train / val entries
    with pytest.raises(SystemExit, match=r'^error: --finetune-data: .*broken.yaml: needs'):
        upstream_data_yaml(data, tmp_path / 'work' / 'upstream-data.yaml')
