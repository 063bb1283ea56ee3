"""Test-time augmentation (utils/deploy/tta.py) and ensembles (utils/deploy/ensemble.py), units and CLI smoke runs."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
import val
from utils.deploy.ensemble import Ensemble, load_models
from utils.deploy.tta import TestTimeAugment, level_sizes, scale_view, to_input_frame, with_tta
from utils.errors import InputError

SQUARE = (20, 30, 60, 70)  # x1, y1, x2, y2 of the white square in a 128 x 160 input: off-centre, so a flip shows


class SquareFinder:
    """A stand-in Backend with known outputs: in every anchor slot of every grid cell it 'finds' the bright square
    of its input (the box around pixels > 0.9, cx cy w h), with objectness = the index of the slot's level."""

    stride, imgsz, device, fp16 = 32, None, torch.device('cpu'), False

    def __init__(self, names=('square',), path='finder.pt'):
        self.names, self.path = list(names), Path(path)

    def __call__(self, x):
        b, _, h, w = x.shape
        sizes = [3 * (h // s) * (w // s) for s in (8, 16, 32)]
        out = torch.zeros(b, sum(sizes), 5 + len(self.names))
        for i in range(b):
            ys, xs = torch.nonzero(x[i].mean(0) > 0.9, as_tuple=True)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            out[i, :, :4] = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)).float()
        out[..., 4] = torch.cat([torch.full((n,), float(level)) for level, n in enumerate(sizes)])
        out[..., 5] = 1
        return out


def square_input():
    x = torch.full((1, 3, 128, 160), 0.5)
    x1, y1, x2, y2 = SQUARE
    x[..., y1:y2, x1:x2] = 1.0
    return x


def test_each_view_maps_back_to_the_input_and_levels_are_trimmed():
    out = TestTimeAugment(SquareFinder())(square_input())
    # views: 128x160 (levels 960 + 240 + 60, the last dropped), 0.83 -> 106x132 padded to 128x160 (all 1260),
    # 0.67 -> 85x107 padded to 96x128 (576 + 144 + 36, the first dropped)
    assert out.shape == (1, 1200 + 1260 + 180, 6)
    full, mirrored, small = out[0, :1200], out[0, 1200:2460], out[0, 2460:]
    assert set(full[:, 4].tolist()) == {0.0, 1.0} and set(small[:, 4].tolist()) == {1.0, 2.0}
    assert set(mirrored[:, 4].tolist()) == {0.0, 1.0, 2.0}
    x1, y1, x2, y2 = SQUARE
    expected = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]).float()
    assert torch.equal(full[0, :4], expected)
    for view in (mirrored, small):  # rescaled views: within the blur of bilinear resizing
        assert torch.allclose(view[:, :4], expected.expand(len(view), 4), atol=2.5), view[0]


def test_scale_view_pads_to_the_stride_and_reports_real_ratios():
    view, (sy, sx) = scale_view(square_input(), 0.67, 32)
    assert view.shape[2:] == (96, 128) and (sy, sx) == (85 / 128, 107 / 160)
    assert torch.allclose(view[..., 85:, :], torch.tensor(114 / 255)) and view[..., 107:].eq(114 / 255).all()
    assert scale_view(square_input(), 1.0, 32)[1] == (1.0, 1.0)


def test_to_input_frame_scales_and_reflects():
    pred = torch.tensor([[[10.0, 20.0, 4.0, 8.0, 0.9, 1.0]]])
    assert torch.allclose(to_input_frame(pred, (0.5, 0.25)), torch.tensor([[[40.0, 40.0, 16.0, 16.0, 0.9, 1.0]]]))
    assert torch.allclose(to_input_frame(pred, (1.0, 1.0), flip_width=100)[0, 0, :4], torch.tensor([90.0, 20, 4, 8]))


def test_level_sizes_refuses_an_unknown_layout():
    assert level_sizes(3 * (16 + 4 + 1), (32, 32), [8, 16, 32]) == [48, 12, 3]
    with pytest.raises(RuntimeError, match='do not split into levels'):
        level_sizes(100, (32, 32), [8, 16, 32])


