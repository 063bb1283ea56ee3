"""The paired bootstrap of VOC devkit AP50 (utils/eval/bootstrap.py): weighting an image equals repeating it, and
the interval says what it should for identical and for clearly different models."""
import types

import numpy as np
import pytest

from utils.eval.bootstrap import ImageMatches, WeightedDevkitAP, paired_bootstrap
from utils.eval.metrics import DetectionEvaluator, GroundTruth

NC = 3


def synthetic_images(seed, n_images=12, quality=0.5):
    """Per image (det (n, 6), GroundTruth): boxes of 3 classes, some difficult; detections are jittered copies of
    them (more jitter and more false boxes at lower ``quality``), in random confidence order."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        m = int(rng.integers(0, 5))
        xy = rng.uniform(0, 300, (m, 2))
        boxes = np.c_[xy, xy + rng.uniform(20, 120, (m, 2))]
        cls = rng.integers(0, NC, m)
        difficult = rng.random(m) < 0.2
        found = rng.random(m) < 0.4 + 0.5 * quality
        jitter = rng.normal(0, 30 * (1 - quality), (int(found.sum()), 4))
        det = [np.c_[boxes[found] + jitter, rng.uniform(0.3, 1, found.sum()), cls[found]]]
        k = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 300, (k, 2))
        det.append(np.c_[fxy, fxy + 50, rng.uniform(0, 0.7, k), rng.integers(0, NC, k)])
        images.append((np.concatenate(det).reshape(-1, 6), GroundTruth(boxes, cls, difficult=difficult)))
    return images


def recorded(images, repeats=None):
    """An ImageMatches fed ``images`` (each ``repeats[i]`` times, under distinct keys)."""
    m = ImageMatches(NC, 'voc07')
    for i, (det, gt) in enumerate(images):
        for r in range(1 if repeats is None else int(repeats[i])):
            m.on_image(types.SimpleNamespace(image_id=f'{i:04d}-{r}'), det, gt)
    return m


@pytest.mark.parametrize('seed', range(5))
def test_unit_weights_give_the_evaluators_devkit_map(seed):
    images = synthetic_images(seed)
    ev = DetectionEvaluator(NC, voc_rule='voc07')
    for i, (det, gt) in enumerate(images):
        ev.add_image(det, gt, key=i)
    weighted = recorded(images).weighted_ap()
    np.testing.assert_allclose(weighted.per_class(), ev.voc_ap()[0], equal_nan=True)
    assert weighted.mean() == pytest.approx(ev.voc_ap()[1])


@pytest.mark.parametrize('seed', range(5))
def test_weighting_an_image_equals_repeating_it(seed):
    images = synthetic_images(seed)
    counts = np.random.default_rng(100 + seed).integers(0, 4, len(images))
    weighted = recorded(images).weighted_ap().per_class(counts.astype(float))
    repeated = recorded(images, counts).evaluator.voc_ap()[0]
    np.testing.assert_allclose(weighted, repeated, equal_nan=True)


def test_identical_models_differ_by_exactly_nothing():
    a = recorded(synthetic_images(0, n_images=30)).weighted_ap()
    ci = paired_bootstrap(a, a, resamples=200, seed=1)
    assert ci['diff'] == ci['diff_low'] == ci['diff_high'] == 0.0
    assert ci['p_not_better'] == 1.0
    assert ci['a_low'] <= ci['a'] <= ci['a_high'] and ci['a_low'] < ci['a_high']


def test_a_clearly_better_model_has_an_interval_above_zero():
    worse = recorded(synthetic_images(3, n_images=40, quality=0.1)).weighted_ap()
    better = recorded(synthetic_images(3, n_images=40, quality=0.95)).weighted_ap()
    ci = paired_bootstrap(worse, better, resamples=300, seed=0)
    assert ci['diff'] > 0.1 and ci['diff_low'] > 0 and ci['p_not_better'] < 0.01
    assert ci['diff_low'] <= ci['diff'] <= ci['diff_high']
    again = paired_bootstrap(worse, better, resamples=300, seed=0)
    assert again == ci  # seeded draws


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="VOC rule None"):
        ImageMatches(NC, None)
    a = recorded(synthetic_images(0, n_images=5)).weighted_ap()
    b = recorded(synthetic_images(0, n_images=6)).weighted_ap()
    with pytest.raises(ValueError, match='same images: 5 vs 6'):
        paired_bootstrap(a, b)
    with pytest.raises(ValueError, match='resamples 0'):
        paired_bootstrap(a, a, resamples=0)


def test_no_images_score_zero():
    empty = WeightedDevkitAP([], NC)
    assert empty.mean() == 0.0 and np.isnan(empty.per_class()).all()
