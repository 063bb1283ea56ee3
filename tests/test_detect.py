"""detect.py end to end on images, folders, lists, videos and a (simulated) webcam, plus every bad source."""
import math

import cv2
import numpy as np
import pytest
import torch

import detect
from models.yolo import Model
from utils.data.augment import letterbox
from utils.boxes import Placement, non_max_suppression, scale_boxes, xywhn2xyxy
from utils.weights.checkpoint import FORMAT, load_model, save_checkpoint
from utils.deploy.sources import open_source

NAMES = ['cat', 'dog', 'bus']
BOX = 16  # planted box width in pixels (height 16 * 90 / 116 for the stride-32 anchor 116x90)


def logit(p):
    return math.log(p / (1 - p))


def planted_model():
    """A yolov5n whose head ignores the image: on the stride-32 level, anchor 0 of every grid cell predicts a
    small 'dog' box centred on the cell (conf ~0.98); everything else stays below any threshold."""
    model = Model('v6/yolov5n.yaml', nc=len(NAMES))
    model.names = list(NAMES)
    head = model.model[-1]
    with torch.no_grad():
        for level, conv in enumerate(head.m):
            conv.weight.zero_()
            b = conv.bias.view(head.na, -1)
            b.fill_(-10.0)  # objectness and class scores ~0
            b[:, :2] = 0.0  # centre offset 0.5 -> the cell centre
        b = head.m[2].bias.view(head.na, -1)
        b[0, 2:4] = logit(math.sqrt(BOX / 116) / 2)  # (2 sigmoid(t))^2 * 116 = BOX
        b[0, 4], b[0, 6] = 5.0, 5.0  # objectness, class 1 ('dog')
    return model


def save_model(model, path):
    ckpt = {'format': FORMAT, 'yaml': model.yaml, 'names': model.names, 'model': model.state_dict(), 'ema': None}
    return str(save_checkpoint(ckpt, path))


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    return save_model(planted_model(), tmp_path_factory.mktemp('w') / 'planted.pt')


@pytest.fixture(scope='module')
def random_weights(tmp_path_factory):
    """Random weights with BatchNorm statistics measured on noise, so that outputs depend on the image."""
    torch.manual_seed(0)
    model = Model('v6/yolov5n.yaml', nc=3)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(4, 3, 128, 128))
    return save_model(model.eval(), tmp_path_factory.mktemp('w') / 'random.pt')


def textured_image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    im = cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), (w, h))
    return cv2.GaussianBlur(im, (5, 5), 0)


def write_video(path, fourcc, n=5, h=96, w=128):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (w, h))
    assert writer.isOpened(), f'{fourcc} writer unavailable'
    for i in range(n):
        writer.write(textured_image(h, w, seed=i))
    writer.release()
    return path


def run(weights, source, tmp_path, **kw):
    kw.setdefault('imgsz', 128)
    return detect.run(weights=weights, source=str(source), project=str(tmp_path / 'runs'), **kw)


@pytest.mark.slow
def test_planted_boxes_found_saved_and_summarised(weights, tmp_path, capsys):
    img = tmp_path / 'street.png'
    cv2.imwrite(str(img), textured_image(96, 128))
    res = run(weights, img, tmp_path, save_crop=True)
    assert len(res) == 1 and res[0]['frame'] is None and tuple(res[0]['shape']) == (96, 128)
    det = res[0]['det']
    assert det.shape == (12, 6)  # 96x128 -> 3x4 cells on the stride-32 level
    assert det[:, 5].eq(1).all() and torch.allclose(det[:, 4], torch.full((12,), (1 / (1 + math.exp(-5))) ** 2))
    centres = ((det[:, :2] + det[:, 2:4]) / 2).tolist()
    expected = [[16 + 32 * i, 16 + 32 * j] for i in range(4) for j in range(3)]
    assert sorted(map(tuple, np.round(centres, 3).tolist())) == sorted(map(tuple, expected))
    assert torch.allclose(det[:, 2] - det[:, 0], torch.full((12,), float(BOX)), atol=1e-3)
    out_dir = tmp_path / 'runs' / 'exp'
    saved = cv2.imread(str(res[0]['save_path']))
    assert res[0]['save_path'] == out_dir / 'street.png' and saved.shape == (96, 128, 3)
    assert not np.array_equal(saved, cv2.imread(str(img)))  # boxes drawn
    assert len(list((out_dir / 'crops' / 'dog').glob('street*.jpg'))) == 12
    out = capsys.readouterr().out
    assert f'image 1/1 {img}: 96x128 12 dogs, ' in out and 'ms pre-process' in out
    assert run(weights, img, tmp_path, verbose=False)[0]['save_path'] == tmp_path / 'runs' / 'exp2' / 'street.png'


