"""Units behind train.py's upstream options: multi-scale sizes, image weights, disk cache, AutoBatch's fit."""
import os
import stat

import cv2
import numpy as np
import pytest
import torch

from utils.train.autobatch import BATCH_LIMIT, autobatch, fit_batch_size
from utils.data.image_cache import folder_writable, npy_path, read_cached
from utils.data.sizes import MultiScale, multi_scale_sizes
from utils.data.datasets import ImageWeightSampler, class_weights, image_weights


# ---------------------------------------------------------------- --multi-scale
def test_multi_scale_sizes_span_half_to_one_and_a_half_in_stride_steps():
    assert multi_scale_sizes(640, 32) == list(range(320, 961, 32))
    assert multi_scale_sizes(64, 32) == [32, 64, 96]
    assert multi_scale_sizes(100, 32) == [64, 96, 128]


def test_multi_scale_resizes_batches_deterministically():
    ms = MultiScale(128, 32, seed=3)
    sizes = [ms.size(epoch=0, batch_i=i) for i in range(40)]
    assert sizes == [MultiScale(128, 32, seed=3).size(0, i) for i in range(40)]  # same (seed, epoch, batch)
    assert sizes != [ms.size(1, i) for i in range(40)]  # another epoch, another draw
    assert set(sizes) <= set(range(64, 193, 32)) and len(set(sizes)) > 2
    imgs = torch.rand(2, 3, 128, 96)  # a rectangular batch keeps its aspect ratio in stride multiples
    i = next(i for i, s in enumerate(sizes) if s == 192)
    assert ms(imgs, 0, i).shape == (2, 3, 192, 160)  # 96 * 1.5 = 144 -> 160
    j = next(i for i, s in enumerate(sizes) if s == 128)
    assert ms(imgs, 0, j) is imgs


# ---------------------------------------------------------------- --image-weights
def labels_of(*class_lists):
    return [np.array([[c, 0.5, 0.5, 0.1, 0.1] for c in cl], np.float32).reshape(-1, 5) for cl in class_lists]


def test_class_and_image_weights_follow_rarity():
    labels = labels_of([0, 0, 0], [0, 1], [], [2])  # class 0: 4 boxes, class 1: 1, class 2: 1
    cw = class_weights(labels, 3)
    assert np.allclose(cw, np.array([0.25, 1, 1]) / 2.25)
    iw = image_weights(labels, 3)
    raw = np.array([0.75, 1.25, 0.75, 1.0]) / 2.25  # the empty image gets the smallest non-empty weight
    assert np.allclose(iw, raw / raw.sum())


def test_image_weight_sampler_draws_rare_images_more_and_replays_an_epoch():
    labels = labels_of(*([[0]] * 9 + [[1]]))  # one image holds the rare class
    sampler = ImageWeightSampler(labels, 2, seed=1)
    draws = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    assert len(draws) == 200
    assert draws.count(9) > 60  # rarity weight 1 vs 1/9 per common image: half the draws (uniform: 20)
    sampler.set_epoch(3)
    first = list(sampler)
    again = ImageWeightSampler(labels, 2, seed=1)
    again.set_epoch(3)
    assert list(again) == first  # a resumed run replays the epoch's draw


# ---------------------------------------------------------------- --cache disk
def test_disk_cache_beside_a_writable_folder(tmp_path, monkeypatch):
    monkeypatch.setenv('YOLOV5_FREEZE_CACHE', str(tmp_path / 'cache'))
    im = (np.arange(12 * 10 * 3) % 255).astype(np.uint8).reshape(12, 10, 3)
    cv2.imwrite(str(tmp_path / 'a.png'), im)
    assert npy_path(tmp_path / 'a.png') == (tmp_path / 'a.png.npy').resolve()
    assert np.array_equal(read_cached(tmp_path / 'a.png'), im)
    assert np.array_equal(np.load(tmp_path / 'a.png.npy'), im)
    np.save(tmp_path / 'a.png.npy', np.zeros_like(im))  # served from the .npy now, not the PNG
    assert read_cached(tmp_path / 'a.png').sum() == 0
    assert read_cached(tmp_path / 'missing.png') is None
    cv2.imwrite(str(tmp_path / 'a.bmp'), im[::-1])  # same stem, another image: its own .npy
    assert np.array_equal(read_cached(tmp_path / 'a.bmp'), im[::-1])


def test_disk_cache_never_writes_into_a_read_only_folder(tmp_path, monkeypatch):
    monkeypatch.setenv('YOLOV5_FREEZE_CACHE', str(tmp_path / 'cache'))
    images = tmp_path / 'ro'
    images.mkdir()
    im = np.full((8, 8, 3), 7, np.uint8)
    cv2.imwrite(str(images / 'b.png'), im)
    images.chmod(stat.S_IRUSR | stat.S_IXUSR)  # r-x: read-only even for root by our rule
    try:
        assert not folder_writable(images)
        assert np.array_equal(read_cached(images / 'b.png'), im)
        assert sorted(os.listdir(images)) == ['b.png']
        cached = list((tmp_path / 'cache').rglob('b.png.npy'))
        assert len(cached) == 1 and np.array_equal(np.load(cached[0]), im)
    finally:
        images.chmod(stat.S_IRWXU)