def test_ensemble_joins_members_and_refuses_other_classes():
    x = square_input()
    ens = Ensemble([SquareFinder(path='a.pt'), SquareFinder(path='b.pt')])
    assert ens(x).shape == (1, 2 * 1260, 6) and ens.names == ['square'] and ens.stride == 32 and ens.dynamic
    augmented = with_tta(ens)  # each member augmented on its own (its own levels trimmed)
    assert isinstance(augmented, Ensemble) and all(isinstance(m, TestTimeAugment) for m in augmented.members)
    assert augmented(x).shape == (1, 2 * 2640, 6)
    with pytest.raises(InputError, match=r"^--weights b.pt: its classes differ from a.pt's \(class 0 is 'cat', "
                                         r"in a.pt 'square'\); an ensemble needs models of the same classes$"):
        Ensemble([SquareFinder(path='a.pt'), SquareFinder(['cat'], 'b.pt')])
    with pytest.raises(InputError, match=r"b.pt: its classes differ from a.pt's \(2 classes, a.pt has 1\)"):
        Ensemble([SquareFinder(path='a.pt'), SquareFinder(['square', 'cat'], 'b.pt')])


def test_tta_of_a_real_model_starts_with_the_plain_run(tmp_path, make_tiny_checkpoint, single_thread):
    """A real (random) model through load_models(augment=True): the first view is the plain run, less its
    stride-32 level, and the three views together give as many rows as their levels say."""
    backend = load_models(make_tiny_checkpoint(tmp_path / 'a.pt'), 'cpu', augment=True)
    assert isinstance(backend, TestTimeAugment) and backend.strides == [8, 16, 32] and backend.names[0] == 'circle'
    x = torch.rand(1, 3, 64, 96)
    out = backend(x)
    n_full = 3 * (8 * 12 + 4 * 6)  # 64x96 without its stride-32 level
    n_mirrored = 3 * (8 * 12 + 4 * 6 + 2 * 3)  # 53x79 padded to 64x96
    n_small = 3 * (4 * 4 + 2 * 2)  # 42x64 padded to 64x64, without its stride-8 level
    assert out.shape == (1, n_full + n_mirrored + n_small, 9)
    assert torch.allclose(out[:, :n_full], backend.backend(x)[:, :n_full])


@pytest.mark.slow
def test_val_and_detect_cli_with_augment_and_an_ensemble(tmp_path, tiny_data, capsys, make_tiny_checkpoint,
                                                          single_thread):
    """Smoke runs, and what joining before NMS means: a member that finds nothing changes nothing."""
    a, b, blind = (make_tiny_checkpoint(tmp_path / 'a.pt'), make_tiny_checkpoint(tmp_path / 'b.pt', seed=1),
                   make_tiny_checkpoint(tmp_path / 'blind.pt', blind=True))
    common = dict(data=str(tiny_data), imgsz=64, batch_size=8, device='cpu', workers=0, plots=False,
                  save_dir=tmp_path / 'val')
    single = val.run(weights=str(a), **common)
    joined = val.run(weights=[str(blind), str(a)], **common)
    assert (joined.map50, joined.map, joined.p, joined.r) == (single.map50, single.map, single.p, single.r)
    assert val.run(weights=[str(blind), str(blind)], **common).map50 == 0
    val.main(['--weights', str(a), str(b), '--data', str(tiny_data), '--imgsz', '64', '--augment', '--workers', '0',
              '--project', str(tmp_path / 'runs'), '--device', 'cpu'])
    assert 'all' in capsys.readouterr().out
    im = tmp_path / 'im.jpg'
    cv2.imwrite(str(im), np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    args = ['--source', str(im), '--imgsz', '64', '--conf-thres', '0.01', '--device', 'cpu', '--nosave',
            '--project', str(tmp_path / 'det')]
    detect.main(['--weights', str(a), str(b), '--augment'] + args)
    assert 'image 1/1' in capsys.readouterr().out
    plain, = detect.run(weights=str(a), source=str(im), imgsz=64, conf_thres=0.001, nosave=True, verbose=False,
                        project=str(tmp_path / 'det'))
    joined, = detect.run(weights=[str(a), str(blind)], source=str(im), imgsz=64, conf_thres=0.001, nosave=True,
                         verbose=False, project=str(tmp_path / 'det'))
    assert len(plain['det']) and torch.equal(plain['det'], joined['det'])


@pytest.mark.slow
def test_ensemble_of_other_classes_is_one_line_cli_error(tmp_path, tiny_data, make_tiny_checkpoint):
    a = make_tiny_checkpoint(tmp_path / 'a.pt')
    b = make_tiny_checkpoint(tmp_path / 'b.pt', nc=3, names=['cat', 'dog', 'cow'])
    with pytest.raises(SystemExit) as e:
        val.main(['--weights', str(a), str(b), '--data', str(tiny_data), '--imgsz', '64', '--device', 'cpu'])
    assert str(e.value) == (f"error: --weights {b}: its classes differ from {a}'s (3 classes, a.pt has 4); an "
                            f"ensemble needs models of the same classes")