@pytest.mark.slow
def test_save_txt_round_trips_to_the_same_boxes(weights, tmp_path):
    img = tmp_path / 'a.jpg'
    cv2.imwrite(str(img), textured_image(96, 128))
    det = run(weights, img, tmp_path, save_txt=True, save_conf=True, verbose=False)[0]['det']
    rows = np.loadtxt(tmp_path / 'runs' / 'exp' / 'labels' / 'a.txt', ndmin=2)
    assert rows.shape == (12, 6)
    back = xywhn2xyxy(rows[:, 1:5], w=128, h=96)
    order = lambda a: a[np.lexsort(a[:, :2].T[::-1])]  # noqa: E731 (same row order on both sides)
    assert np.allclose(order(back), order(det[:, :4].numpy()), atol=1e-3)
    assert np.array_equal(rows[:, 0], det[:, 5].numpy()) and np.allclose(rows[:, 5], det[:, 4].numpy(), atol=1e-5)
    run(weights, img, tmp_path, save_txt=True, verbose=False)  # without --save-conf: 5 columns
    assert np.loadtxt(tmp_path / 'runs' / 'exp2' / 'labels' / 'a.txt', ndmin=2).shape == (12, 5)


def reference_detections(weights, im0, rgb=True):
    """letterbox(auto) -> RGB -> CHW -> /255 -> model -> NMS -> scale_boxes, written out by hand."""
    with torch.no_grad():
        model = load_model(weights, 'cpu', fuse=True)
        im, gain, pad = letterbox(im0, 128, stride=32, auto=True)
        im = im[..., ::-1] if rgb else im
        x = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).float()[None] / 255
        ref = non_max_suppression(model(x)[0], 0.001, 0.45, max_det=1000)[0]
    ref[:, :4] = scale_boxes(ref[:, :4], Placement(im0.shape[:2], gain, pad))
    return ref


@pytest.mark.slow
def test_same_result_as_letterbox_model_nms_by_hand(random_weights, tmp_path):
    im0 = textured_image(120, 200, seed=3)
    cv2.imwrite(str(tmp_path / 'x.png'), im0)
    det = run(random_weights, tmp_path / 'x.png', tmp_path, conf_thres=0.001, nosave=True, verbose=False)[0]['det']
    ref = reference_detections(random_weights, im0)
    assert len(ref) > 0 and det.shape == ref.shape and torch.allclose(det, ref, rtol=0, atol=1e-5)
    bgr = reference_detections(random_weights, im0, rgb=False)  # the check is fine enough to see channel order
    assert det.shape != bgr.shape or not torch.allclose(det, bgr, rtol=0, atol=1e-5)
    assert not (tmp_path / 'runs' / 'exp' / 'x.png').exists()  # --nosave


def test_classes_filter_and_bad_classes(weights, tmp_path):
    img = tmp_path / 'a.jpg'
    cv2.imwrite(str(img), textured_image(64, 64))
    # upscaled to 128x128: 4x4 cells
    assert len(run(weights, img, tmp_path, classes=[1], verbose=False)[0]['det']) == 16
    assert len(run(weights, img, tmp_path, classes=[0, 2], verbose=False)[0]['det']) == 0
    with pytest.raises(ValueError, match=r'--classes 3: the model has 3 classes \(ids 0-2\)'):
        run(weights, img, tmp_path, classes=[1, 3])


@pytest.mark.slow
@pytest.mark.parametrize('suffix, fourcc', [('.mp4', 'mp4v'), ('.avi', 'MJPG')])
def test_video_frames_labels_and_annotated_video(weights, tmp_path, suffix, fourcc, capsys):
    clip = write_video(tmp_path / f'clip{suffix}', fourcc, n=5)
    res = run(weights, clip, tmp_path, save_txt=True, vid_stride=2)
    assert [r['frame'] for r in res] == [1, 3, 5] and all(len(r['det']) == 12 for r in res)
    out_dir = tmp_path / 'runs' / 'exp'
    assert sorted(p.name for p in (out_dir / 'labels').iterdir()) == ['clip_1.txt', 'clip_3.txt', 'clip_5.txt']
    cap = cv2.VideoCapture(str(out_dir / 'clip.mp4'))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    assert frames == 3 and res[0]['save_path'] == out_dir / 'clip.mp4'
    assert f'video 1/1 (3/5) {clip}: 96x128 12 dogs' in capsys.readouterr().out


