"""models/prefix_memo.py: validation reuses the frozen layers' outputs, bit-exact, and only while they are valid."""
from copy import deepcopy

import pytest
import torch

import train
from models.prefix_memo import PrefixMemo, frozen_prefix_len
from models.yolo import Model
from utils.freeze.plan import FreezePlan
from utils.eval.report import read_rows


@pytest.fixture(scope='module')
def frozen():
    """A v6 yolov5n frozen at 10 (fast path on, as training has it), its EMA-like eval copy and a plain twin."""
    torch.manual_seed(0)
    model = Model('v6/yolov5n.yaml', nc=3)
    FreezePlan.from_spec('10', model).apply(model)
    model.set_frozen_fast_path()
    ema = deepcopy(model).eval().requires_grad_(False)
    return model, ema


def outputs_equal(a, b):
    return torch.equal(a[0], b[0]) and all(torch.equal(p, q) for p, q in zip(a[1], b[1]))


@pytest.mark.slow
def test_frozen_prefix_len_follows_the_plan():
    for spec, cut in (('0', 0), ('3', 3), ('10', 10), ('all', 24)):
        model = Model('v6/yolov5n.yaml', nc=3)
        FreezePlan.from_spec(spec, model).apply(model)
        assert frozen_prefix_len(model) == cut, spec
    model = Model('v6/yolov5n.yaml', nc=3)
    FreezePlan.from_spec('10', model, bn_stats=False).apply(model)  # BatchNorm statistics still train
    assert frozen_prefix_len(model) == 0 and PrefixMemo.for_frozen(model, 'cpu') is None


@pytest.mark.slow
def test_remembered_outputs_are_bit_identical(frozen):
    model, ema = frozen
    plain, memoized = deepcopy(ema), deepcopy(ema)
    memoized.prefix_memo = memo = PrefixMemo.for_frozen(model, 'cpu')
    x1, x2 = torch.rand(2, 3, 96, 96), torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        for x in (x1, x2, x1, x2, x1.clone()):
            assert outputs_equal(plain(x), memoized(x))
    assert (memo.misses, memo.hits, len(memo.entries)) == (2, 3, 2)


def test_a_changed_frozen_tensor_or_input_is_recomputed(frozen):
    model, ema = frozen
    plain, memoized = deepcopy(ema), deepcopy(ema)
    memoized.prefix_memo = memo = PrefixMemo.for_frozen(model, 'cpu')
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        memoized(x)
        y = x.clone()
        y[0, 0, 0, 0] += 1e-3  # one value of the input differs
        assert outputs_equal(plain(y), memoized(y)) and memo.misses == 2
        for m in (plain, memoized):  # an in-place change to a frozen layer (load_state_dict, EMA update)
            m.model[2].cv1.bn.running_mean.add_(0.5)
        assert outputs_equal(plain(x), memoized(x))
    assert memo.hits == 0 and memo.misses == 3 and len(memo.entries) == 1  # emptied, then refilled


@pytest.mark.slow
def test_budget_training_mode_and_autograd(frozen):
    model, ema = frozen
    memoized = deepcopy(ema)
    memoized.prefix_memo = memo = PrefixMemo(frozen_prefix_len(model), budget=0)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        memoized(x), memoized(x)
    assert memo.misses == 2 and not memo.entries  # over budget: computed every time, nothing kept
    memo.budget = 1 << 30
    memoized(x.clone().requires_grad_())  # autograd recording: not used
    memoized.train()
    with torch.no_grad():
        memoized(x)  # training mode: not used
    assert memo.misses == 2 and not memo.entries
    assert PrefixMemo.for_frozen(model, 'cuda:0') is None  # CPU only
    assert deepcopy(memoized).prefix_memo.entries == {}  # a copy starts empty


@pytest.mark.slow
def test_frozen_fine_tune_validates_from_the_memo_with_the_same_numbers(tiny_shapes, trained_run, tmp_path,
                                                                        monkeypatch):
    """A --freeze 10 fine-tune (from the session's 1-epoch checkpoint): the EMA's memo serves every validation
    after the first, and results.csv is the same as without it, to the last digit."""
    common = dict(data=str(tiny_shapes), cfg='v6/yolov5n.yaml', imgsz=64, batch_size=8, workers=0, noplots=True,
                  project=str(tmp_path), noautoanchor=True)
    fine = dict(common, epochs=1, weights=str(trained_run / 'weights' / 'last.pt'), freeze=['10'])
    memos = []
    made = PrefixMemo.for_frozen
    monkeypatch.setattr(PrefixMemo, 'for_frozen', lambda *a, **k: memos.append(made(*a, **k)) or memos[-1])
    train.run(name='memo', **fine)
    monkeypatch.setattr(PrefixMemo, 'for_frozen', lambda *a, **k: None)
    train.run(name='plain', **fine)
    memo = memos[0]
    assert memo.cut == 10 and memo.misses == 1 and memo.hits == 1  # zero-shot val fills it; epoch 0 reuses it
    csv = [(tmp_path / name / 'results.csv').read_text() for name in ('memo', 'plain')]
    assert csv[0] == csv[1] and len(read_rows(tmp_path / 'memo' / 'results.csv')) == 2
