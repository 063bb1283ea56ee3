"""The hero command imports few project modules: a reader follows a run through a handful of files.

Counted: the project's own modules (``.py`` files of this repository, package ``__init__`` files left out) in
``sys.modules`` at the end of a short run of ``train.py --weights <official> --data <VOC> --freeze 10``.
"""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
VOC = SHARED / 'data' / 'voc07mini' / 'VOCdevkit' / 'VOC2007'
WEIGHTS = SHARED / 'weights' / 'yolov5n.pt'
MOST_MODULES = 35  # 59 before issue 32, 42 after its training-loop step; the aim is 35

COUNT = '''
    import atexit, os, sys
    root = os.path.abspath('.') + os.sep

    def report():
        own = sorted(n for n, m in list(sys.modules.items())
                     if (getattr(m, '__file__', None) or '').startswith(root) and '.venv' not in m.__file__
                     and not m.__file__.endswith('__init__.py'))
        print('PROJECT_MODULES', len(own), ' '.join(own))

    atexit.register(report)
    import train
    train.cli(sys.argv[1:])
'''


def tiny_voc(root, n_train=4, n_val=2):
    """A VOC devkit of a few genuine VOC2007 images (copied from ../shared/data/voc07mini) and its data YAML."""
    main = root / 'VOCdevkit' / 'VOC2007'
    for sub in ('ImageSets/Main', 'JPEGImages', 'Annotations'):
        (main / sub).mkdir(parents=True)
    for split, n in (('trainval', n_train), ('test', n_val)):
        ids = (VOC / 'ImageSets' / 'Main' / f'{split}.txt').read_text().split()[:n]
        (main / 'ImageSets' / 'Main' / f'{split}.txt').write_text('\n'.join(ids) + '\n')
        for i in ids:
            shutil.copy(VOC / 'JPEGImages' / f'{i}.jpg', main / 'JPEGImages')
            shutil.copy(VOC / 'Annotations' / f'{i}.xml', main / 'Annotations')
    names = (SHARED / 'data' / 'voc07mini' / 'voc07mini.yaml').read_text().split('names:')[1]
    (root / 'voc.yaml').write_text('path: .\nformat: voc\neval: voc07\ntrain: VOCdevkit/VOC2007/ImageSets/Main/'
                                   'trainval.txt\nval: VOCdevkit/VOC2007/ImageSets/Main/test.txt\nnc: 20\n'
                                   f'names:{names}')
    return root / 'voc.yaml'


@pytest.mark.slow
@pytest.mark.skipif(not (VOC.is_dir() and WEIGHTS.is_file()), reason='needs ../shared (voc07mini, yolov5n.pt)')
def test_hero_command_imports_few_project_modules(tmp_path):
    data = tiny_voc(tmp_path / 'voc')
    args = ['--weights', WEIGHTS, '--data', data, '--freeze', '10', '--epochs', '1', '--imgsz', '64',
            '--batch-size', '4', '--workers', '0', '--project', tmp_path / 'runs']
    out = subprocess.run([sys.executable, '-c', textwrap.dedent(COUNT), *map(str, args)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith('PROJECT_MODULES'))
    count, names = int(line.split()[1]), line.split()[2:]
    assert 'utils.train.trainer' in names and 'utils.eval.voc_eval' in names  # the run went through training
    assert not any(n.startswith('utils.evolve') for n in names)  # --evolve's modules load only with --evolve
    assert count <= MOST_MODULES, f'{count} project modules: {" ".join(names)}'
