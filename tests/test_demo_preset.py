"""The demo preset (`python train.py` with no arguments, `make demo`): what it fills in, and that flags win."""
import train
from utils.data.config import load_hyp


def test_demo_fills_only_the_options_left_unset():
    opt = train.fill_defaults(train.parse_opt([]))
    assert opt.data.endswith('data/shapes.yaml') and opt.hyp.endswith('hyp.shapes.yaml')
    assert (opt.cfg, opt.epochs, opt.imgsz, opt.batch_size, opt.weights) == ('v6/yolov5n.yaml', 24, 128, 8, '')
    given = train.fill_defaults(train.parse_opt(['--epochs', '2', '--batch-size', '4']))
    assert (given.epochs, given.imgsz, given.batch_size) == (2, 128, 4)
    assert train.fill_defaults(train.parse_opt(['--data', 'x.yaml'])).batch_size == 16  # upstream's, off the demo


def test_demo_hyp_steps_the_optimizer_every_batch_without_mosaic():
    hyp = load_hyp(train.DEMO['hyp'])
    assert hyp['nbs'] == train.DEMO['batch_size']  # nominal batch = batch: no gradient accumulation
    assert hyp['mosaic'] == 0.0 and hyp['lr0'] == 0.01
