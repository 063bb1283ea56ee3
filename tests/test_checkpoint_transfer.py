"""Starting a model from weights: our checkpoints, head-preserving transfer to a new nc, and finding weights."""
import urllib.error

import pytest
import torch

from models.yolo import Model
from utils.weights import official as download  # resolve_weights and its fetch live in official.py
from utils.freeze.transfer import format_transfer_report, transfer_weights
from utils.weights.checkpoint import FORMAT, load_model, read_weights, save_checkpoint


@pytest.fixture(scope='module')
def source_state():
    """A yolov5n (v6, nc=80) state_dict with random values, so copied tensors are recognisable."""
    g = torch.Generator().manual_seed(0)
    return {k: (torch.rand(v.shape, generator=g) if v.is_floating_point() else v.clone())
            for k, v in Model('v6/yolov5n.yaml').state_dict().items()}


def test_transfer_to_new_nc_keeps_box_and_objectness_rows(source_state):
    model = Model('v6/yolov5n.yaml', nc=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = transfer_weights(model, source_state, source='weights/yolov5n.pt')
    after = model.state_dict()
    assert report['tensors_total'] == 349 and report['tensors_copied'] == 343
    assert report['tensors_partial'] == [f'model.24.m.{i}.{p}' for i in range(3) for p in ('weight', 'bias')]
    assert report['tensors_reinitialised'] == [] and report['unused'] == []
    for k, v in after.items():
        if not k.startswith('model.24.m.'):
            assert torch.equal(v, source_state[k]), k
    for i in range(3):
        for p in ('weight', 'bias'):
            name = f'model.24.m.{i}.{p}'
            dst, src, init = after[name], source_state[name], before[name]
            for a in range(3):  # 8 outputs per anchor now (5 + 3 classes), 85 in the source
                assert torch.equal(dst[a * 8:a * 8 + 5], src[a * 85:a * 85 + 5])
                assert torch.equal(dst[a * 8 + 5:a * 8 + 8], init[a * 8 + 5:a * 8 + 8])
    head_in = sum(model.model[24].m[i].in_channels for i in range(3))
    assert report['params_total'] == sum(p.numel() for p in model.parameters())
    assert report['params_copied'] == report['params_total'] - sum(
        model.model[24].m[i].weight.numel() + 24 for i in range(3)) + 3 * 5 * (head_in + 3)
    line = format_transfer_report(report)
    assert line.startswith('Transferred 343/349 tensors') and 'from yolov5n.pt' in line
    assert 'box+obj rows of 3 anchors x 3 levels kept' in line and '\n' not in line


def test_transfer_same_nc_is_complete_and_mismatch_is_reported(source_state):
    model = Model('v6/yolov5n.yaml')
    report = transfer_weights(model, source_state)
    assert report['tensors_copied'] == 349 and report['params_copied'] == report['params_total'] == 1_872_157
    assert format_transfer_report(report) == 'Transferred 349/349 tensors whole (1,872,157/1,872,157 params)'
    other = Model('yolov5n.yaml', nc=3)  # v3.1 family: different layers, Detect anchor_grid not in source
    report = transfer_weights(other, source_state)
    assert 'model.24.anchor_grid' in report['tensors_reinitialised']
    assert 'Re-initialised' in format_transfer_report(report)


def test_read_weights_and_load_model_for_our_checkpoints(tmp_path, source_state):
    model = Model('v6/yolov5n.yaml', nc=2)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = {'format': FORMAT, 'yaml': model.yaml, 'names': ['cat', 'dog'], 'nc': 2,
            'model': model.state_dict(), 'ema': {k: v.half() if v.is_floating_point() else v for k, v in ema.items()}}
    path = save_checkpoint(ckpt, tmp_path / 'best.pt')
    w = read_weights(path)
    assert w['source'] == 'ours' and w['names'] == ['cat', 'dog']
    assert w['state_dict']['model.0.conv.weight'].dtype == torch.float32  # the EMA, back to fp32
    assert torch.equal(w['state_dict']['model.0.conv.weight'], ema['model.0.conv.weight'].half().float())
    loaded = load_model(path)
    assert loaded.names == ['cat', 'dog'] and not loaded.training


def test_resolve_weights_existing_and_unknown_paths(tmp_path, monkeypatch):
    def no_network(url, dest):
        raise AssertionError('network touched')

    monkeypatch.setattr(download, 'fetch', no_network)
    f = tmp_path / 'mine.pt'
    f.write_bytes(b'x')
    assert download.resolve_weights(f) == f
    with pytest.raises(FileNotFoundError) as e:
        download.resolve_weights(tmp_path / 'other.pt')
    assert 'other.pt' in str(e.value) and '\n' not in str(e.value)


def test_resolve_weights_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    calls = []

    def offline(url, dest):
        calls.append(url)
        raise urllib.error.URLError('no network')

    monkeypatch.setattr(download, 'fetch', offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        download.resolve_weights('yolov5s.pt')
    msg = str(e.value)
    assert calls == ['https://github.com/ultralytics/yolov5/releases/download/v7.0/yolov5s.pt']
    assert str(tmp_path / 'yolov5s.pt') in msg and 'no network' in msg and '\n' not in msg
    assert not (tmp_path / 'yolov5s.pt').exists()


def test_resolve_weights_downloads_official_names(tmp_path, monkeypatch):
    def fake_fetch(url, dest):
        dest.write_bytes(b'weights')
        return dest

    monkeypatch.setattr(download, 'fetch', fake_fetch)
    monkeypatch.chdir(tmp_path)
    assert download.resolve_weights('yolov5x6.pt').read_bytes() == b'weights'
    assert download.is_official_name('yolov5m.pt') and not download.is_official_name('yolov5q.pt')


def test_fetch_writes_atomically_with_progress(tmp_path, capsys):
    src = tmp_path / 'remote.bin'
    src.write_bytes(b'abc' * 1000)
    dest = download.fetch(src.as_uri(), tmp_path / 'local.pt')  # file:// URL: no network
    assert dest.read_bytes() == src.read_bytes() and not (tmp_path / 'local.pt.part').exists()
    assert 'Downloading' in capsys.readouterr().err
