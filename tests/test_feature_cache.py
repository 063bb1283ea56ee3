"""utils/train/feature_cache.py (--cache features): the cached views are the frozen prefix's outputs, training from
them is training from those views, the key follows what the views depend on, and the frozen layers do not run."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train
from models.yolo import Model, run_layers
from utils.data.datasets import DetectionDataset
from utils.errors import InputError
from utils.freeze.plan import FreezePlan
from utils.train import feature_augment as fa
from utils.train import feature_cache as fc
from utils.train import feature_store as fs
from utils.train.callbacks import Callback
from utils.train.engine import forward
from utils.train.loss import ComputeLoss, scale_loss_gains

HYP = 'data/hyps/hyp.transfer.yaml'


def frozen_model(spec='10', seed=0):
    torch.manual_seed(seed)
    model = Model('v6/yolov5n.yaml', nc=4)
    FreezePlan.from_spec(spec, model).apply(model)
    model.set_frozen_fast_path()
    return model


def dataset(data, imgsz=64):
    from utils.data.config import check_dataset
    d = check_dataset(str(data))
    return DetectionDataset(d['train'], imgsz, 8, 32, d, train_options())


def train_options():
    from utils.data.datasets import LoaderOptions
    return LoaderOptions(hyp=HYP, augment=True, verbose=False)


def run_config(batch_size=8):
    return SimpleNamespace(device=torch.device('cpu'), seed=3, batch_size=batch_size, workers=0, main=False)


@pytest.fixture(scope='module')
def built(tiny_data):
    """A model frozen at 10, its training set (16 images, 64 px) and a cache of 2 views built in RAM."""
    model, ds = frozen_model(), dataset(tiny_data)
    cache = fc.build_feature_cache(run_config(batch_size=16), model, ds, 2, log=lambda s: None)
    return model, ds, cache


def view_images(ds, rows, n, seed=3):
    """The augmented images and labels of cache rows ``rows`` (row k * n + i: view k of image i), drawn anew."""
    items = [ds[(r % n, (seed, fc.VIEW_STREAM, r // n, r % n))] for r in rows]
    imgs, targets, _, _ = DetectionDataset.collate_fn(items)
    return imgs.float() / 255, targets


def test_kept_layers_are_those_the_neck_reads():
    model = frozen_model()
    assert fc.kept_layers(model, 10) == [4, 6, 9]
    assert fc.kept_layers(model, 5) == [4]  # layer 4 is read by the neck's Concat (and by layer 5 as -1)
    assert fc.kept_layers(model, 24) == [17, 20, 23]  # --freeze all: what Detect reads


def test_a_cached_view_equals_the_frozen_prefix_on_that_view(built):
    model, ds, cache = built
    n = len(ds)
    assert cache.where == 'RAM' and cache.kept == [4, 6, 9] and [a.shape[0] for a in cache.arrays] == [2 * n] * 3
    for k in range(2):
        rows = list(range(k * n, (k + 1) * n))  # one build batch: the same batch composition
        imgs, targets = view_images(ds, rows, n)
        with torch.no_grad():  # the prefix as the training forward runs it: the fast path's NHWC on CPU
            y = []
            last = run_layers(model.eval().model, model.save, imgs.contiguous(memory_format=torch.channels_last), y,
                              0, 10)
        model.train()
        y[9] = last
        for j, a in zip(cache.kept, cache.arrays):
            assert np.array_equal(a[rows], y[j].half().numpy()), (k, j)
        for b, r in enumerate(rows):
            assert np.array_equal(cache.labels[r], targets[targets[:, 0] == b, 1:].numpy())
    assert not np.array_equal(cache.arrays[0][:n], cache.arrays[0][n:])  # the two views differ


def test_training_from_the_cache_is_training_from_its_views(built):
    model, ds, cache = built
    hyp = ds.hyp
    loss = ComputeLoss(model, scale_loss_gains(hyp, 3, 4, 64))
    loader = fc.FeatureLoader(cache, 8, 3, {'feature_crop': 1.0}, 64)  # whole samples
    batch, targets, _, _ = next(iter(loader))
    rows = list(loader.sampler)[:8]
    imgs, image_targets = view_images(ds, rows, len(ds))
    assert torch.equal(targets, image_targets)
    model.train()
    on_cpu = batch.to('cpu')
    assert all(o.dtype == torch.float32 and o.is_contiguous(memory_format=torch.channels_last) for o in on_cpu.outputs)
    with_cache = loss(forward(model, on_cpu), targets)[0]
    with_images = loss(forward(model, imgs), image_targets)[0]
    assert torch.allclose(with_cache, with_images, rtol=2e-3), (with_cache, with_images)


def test_each_image_cycles_through_its_views():
    sampler = fc.ViewSampler(5, 3, seed=1)
    seen = {i: set() for i in range(5)}
    for epoch in range(3):
        sampler.set_epoch(epoch)
        rows = list(sampler)
        assert sorted(r % 5 for r in rows) == list(range(5))  # every image once per epoch
        for r in rows:
            seen[r % 5].add(r // 5)
    assert all(v == {0, 1, 2} for v in seen.values())


def build_logged(model, ds, views=2):
    lines = []
    fc.build_feature_cache(run_config(), model, ds, views, log=lines.append)
    return lines[-1]


def test_a_disk_cache_is_reused_and_rebuilt_when_its_key_changes(tiny_data, monkeypatch):
    monkeypatch.setattr(fs, 'RAM_SHARE', 0.0)  # never fits in RAM: on disk
    model, ds = frozen_model(), dataset(tiny_data)
    first = build_logged(model, ds)
    assert 'built' in first and 'disk' in first
    assert 'reused' in build_logged(model, ds)
    with torch.no_grad():
        model.model[0].conv.weight[0, 0, 0, 0] += 1e-3
    assert 'rebuilt: key changed: weights' in build_logged(model, ds)
    assert 'reused' in build_logged(model, ds)
    assert 'key changed: views' in build_logged(model, ds, views=3)
    cache = fc.build_feature_cache(run_config(), model, ds, 3, log=lambda s: None)
    assert cache.where == 'disk' and isinstance(cache.arrays[0], np.memmap)
    n = len(ds)
    imgs, _ = view_images(ds, list(range(n, n + 8)), n)  # view 1, the first build batch
    assert np.array_equal(cache.arrays[0][n:n + 8], fc.prefix_outputs(model, imgs, 10, [4, 6, 9])[0].half().numpy())


def test_a_disk_cache_is_built_aside_and_a_stale_one_removed(tiny_data, monkeypatch):
    """Built in a private folder and moved in place when complete, so a run reading the old cache meanwhile never
    sees a half-written file; a stale disk cache is removed when the new one fits in RAM."""
    monkeypatch.setattr(fs, 'RAM_SHARE', 0.0)
    model, ds = frozen_model(), dataset(tiny_data, imgsz=96)
    build_logged(model, ds)
    folder = fs.cache_dir(ds, 96)
    old_key, old_file = fs.saved_key(folder), os.stat(folder / 'layer0.npy')
    seen = []

    def fill_watched(*args, **kwargs):
        seen.append((fs.saved_key(folder), os.stat(folder / 'layer0.npy').st_ino))  # the old cache, untouched
        return fill(*args, **kwargs)
    fill = fc.fill_cache
    monkeypatch.setattr(fc, 'fill_cache', fill_watched)
    with torch.no_grad():
        model.model[0].conv.weight[0, 0, 0, 0] += 1e-3
    assert 'rebuilt: key changed: weights' in build_logged(model, ds)
    assert seen == [(old_key, old_file.st_ino)]
    assert fs.saved_key(folder) not in (None, old_key)
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f'.{folder.name}')) == []
    monkeypatch.setattr(fs, 'RAM_SHARE', 0.5)
    with torch.no_grad():
        model.model[0].conv.weight[0, 0, 0, 0] += 1e-3
    assert 'in RAM' in build_logged(model, ds)
    assert not folder.exists()  # the stale disk cache is gone


def mosaic_dataset(data, imgsz=128):
    ds = dataset(data, imgsz)
    ds.hyp = {**ds.hyp, 'feature_mosaic': 1.0}
    return ds


def test_feature_mosaic_caches_half_size_views_of_the_frozen_prefix(tiny_data):
    model, ds = frozen_model(), mosaic_dataset(tiny_data)
    cache = fc.build_feature_cache(run_config(batch_size=16), model, ds, 2, log=lambda s: None)
    n = len(ds)
    assert cache.mosaic and [a.shape[2:] for a in cache.arrays] == [(8, 8), (4, 4), (2, 2)]  # 64 px views
    assert cache.strides == [8, 16, 32]
    half = fc.half_size_views(ds)
    assert (half.img_size, half.hyp['mosaic'], ds.img_size, ds.hyp['mosaic']) == (64, 0.0, 128, ds.hyp['mosaic'])
    rows = list(range(n))
    imgs, targets = view_images(half, rows, n)
    assert imgs.shape[2:] == (64, 64)
    assert np.array_equal(cache.arrays[0][rows], fc.prefix_outputs(model, imgs, 10, [4, 6, 9])[0].half().numpy())
    assert np.array_equal(cache.labels[3], targets[targets[:, 0] == 3, 1:].numpy())


def test_mosaic_maps_and_labels_place_four_views_in_quadrants():
    array = np.arange(6 * 2 * 2 * 3, dtype=np.float16).reshape(6, 2, 2, 3)  # 6 rows of (C=2, h=2, w=3)
    quads = np.array([[5, 0, 3, 1], [2, 2, 4, 0]])
    maps = fa.mosaic_maps(array, quads)
    assert maps.shape == (2, 2, 4, 6)
    for b, q in enumerate(quads):
        for k, row in enumerate(q):
            y, x = (k // 2) * 2, (k % 2) * 3
            assert torch.equal(maps[b, :, y:y + 2, x:x + 3], torch.from_numpy(array[row])), (b, k)
    labels = [np.array([[1, 0.5, 0.5, 0.2, 0.4]], np.float32), np.zeros((0, 5), np.float32)]
    out = fa.mosaic_labels(labels, [1, 1, 1, 0])  # the box in the bottom-right quadrant
    assert np.allclose(out, [[1, 0.75, 0.75, 0.1, 0.2]])


def test_each_mosaic_holds_its_own_view_and_three_at_their_epoch_views(tiny_data):
    model, ds = frozen_model(), mosaic_dataset(tiny_data)
    cache = fc.build_feature_cache(run_config(batch_size=16), model, ds, 2, log=lambda s: None)
    loader = fc.FeatureLoader(cache, 4, 3, {'feature_crop': 1.0}, 128)  # whole samples
    loader.sampler.set_epoch(1)
    rows = list(loader.sampler)[:4]
    s, n = loader.sampler, len(ds)
    maps, labels = loader.mosaics(rows, np.random.default_rng(0))
    assert maps[0].shape == (4, 64, 16, 16)
    for b, row in enumerate(rows):
        quads = [np.flatnonzero([torch.equal(maps[0][b, :, y:y + 8, x:x + 8], torch.from_numpy(a))
                                 for a in cache.arrays[0]]) for y in (0, 8) for x in (0, 8)]
        assert any(row in q for q in quads)  # its own view is in one quadrant
        for q in quads:  # every quadrant is some image at the view this epoch gives it
            assert any(r // n == (s.offsets[r % n] + 1) % 2 for r in q)
    batch, targets, _, _ = next(iter(loader))
    assert batch.shape == (4, 3, 128, 128) and targets.shape[1] == 6
    model.train()
    out = forward(model, batch.to('cpu'))
    assert [o.shape[2:4] for o in out] == [(16, 16), (8, 8), (4, 4)]


def test_feature_mosaic_needs_a_size_that_halves_to_the_stride(tiny_data):
    with pytest.raises(InputError, match='--img-size 96 must be a multiple of 64'):
        fc.half_size_views(mosaic_dataset(tiny_data, imgsz=96))


def test_the_key_follows_weights_imgsz_freeze_and_data(tiny_data, tmp_path):
    model, ds = frozen_model(), dataset(tiny_data)
    key = fc.cache_key(model, 10, ds, 64, 2, 0, ds.hyp)
    assert fc.cache_key(frozen_model(), 10, dataset(tiny_data), 64, 2, 0, ds.hyp) == key  # same inputs: same key
    other = frozen_model(seed=1)
    assert fs.changed_parts(key, fc.cache_key(other, 10, ds, 64, 2, 0, ds.hyp)) == ['weights']
    big = dataset(tiny_data, imgsz=96)
    assert fs.changed_parts(key, fc.cache_key(model, 10, big, 96, 2, 0, ds.hyp)) == ['imgsz']
    assert 'freeze' in fs.changed_parts(key, fc.cache_key(frozen_model('5'), 5, ds, 64, 2, 0, ds.hyp))
    assert fs.changed_parts(key, fc.cache_key(model, 10, ds, 64, 2, 0, {**ds.hyp, 'mosaic': 0.5})) == ['hyp']
    assert fs.changed_parts(key, fc.cache_key(model, 10, ds, 64, 2, 0, {**ds.hyp, 'feature_mosaic': 1})) == ['hyp']
    f = ds.im_files[0]
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # the image changed
    try:
        assert fs.changed_parts(key, fc.cache_key(model, 10, ds, 64, 2, 0, ds.hyp)) == ['data']
    finally:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    ds.labels[0] = ds.labels[0][:0]  # a label changed
    assert fs.changed_parts(key, fc.cache_key(model, 10, ds, 64, 2, 0, ds.hyp)) == ['data']


def test_a_cache_that_cannot_fit_is_refused_in_one_line(tiny_data, monkeypatch):
    monkeypatch.setattr(fs, 'available_memory', lambda: 10_000)
    monkeypatch.setattr(fs.shutil, 'disk_usage', lambda p: SimpleNamespace(free=20_000))
    with pytest.raises(InputError) as e:
        fc.build_feature_cache(run_config(), frozen_model(), dataset(tiny_data), 4, log=lambda s: None)
    msg = str(e.value)
    # 16 images x 4 views x (64x8x8 + 128x4x4 + 256x2x2 = 7168 values) x 2 bytes = 0.92 MB
    assert '\n' not in msg and '16 images x 4 views need 0.9 MB (fp16)' in msg and '--cache-views' in msg


@pytest.mark.parametrize('flags, named', [
    (['--freeze', '0'], '--freeze 0'), (['--freeze', '10', '--multi-scale'], '--multi-scale'),
    (['--freeze', '10', '--rect'], '--rect'), (['--freeze', '10', '--unfreeze-epoch', '1'], '--unfreeze-epoch'),
    (['--freeze', '10', '--cache-views', '0'], '--cache-views 0')])
def test_unsupported_combinations_are_refused(flags, named):
    opt = train.fill_defaults(train.parse_opt(['--data', 'x.yaml', '--cache', 'features', *flags]))
    with pytest.raises(InputError, match=named):
        train.check_options(opt, 1)


def test_ddp_is_refused():
    opt = train.fill_defaults(train.parse_opt(['--data', 'x.yaml', '--cache', 'features', '--freeze', '10',
                                               '--batch-size', '4']))
    with pytest.raises(InputError, match='DDP'):
        train.check_options(opt, 2)


def test_feature_space_flip_and_shift():
    m = torch.arange(2 * 4 * 4, dtype=torch.float16).view(2, 4, 4)
    fill = torch.tensor([-1.0, -2.0])
    out = fa.shift_map(m, 1, -2, fill)
    assert torch.equal(out[:, :2, 1:], m[:, 2:, :3]) and (out[0, :, 0] == -1).all() and (out[1, 2:] == -2).all()
    lb = np.array([[1, 0.5, 0.5, 0.2, 0.2], [2, 0.95, 0.5, 0.1, 0.1]], np.float32)
    shifted = fa.shift_labels(lb, 0.25, 0.0)  # the second box leaves the image
    assert shifted.shape == (1, 5) and np.allclose(shifted[0], [1, 0.75, 0.5, 0.2, 0.2])
    cache = SimpleNamespace(strides=[8, 16, 32], fill=[np.zeros(c, np.float16) for c in (1, 1, 1)])
    outs = [torch.rand(1, 1, s, s).half() for s in (8, 4, 2)]
    flipped = [o.clone() for o in outs]
    labels = [lb.copy()]
    fa.augment_one(flipped, labels, 0, np.random.default_rng(0), 1.0, 0.0, cache, 64)
    assert all(torch.equal(f, o.flip(-1)) for f, o in zip(flipped, outs))
    assert np.allclose(labels[0][:, 1], 1 - lb[:, 1])


def test_window_labels_clip_drop_and_renormalise():
    lb = np.array([[0, 0.5, 0.5, 0.2, 0.2], [1, 0.1, 0.1, 0.1, 0.1], [2, 0.7, 0.5, 0.2, 0.2]], np.float32)
    out = fa.window_labels(lb, 0.25, 0.25, 0.5, 0.5, 0.1)  # the window [0.25, 0.75]^2
    assert out.shape == (2, 5)  # the second box is outside
    assert np.allclose(out[0], [0, 0.5, 0.5, 0.4, 0.4])
    assert np.allclose(out[1], [2, 0.85, 0.5, 0.3, 0.4])  # x 0.6-0.75 of 0.6-0.8 inside: clipped at the edge
    assert fa.window_labels(lb[2:], 0.25, 0.25, 0.5, 0.5, 0.9).shape == (0, 5)  # half of it outside: dropped
    assert np.allclose(fa.shift_labels(lb[:1], 0.1, -0.1), [[0, 0.6, 0.4, 0.2, 0.2]])
    centred = fa.centred_labels(lb, 0.25, 0.25, 0.5, 0.5)  # a crop's boxes: centred inside, whole
    assert np.allclose(centred, [[0, 0.5, 0.5, 0.4, 0.4], [2, 0.9, 0.5, 0.4, 0.4]])


def test_crop_batch_cuts_every_level_at_one_cell_aligned_window():
    strides, rng = [8, 16, 32], np.random.default_rng(1)
    outs = [torch.rand(3, 2, 128 // s, 128 // s) for s in strides]  # a 128 px batch: 4 x 4 coarse cells
    labels = [np.array([[0, 0.5, 0.5, 0.2, 0.2]], np.float32)] * 3
    cropped, new = fa.crop_batch(outs, labels, np.random.default_rng(1), 3, strides)
    assert [c.shape[2:] for c in cropped] == [(12, 12), (6, 6), (3, 3)]
    ys, xs = rng.integers(0, 2, 3), rng.integers(0, 2, 3)  # the same draws: where each sample's window is
    for b, (y, x) in enumerate(zip(ys, xs)):
        for o, c, s in zip(outs, cropped, strides):
            f = 32 // s
            assert torch.equal(c[b], o[b, :, y * f:(y + 3) * f, x * f:(x + 3) * f])
        assert np.allclose(new[b][:, 1:3], (0.5 - np.array([x, y]) / 4) * 4 / 3)  # the centre, in the window
    assert fa.crop_cells(20, 0.8) == 16 and fa.crop_cells(2, 0.1) == 1


def test_a_cropped_cached_batch_trains_on_the_window(built):
    model, ds, cache = built
    with pytest.raises(InputError, match='feature_crop 1.5: must be between 0 and 1'):
        fc.FeatureLoader(cache, 8, 3, {'feature_crop': 1.5}, 64)
    with pytest.raises(InputError, match='feature_crop -1.0'):  # refused before the cache is built
        fc.feature_loader(None, None, None, 2, {'feature_crop': -1})
    assert fc.FeatureLoader(cache, 8, 3, {}, 64).crop == fc.FEATURE_CROP  # the default
    whole = next(iter(fc.FeatureLoader(cache, 8, 3, {'feature_crop': 0}, 64)))
    loader = fc.FeatureLoader(cache, 8, 3, {'feature_crop': 0.5}, 64)
    batch, targets, _, _ = next(iter(loader))
    assert batch.shape == (8, 3, 32, 32) and [o.shape[2:] for o in batch.outputs] == [(4, 4), (2, 2), (1, 1)]
    assert ((targets[:, 2:4] >= 0) & (targets[:, 2:4] < 1)).all()  # centred in the window
    for b in range(8):  # each sample's coarsest map is one cell of the whole sample's
        assert any(torch.equal(batch.outputs[2][b, :, 0, 0], whole[0].outputs[2][b, :, y, x])
                   for y in range(2) for x in range(2))
    model.train()
    out = forward(model, batch.to('cpu'))
    assert [o.shape[2:4] for o in out] == [(4, 4), (2, 2), (1, 1)]


class LayerZeroCalls(Callback):
    """Counts the training model's layer-0 forward calls during the epochs (the EMA and the cache build are
    before the run starts: not counted), and keeps the sizes of the maps layer 10, the first after the cache,
    trains on."""

    def __init__(self):
        self.calls, self.sizes = 0, set()

    def on_run_start(self, run, state):
        state.bare_model.model[0].register_forward_hook(lambda *a: setattr(self, 'calls', self.calls + 1))
        state.bare_model.model[10].register_forward_hook(
            lambda m, args, out: m.training and self.sizes.add(tuple(args[0].shape[2:])))


@pytest.mark.slow
def test_one_epoch_from_the_cache_runs_no_frozen_layer(tiny_data, tmp_path):
    counter = LayerZeroCalls()
    train.run(data=str(tiny_data), cfg='v6/yolov5n.yaml', epochs=1, imgsz=128, batch_size=8, workers=0,
              freeze=['10'], cache='features', cache_views=2, noplots=True, noautoanchor=True,
              project=str(tmp_path), name='exp', callbacks=[counter])
    run_dir = tmp_path / 'exp'
    assert (run_dir / 'results.csv').is_file() and (run_dir / 'weights' / 'best.pt').is_file()
    assert counter.calls == 0
    assert counter.sizes == {(3, 3)}  # the default crop: 3 of the 4 x 4 coarsest cells of a 128 px sample