def test_disk_cache_redecodes_a_stale_or_truncated_npy(tmp_path, monkeypatch):
    monkeypatch.setenv('YOLOV5_FREEZE_CACHE', str(tmp_path / 'cache'))
    im = np.full((6, 6, 3), 9, np.uint8)
    cv2.imwrite(str(tmp_path / 'c.png'), im)
    (tmp_path / 'c.png.npy').write_bytes(b'not numpy')
    assert np.array_equal(read_cached(tmp_path / 'c.png'), im)  # truncated: decoded again and rewritten
    assert np.array_equal(np.load(tmp_path / 'c.png.npy'), im)
    np.save(tmp_path / 'c.png.npy', np.zeros_like(im))
    os.utime(tmp_path / 'c.png.npy', (1, 1))  # older than its image: stale
    assert np.array_equal(read_cached(tmp_path / 'c.png'), im)


# ---------------------------------------------------------------- --batch-size -1
def test_autobatch_fit_solves_the_linear_memory_model():
    sizes = [1, 2, 4, 8]
    peaks = [100 + 30 * b for b in sizes]  # 100 bytes fixed + 30 per image
    assert fit_batch_size(sizes, peaks, budget=1015) == 30  # (1015 - 100) / 30 = 30.5
    assert fit_batch_size(sizes, peaks, budget=50) == 1  # never below one
    assert fit_batch_size(sizes, peaks, budget=1e9, limit=256) == 256
    assert fit_batch_size([1], [130], budget=1000) is None
    assert fit_batch_size([1, 2], [130, 130], budget=1000) is None  # memory not growing: no fit


def test_autobatch_refuses_on_cpu_in_one_line():
    with pytest.raises(ValueError, match=r'^--batch-size -1 \(AutoBatch\) needs a CUDA device'):
        autobatch(torch.nn.Conv2d(3, 3, 1), 64, torch.device('cpu'))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='AutoBatch measures CUDA memory')
def test_autobatch_on_cuda_picks_a_batch_in_the_asked_share_of_free_memory():
    from models.yolo import Model
    device = torch.device('cuda:0')
    model = Model('v6/yolov5n.yaml', nc=3).to(device)
    lines = []
    batch = autobatch(model, 128, device, fraction=0.8, log=lines.append)
    assert batch >= 16 and 'AutoBatch: batch' in lines[0]
    share = int(lines[0].split('~')[1].split('%')[0])
    assert 60 <= share <= 90 or (batch == BATCH_LIMIT and 'the most AutoBatch picks' in lines[0]), lines[0]


# ---------------------------------------------------------------- --save-period
def saved_files(tmp_path, monkeypatch, epochs, **options):
    """The weight files ``trainer.save_weights`` leaves after ``epochs`` epochs (every one an improvement, none
    forced), with a stand-in for the checkpoint's contents; and the epochs whose checkpoint was announced."""
    from types import SimpleNamespace
    from utils.train import trainer
    monkeypatch.setattr(trainer, 'make_checkpoint', lambda run, state, epoch: {'epoch': epoch})
    run = SimpleNamespace(weights_dir=tmp_path / 'weights', **{'nosave': False, 'save_period': -1, **options})
    announced = []
    callbacks = SimpleNamespace(fire=lambda hook, run, state, last, improved: announced.append(state.epoch))
    for epoch in range(epochs):
        trainer.save_weights(run, SimpleNamespace(epoch=epoch), callbacks, improved=True, force=False)
    files = sorted(p.name for p in run.weights_dir.iterdir()) if run.weights_dir.exists() else []
    return files, announced


def test_save_period_saves_epoch_files_at_upstreams_epochs(tmp_path, monkeypatch):
    """Epochs 0, P, 2P, ... (a 3-epoch run with --save-period 2: epoch0.pt and epoch2.pt), each the checkpoint of
    its epoch; none without the flag, none with --nosave. (tests/test_train_options.py trains with --save-period 1
    and resumes from an epoch file.)"""
    files, announced = saved_files(tmp_path / 'p2', monkeypatch, 3, save_period=2)
    assert files == ['best.pt', 'epoch0.pt', 'epoch2.pt', 'last.pt'] and announced == [0, 1, 2]
    weights = tmp_path / 'p2' / 'weights'
    assert [torch.load(weights / f)['epoch'] for f in ('epoch0.pt', 'epoch2.pt', 'last.pt')] == [0, 2, 2]
    assert saved_files(tmp_path / 'off', monkeypatch, 3)[0] == ['best.pt', 'last.pt']
    assert saved_files(tmp_path / 'nosave', monkeypatch, 3, save_period=1, nosave=True) == ([], [])