@pytest.mark.slow
def test_folder_glob_and_list_sources_skip_corrupt_image(weights, tmp_path, capsys):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for name in ('b.jpg', 'a.png'):
        cv2.imwrite(str(folder / name), textured_image(64, 96))
    (folder / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
    (folder / 'notes.md').write_text('ignored')
    res = run(weights, folder, tmp_path, verbose=True)
    assert [r['path'] for r in res] == [str(folder / 'a.png'), str(folder / 'b.jpg')]
    out = capsys.readouterr().out
    assert f'image 3/3 skipped: {folder / "broken.jpg"}: unreadable or corrupt image' in out
    assert '1 unreadable file(s) skipped' in out
    assert [r['path'] for r in run(weights, folder / '*.jpg', tmp_path, verbose=False)] == [str(folder / 'b.jpg')]
    listing = tmp_path / 'list.txt'
    listing.write_text(f'imgs/b.jpg\n\n{folder / "a.png"}\n')  # relative to the list's folder, and absolute
    assert [r['path'] for r in run(weights, listing, tmp_path, verbose=False)] == \
        [str(tmp_path / 'imgs' / 'b.jpg'), str(folder / 'a.png')]


REAL_CAPTURE = cv2.VideoCapture


class FakeCamera:
    """Stands in for cv2.VideoCapture(index): a camera that is absent, or one that plays a clip."""
    clip = None

    def __new__(cls, source, *args):
        if isinstance(source, int):
            return REAL_CAPTURE(str(cls.clip)) if cls.clip else REAL_CAPTURE('/nonexistent/cam.avi')
        return REAL_CAPTURE(source, *args)


def test_webcam_present_and_absent(weights, tmp_path, monkeypatch):
    monkeypatch.setattr('utils.deploy.sources.cv2.VideoCapture', FakeCamera)
    with pytest.raises(ValueError, match=r'^webcam 0: no camera found at this index'):
        open_source('0')
    monkeypatch.setattr(FakeCamera, 'clip', write_video(tmp_path / 'cam.avi', 'MJPG', n=3))
    res = run(weights, '0', tmp_path, save_txt=True, verbose=False)
    out_dir = tmp_path / 'runs' / 'exp'
    assert [r['frame'] for r in res] == [1, 2, 3] and (out_dir / 'webcam0.mp4').is_file()
    assert (out_dir / 'labels' / 'webcam0_2.txt').is_file()


def main_error(argv):
    with pytest.raises(SystemExit) as e:
        detect.main(argv)
    message = str(e.value.code)
    assert message.startswith('error: ') and '\n' not in message.strip()
    return message


@pytest.mark.parametrize('make_source, expected', [
    (lambda d: d / 'missing.jpg', 'missing.jpg: source not found'),
    (lambda d: d / 'missing' / '*.jpg', 'glob matched no files'),
    (lambda d: (d / 'empty').mkdir() or d / 'empty', 'empty: no images or videos found'),
    (lambda d: (d / 'x.xyz').write_text('?') and d / 'x.xyz', "x.xyz: unsupported file type '.xyz'"),
    (lambda d: (d / 'bad.png').write_bytes(b'garbage') and d / 'bad.png', 'bad.png: unreadable or corrupt image'),
    (lambda d: (d / 'bad.mp4').write_bytes(b'garbage' * 99) and d / 'bad.mp4', 'bad.mp4: unreadable or corrupt video'),
    (lambda d: (d / 'l.txt').write_text('nope.jpg\n') and d / 'l.txt', 'l.txt: listed file nope.jpg not found'),
    (lambda d: (d / 'e.txt').write_text('\n') and d / 'e.txt', 'e.txt: the list is empty'),
    (lambda d: 'https://example.com/a.jpg', 'images are not downloaded'),
])
def test_bad_sources_give_one_line_errors(weights, tmp_path, make_source, expected):
    source = make_source(tmp_path)
    assert expected in main_error(['--weights', weights, '--source', str(source), '--project', str(tmp_path / 'r')])
    assert not (tmp_path / 'r').exists()  # no empty run folder left behind


@pytest.mark.slow
def test_all_files_corrupt_and_bad_flags(weights, tmp_path, capsys):
    folder = tmp_path / 'bad'
    folder.mkdir()
    for name in ('1.jpg', '2.png'):
        (folder / name).write_bytes(b'garbage')
    base = ['--weights', weights, '--project', str(tmp_path / 'r'), '--source']
    assert 'none of its 2 file(s) could be read' in main_error(base + [str(folder)])
    img = tmp_path / 'ok.jpg'
    cv2.imwrite(str(img), textured_image(64, 64))
    with pytest.raises(SystemExit) as e:  # argparse's own errors: exit code 2, one line on stderr
        detect.main(base + [str(img), '--classes', 'a'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: argument --classes: invalid int value: 'a'")
    assert err.count('\n') == 1
    assert '--conf-thres 1.5: must be between 0 and 1' in main_error(base + [str(img), '--conf-thres', '1.5'])
    assert '--vid-stride 0: must be a whole number >= 1' in main_error(base + [str(img), '--vid-stride', '0'])
    assert 'not found' in main_error(['--weights', str(tmp_path / 'no.pt'), '--source', str(img)])
    if not torch.cuda.is_available():
        run(weights, img, tmp_path, half=True, device='cpu', imgsz=100, nosave=True)
        out = capsys.readouterr().out
        assert 'note: --half needs CUDA; running in FP32 on cpu' in out
        assert 'not a multiple of the model stride 32, using [128, 128]' in out


def test_same_file_name_in_two_folders_gives_two_outputs(weights, tmp_path):
    for sub in ('a', 'b'):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / 'img.jpg'), textured_image(96, 128))
    (tmp_path / 'list.txt').write_text('a/img.jpg\nb/img.jpg\n')
    run(weights, tmp_path / 'list.txt', tmp_path, save_txt=True, verbose=False)
    out = tmp_path / 'runs' / 'exp'
    assert sorted(p.name for p in (out / 'labels').iterdir()) == ['img.txt', 'img_2.txt']
    assert (out / 'img.jpg').is_file() and (out / 'img_2.jpg').is_file()
