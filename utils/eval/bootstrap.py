"""How sure is a change in VOC devkit AP50? A paired bootstrap over the images of one test list.

    a, b = ImageMatches(nc, 'voc07'), ImageMatches(nc, 'voc07')   # evaluate(..., observers=[a]), then [b]
    ci = paired_bootstrap(a.weighted_ap(), b.weighted_ap(), resamples=2000)
    ci['diff'], ci['diff_low'], ci['diff_high']      # b - a: the point estimate and its 95% interval

Both models are scored on the same draws: each draw picks as many images as the list holds, with replacement, and
weights every detection and ground-truth box by how often its image was drawn. Weighting is the same as repeating
the image: on the ranked list a repeated detection adds a point that its copy dominates on the precision envelope
(same precision at a lower recall for a true positive, same recall for a false one), so AP does not change. The
spread of b - a over the draws is its interval: how far a change of this size could come from which images the
test list happens to hold.
"""
import numpy as np

from utils.eval.metrics import DetectionEvaluator
from utils.eval.voc_eval import voc_ap
from utils.errors import InputError


class ImageMatches:
    """An ``evaluate`` observer that keeps each image's VOC devkit matches (its own ``DetectionEvaluator``)."""

    def __init__(self, nc, voc_rule='voc07'):
        if voc_rule not in ('voc07', 'voc12'):
            raise InputError(f"VOC rule {voc_rule!r}: expected 'voc07' or 'voc12' (the data YAML's eval: key)")
        self.evaluator = DetectionEvaluator(nc, voc_rule=voc_rule)

    def on_image(self, meta, det, gt):
        self.evaluator.add_image(det, gt, key=meta.image_id)

    def keys(self):
        return sorted(p['key'] for p in self.evaluator.images)

    def weighted_ap(self):
        ev = self.evaluator
        parts = sorted(ev.images, key=lambda p: p['key'])
        return WeightedDevkitAP(parts, ev.nc, use_07_metric=ev.voc_rule == 'voc07')


class WeightedDevkitAP:
    """One model's devkit mAP50 for any weights on its images (``parts``: DetectionEvaluator image records in one
    fixed order). Each class's detections are ranked once; a draw only re-weights them."""

    def __init__(self, parts, nc, use_07_metric=True):
        self.n_images, self.nc, self.use_07_metric = len(parts), nc, use_07_metric
        image = np.concatenate([np.full(len(p['conf']), i) for i, p in enumerate(parts)] or [np.zeros(0, int)])
        conf = np.concatenate([p['conf'] for p in parts] or [np.zeros(0)])
        cls = np.concatenate([p['cls'] for p in parts] or [np.zeros(0, int)]).astype(int)
        tp = np.concatenate([p['voc_tp'] for p in parts] or [np.zeros(0, bool)])
        fp = ~tp & ~np.concatenate([p['voc_ignored'] for p in parts] or [np.zeros(0, bool)])
        self.positives = np.stack([np.bincount(p['voc_target_cls'].astype(int), minlength=nc) for p in parts]) \
            if parts else np.zeros((0, nc), int)  # (images, classes) non-difficult boxes
        self.ranked = []  # per class: (image of each detection, tp, fp) in confidence order
        for c in range(nc):
            idx = np.flatnonzero(cls == c)
            idx = idx[np.argsort(-conf[idx], kind='stable')]
            self.ranked.append((image[idx], tp[idx].astype(float), fp[idx].astype(float)))

    def per_class(self, weights=None):
        """(nc,) AP50 with each image counted ``weights[i]`` times (default once); NaN for a class without positives."""
        w = np.ones(self.n_images) if weights is None else np.asarray(weights, float)
        n_pos = w @ self.positives
        ap = np.full(self.nc, np.nan)
        for c, (image, tp, fp) in enumerate(self.ranked):
            if n_pos[c] <= 0:
                continue
            tpc, fpc = np.cumsum(w[image] * tp), np.cumsum(w[image] * fp)
            precision = tpc / np.maximum(tpc + fpc, np.finfo(np.float64).eps)
            ap[c] = voc_ap(tpc / n_pos[c], precision, self.use_07_metric)
        return ap

    def mean(self, weights=None):
        ap = self.per_class(weights)
        return float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0


def paired_bootstrap(a, b, resamples=2000, seed=0, level=0.95):
    """Point estimates of a, b and b - a (mAP50) and their ``level`` percentile intervals over ``resamples`` draws
    of the images, the same draws for both; ``p_not_better``: the share of draws where b does not beat a."""
    if a.n_images != b.n_images:
        raise InputError(f'paired bootstrap needs the same images: {a.n_images} vs {b.n_images}')
    if resamples < 1:
        raise InputError(f'resamples {resamples}: expected at least 1')
    rng = np.random.default_rng(seed)
    n = a.n_images
    draws = np.empty((resamples, 2))
    for k in range(resamples):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
        draws[k] = a.mean(w), b.mean(w)
    diff = draws[:, 1] - draws[:, 0]
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out = {'images': n, 'resamples': resamples, 'level': level, 'a': a.mean(), 'b': b.mean()}
    out['diff'] = out['b'] - out['a']
    for name, values in (('a', draws[:, 0]), ('b', draws[:, 1]), ('diff', diff)):
        out[f'{name}_low'], out[f'{name}_high'] = (float(v) for v in np.percentile(values, [lo, hi]))
    out['p_not_better'] = float(np.mean(diff <= 0))
    return out
