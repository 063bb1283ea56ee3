"""train.py says in one line where the same command would train differently under upstream YOLOv5."""
import pytest

import train
from utils.train.upstream_defaults import format_differences, upstream_differences


def notes(argv):
    return upstream_differences(train.parse_opt(argv))


def test_tutorial_command_without_weights_is_told_it_trains_from_scratch():
    got = notes(['--data', 'coco128.yaml'])
    assert len(got) == 1 and 'no --weights: training from scratch' in got[0] and 'yolov5s.pt' in got[0]
    line = format_differences(got)
    assert line.startswith('Differs from upstream YOLOv5: ') and '\n' not in line


def test_explicit_choices_matching_upstream_say_nothing():
    assert notes(['--data', 'coco128.yaml', '--weights', '']) == []
    assert notes(['--data', 'coco128.yaml', '--weights', 'yolov5s.pt', '--hyp', 'hyp.scratch-low.yaml',
                  '--freeze-bn-stats', 'false']) == []
    assert notes(['--data', 'x.yaml', '--weights', 'a.pt', '--freeze', '10', '--freeze-bn-stats', 'true',
                  '--hyp', 'hyp.scratch-low.yaml']) == []
    assert format_differences([]) is None


def test_freeze_image_weights_and_demo_notes():
    got = notes(['--data', 'x.yaml', '--weights', 'a.pt', '--freeze', '10', '--image-weights'])
    assert len(got) == 3 and 'hyp.transfer.yaml' in got[0] and '--hyp hyp.scratch-low.yaml' in got[0]
    assert '--freeze-bn-stats false' in got[1] and '(1 - class mAP)^2' in got[2]
    assert 'shapes demo' in notes([])[0]


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
    (['--cache', 'gpu'], "--cache gpu: must be 'ram', 'disk', 'auto' or 'off'"),
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
