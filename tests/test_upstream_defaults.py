"""train.py says in one line where the same command would train differently under upstream YOLOv5."""
import pytest
import yaml

import train
from utils.train.config import format_differences, upstream_differences


def notes(argv):
    return upstream_differences(train.parse_opt(argv))


WARMUP, VAL_EVERY = 'the warm-up takes at most 10% of the run', '--val-every auto validates every'


def test_tutorial_command_without_weights_is_told_it_trains_from_scratch():
    got = notes(['--data', 'coco128.yaml'])
    assert len(got) == 3 and 'no --weights: training from scratch' in got[0] and 'yolov5s.pt' in got[0]
    assert WARMUP in got[1] and 'warmup_share: 1' in got[1]
    assert got[2].startswith(f'{VAL_EVERY} 5 epochs of this 100-epoch run') and '--val-every 1' in got[2]
    line = format_differences(got)
    assert line.startswith('Differs from upstream YOLOv5: ') and '\n' not in line


@pytest.fixture
def upstream_hyp(tmp_path):
    """hyp.scratch-low.yaml with the warm-up uncapped (warmup_share: 1): upstream's recipe in full."""
    from utils.data.config import load_hyp
    path = tmp_path / 'upstream.yaml'
    path.write_text(yaml.safe_dump({**load_hyp('hyp.scratch-low.yaml'), 'warmup_share': 1.0}))
    return str(path)


def test_explicit_choices_matching_upstream_say_nothing(upstream_hyp):
    upstream = ['--hyp', upstream_hyp, '--val-every', '1']
    assert notes(['--data', 'coco128.yaml', '--weights', '', *upstream]) == []
    assert notes(['--data', 'coco128.yaml', '--weights', 'yolov5s.pt', *upstream, '--freeze-bn-stats', 'false']) == []
    assert notes(['--data', 'x.yaml', '--weights', 'a.pt', '--freeze', '10', '--freeze-bn-stats', 'true',
                  *upstream]) == []
    assert notes(['--data', 'x.yaml', '--weights', '', '--hyp', upstream_hyp, '--epochs', '10']) == []  # auto: 1
    assert format_differences([]) is None


def test_freeze_image_weights_and_demo_notes():
    got = notes(['--data', 'x.yaml', '--weights', 'a.pt', '--freeze', '10', '--image-weights', '--epochs', '20'])
    assert len(got) == 5 and 'hyp.transfer.yaml' in got[0] and '--hyp hyp.scratch-low.yaml' in got[0]
    assert 'EMA of decay 0.98' in got[0] and '0.9999' in got[0]  # the fine-tune recipe's EMA schedule
    assert '--freeze-bn-stats false' in got[1] and WARMUP in got[2]
    assert f'{VAL_EVERY} 2 epochs of this 20-epoch run' in got[3] and '(1 - class mAP)^2' in got[4]
    demo = notes([])
    assert 'shapes demo' in demo[0] and f'{VAL_EVERY} 2 epochs of this 24-epoch run' in demo[-1]
    assert VAL_EVERY not in ' '.join(notes(['--data', 'x.yaml', '--noval']))  # --noval validates the last only


def test_weights_decide_the_architecture_unless_cfg_is_given():
    """Without --data the demo fills --cfg v6/yolov5n.yaml only when no --weights says which model to build."""
    assert train.fill_defaults(train.parse_opt([])).cfg == 'v6/yolov5n.yaml'
    assert train.fill_defaults(train.parse_opt(['--weights', 'yolov5s.pt'])).cfg == ''  # the checkpoint's YAML
    assert train.fill_defaults(train.parse_opt(['--weights', 'yolov5s.pt', '--data', 'x.yaml'])).cfg == ''
    assert train.fill_defaults(train.parse_opt(['--weights', 'yolov5s.pt', '--cfg', 'v6/yolov5m.yaml'])).cfg == \
        'v6/yolov5m.yaml'


def test_defaults_filled_after_the_note():
    opt = train.fill_defaults(train.parse_opt(['--data', 'x.yaml']))
    assert opt.weights == '' and opt.freeze_bn_stats == 'true' and opt.hyp.endswith('hyp.scratch-low.yaml')
    assert (opt.epochs, opt.imgsz, opt.batch_size, opt.optimizer) == (100, 640, 16, 'SGD')  # upstream's
    assert train.fill_defaults(train.parse_opt(['--data', 'x.yaml', '--weights', 'a.pt'])).hyp.endswith(
        'hyp.transfer.yaml')  # a pretrained start: the fine-tune recipe
    pretrained = train.fill_defaults(train.parse_opt(['--data', 'x.yaml', '--weights', 'a.pt']))
    assert pretrained.freeze_bn_stats == 'all'  # ... which keeps every BatchNorm's statistics as loaded
    assert train.fill_defaults(train.parse_opt(['--data', 'x.yaml', '--weights', 'a.pt', '--freeze-bn-stats',
                                                'true'])).freeze_bn_stats == 'true'
    assert "keeps every BatchNorm layer's statistics" in ' '.join(notes(['--data', 'x.yaml', '--weights', 'a.pt']))


@pytest.mark.parametrize('argv, message', [
    (['--batch-size', '0'], '--batch-size 0: must be at least 1, or -1 for AutoBatch'),
    (['--batch-size', '-2'], '--batch-size -2: must be at least -1'),
    (['--cache', 'gpu'], "--cache gpu: must be 'ram', 'disk', 'auto', 'off' or 'features'"),
    (['--image-weights', '--rect'], '--image-weights does not work with --rect'),
])
def test_bad_option_values_are_refused_in_one_line(argv, message):
    opt = train.fill_defaults(train.parse_opt(['--data', 'x.yaml', *argv]))
    with pytest.raises(ValueError, match='^' + message.replace('(', r'\(').replace(')', r'\)').replace('^', r'\^')):
        train.check_options(opt, world_size=1)


def test_ddp_refuses_autobatch_and_image_weights():
    for flag in (['--batch-size', '-1'], ['--image-weights']):
        opt = train.fill_defaults(train.parse_opt(['--data', 'x.yaml', *flag]))
        with pytest.raises(ValueError, match='needs a single process'):
            train.check_options(opt, world_size=2)
