"""Shared fixtures and the hypothesis profiles of the fuzz tests.

Fuzz tests run a bounded number of examples by default ("ci" profile, CI and `make test`); for a long run:
    python -m pytest tests/test_fuzz_readers.py --hypothesis-profile thorough
"""
import sys
from pathlib import Path

import pytest

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is a dev-only extra; the fuzz tests skip without it
    settings = None

if settings is not None:
    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    settings.register_profile('ci', max_examples=50, derandomize=True, **common)
    settings.register_profile('thorough', max_examples=2000, **common)
    settings.load_profile('ci')

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='session', autouse=True)
def private_cache_home(tmp_path_factory):
    """Caches that cannot go beside read-only data (utils/data/label_scan.py, utils/data/image_cache.py) go to a
    temporary
    folder during tests, never to the user's ~/.cache (subprocesses inherit it)."""
    import os
    old = os.environ.get('YOLOV5_FREEZE_CACHE')
    os.environ['YOLOV5_FREEZE_CACHE'] = str(tmp_path_factory.mktemp('cache_home'))
    yield Path(os.environ['YOLOV5_FREEZE_CACHE'])
    if old is None:
        os.environ.pop('YOLOV5_FREEZE_CACHE', None)
    else:
        os.environ['YOLOV5_FREEZE_CACHE'] = old


@pytest.fixture(scope='session', autouse=True)
def no_internet():
    """Tests never reach the internet: urllib (weights and dataset downloads, in this process and in the
    subprocesses that inherit the environment) goes through a proxy address where nothing listens, so a download
    a test did not mean to start fails at once; the tests' own servers on 127.0.0.1 are reached directly."""
    import os
    keys = ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'no_proxy', 'NO_PROXY')
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: 'http://127.0.0.1:9' for k in keys[:4]})
    os.environ.update(no_proxy='127.0.0.1,localhost', NO_PROXY='127.0.0.1,localhost')
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def shapes_yaml(root, n_train, n_val):
    """A shapes data set of ``n_train`` + ``n_val`` images at 128 px under ``root``, and its data YAML."""
    from utils.data.shapes import ensure_shapes
    ensure_shapes(root / 'shapes', splits={'train': n_train, 'val': n_val}, img_size=128)
    yaml_file = root / 'tiny.yaml'
    yaml_file.write_text('path: shapes\ntrain: images/train\nval: images/val\nnc: 4\n'
                         'names: [circle, square, triangle, star]\n')
    return yaml_file


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
    """24 images (16 train, 8 val: two batches of 8), for the runs that need more than one batch."""
    return shapes_yaml(tmp_path_factory.mktemp('tiny'), 16, 8)


@pytest.fixture(scope='session')
def tiny_shapes(tmp_path_factory):
    """12 images (8 train, 4 val: one batch of 8), for most training runs: ``trained_run`` and its fine-tunes,
    the SIGKILL resume, the image-weights resume, subprocesses."""
    return shapes_yaml(tmp_path_factory.mktemp('tiny_shapes'), 8, 4)


@pytest.fixture(scope='session')
def trained_run(tiny_shapes, tmp_path_factory):
    """The run folder of one epoch of v6/yolov5n on ``tiny_shapes`` (64 px, batch 8, plots on), trained once per
    session: the run-folder test reads it and the fine-tune tests start from its ``weights/last.pt``. Read-only:
    a test that would write into it works on a copy."""
    import train
    project = tmp_path_factory.mktemp('trained')
    train.run(data=str(tiny_shapes), cfg='v6/yolov5n.yaml', epochs=1, imgsz=64, batch_size=8, workers=0,
              noplots=False, project=str(project), name='exp', exist_ok=False)
    return project / 'exp'


@pytest.fixture(scope='session')
def train_cmd():
    """``train_cmd(data, project, *flags, epochs=2)``: the train.py command line of a tiny run (v6/yolov5n, 64 px,
    batch 4, no plots, no autoanchor)."""
    return _train_cmd


def _train_cmd(data, project, *extra, epochs=2):
    return [sys.executable, str(ROOT / 'train.py'), '--data', str(data), '--cfg', 'v6/yolov5n.yaml',
            '--epochs', str(epochs), '--imgsz', '64', '--batch-size', '4', '--workers', '0', '--noplots',
            '--noautoanchor', '--project', str(project), *extra]


@pytest.fixture(scope='session')
def official_like_file():
    """``official_like_file(folder, cfg, legacy=False, name='official_like.pt')`` -> (path, expected model): a
    checkpoint written in the official YOLOv5 layout and the model it must load as."""
    return _official_like_file


def _official_like_file(tmp_path, cfg, legacy=False, name='official_like.pt'):
    """Pickle one of our models the way YOLOv5 saves releases (whole fp16 module; our class paths coincide
    with the official ``models.common``/``models.yolo`` names), with a YAML dict free of our extra keys.
    ``legacy`` writes torch's pre-1.6 (non-zip) format, as the v1-v2 releases were saved."""
    import numpy as np
    import torch
    from models.yolo import Model
    model = Model(cfg).eval()
    for p in model.parameters():
        p.data.uniform_(-0.2, 0.2)
    expected = Model(model.yaml).eval()
    expected.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    model.yaml = {k: v for k, v in model.yaml.items() if k not in ('activation', 'csp_activation',
                                                                      'anchor_grid_buffer')}
    model.names = {i: f'class{i}' for i in range(model.yaml['nc'])}  # v7.0 stores a dict
    path = tmp_path / name
    extras = {'best_fitness': np.array([0.5]), 'opt': {'save_dir': Path('runs/train/exp')}}  # as v3-v5 saved
    torch.save({'epoch': -1, 'model': model.half(), 'ema': None, 'optimizer': None, **extras}, path,
               _use_new_zipfile_serialization=not legacy)
    return path, expected


@pytest.fixture
def single_thread():
    """Tiny models at tiny sizes: one torch thread (on a busy machine, spin-waiting threads only slow them)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_checkpoint(path, nc=4, seed=0, names=None, blind=False):
    """A random v6 'n' checkpoint of ``tiny_data``'s classes (or ``nc`` / ``names``) written to ``path``;
    ``blind``: objectness biased down so that it finds nothing."""
    import torch
    from models.yolo import Model
    from utils.weights.checkpoint import FORMAT, save_checkpoint
    torch.manual_seed(seed)
    model = Model('v6/yolov5n.yaml', nc=nc)
    if blind:
        with torch.no_grad():
            for conv in model.model[-1].m:
                conv.bias.view(model.model[-1].na, -1)[:, 4] = -40.0
    names = names or ['circle', 'square', 'triangle', 'star'][:nc]
    return save_checkpoint({'format': FORMAT, 'yaml': model.yaml, 'names': names, 'model': model.state_dict(),
                            'ema': None, 'epoch': 0}, path)


@pytest.fixture
def make_tiny_checkpoint():
    """``tiny_checkpoint`` as a fixture (test modules do not import conftest)."""
    return tiny_checkpoint
