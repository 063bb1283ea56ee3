"""A model that keeps its checkpoint's classes while it learns new ones (``train.py --keep-classes``).

One ``nn.Module``, one forward. The frozen layers 0..B-1 (the *trunk*; B is the branch point) run once per image;
the layers B..end exist more than once:

- ``model.B`` ... ``model.<Detect>``: the trainable head, for the data's classes (``yaml['nc']`` of them). With the
  trunk it is a plain ``Model``, so freeze specs, the loss, the EMA and the optimizer see nothing new;
- ``kept[h]``: the checkpoint's own layers B..end (an ``nn.Sequential`` whose children are named by their layer
  index, ``kept.0.17.cv1.conv.weight``), each with its own class count, always frozen and in eval mode
  (BatchNorm statistics included), never trained.

Training mode runs the trunk and the trainable head only (the loss sees the data's classes). Eval mode runs every
head on the trunk's outputs and merges their decoded predictions into one tensor (B, N_all, 5 + nc_all): each head's
class columns land on their merged indices, zeros elsewhere (a zero padding where the indices are consecutive, as
the checkpoint's are; else a constant one-hot matrix: exact, and plain for export); class-aware NMS then merges the
heads' boxes. ``trainable_only = True`` makes eval mode answer as the trainable head alone would (the data's
classes: what the trainer validates each epoch).

The model YAML carries everything needed to rebuild it (``utils/freeze/keep.py`` writes it)::

    keep:
      branch: 10                       # first layer of the heads; layers 0-9 are shared
      names: [person, ..., helmet]     # merged class names: the checkpoint's, then each new data class
      classes: [80, 0]                 # merged index of each class of the trainable head (a data 'person' -> 0)
      heads:                           # the kept heads, oldest first
        - {nc: 80, classes: [0, ..., 79]}          # (+ class_rows when that head folds several rows per class)

    model = build_model(ckpt['yaml'])  # models/yolo.py: KeepModel for such a YAML, Model otherwise
"""
from collections import OrderedDict
from copy import deepcopy

import torch
import torch.nn as nn

from models.fastpath import _contiguous, runs_nhwc
from models.yolo import Model, parse_model, plain_inference, run_layers


def check_keep_section(d):
    """The ``keep`` section of model dict ``d``, checked; a one-line ValueError naming what is wrong."""
    where = f"{d.get('yaml_file', 'model YAML')}: keep"
    k = d['keep']
    n_layers = len(d['backbone']) + len(d['head'])
    if not isinstance(k, dict) or not {'branch', 'names', 'classes', 'heads'} <= set(k):
        raise ValueError(f'{where} needs branch, names, classes and heads')
    if not isinstance(k['branch'], int) or not 1 <= k['branch'] <= n_layers - 1:
        raise ValueError(f"{where}: branch {k['branch']!r} must be a layer index 1-{n_layers - 1}")
    nc_all = len(k['names'])
    heads = [{'nc': d['nc'], 'classes': k['classes']}, *k['heads']]
    for h in heads:
        cls = h.get('classes')
        if not isinstance(cls, list) or len(cls) != h.get('nc') or not all(
                isinstance(c, int) and 0 <= c < nc_all for c in cls) or len(set(cls)) != len(cls):
            raise ValueError(f'{where}: head classes {str(cls)[:80]} must be {h.get("nc")} distinct indices '
                             f'into its {nc_all} names')
    return k


def scatter_matrix(classes, nc_all):
    """(len(classes), nc_all) one-hot: row i has a 1 in column ``classes[i]``."""
    m = torch.zeros(len(classes), nc_all)
    m[torch.arange(len(classes)), torch.tensor(classes, dtype=torch.long)] = 1.0
    return m


class KeepModel(Model):
    """A ``Model`` (trunk + trainable head) plus frozen copies of later layers with their own classes (module
    docstring). ``cfg`` is a model dict with a ``keep`` section."""

    def __init__(self, cfg, ch=3):
        super().__init__(cfg, ch=ch)
        keep = check_keep_section(self.yaml)
        self.branch = keep['branch']
        self.names = [str(n) for n in keep['names']]
        self.kept = nn.ModuleList(self._build_head(h, ch) for h in keep['heads'])
        self.kept.requires_grad_(False)
        nc_all = len(self.names)
        # where each head's class columns go (kept heads first, the trainable head last): a run of consecutive
        # merged indices is a zero padding (the checkpoint's head: columns 0..79, free); otherwise a constant
        # one-hot matrix (not saved: rebuilt from the YAML)
        self.pads, self.head_classes = [], [h['classes'] for h in keep['heads']] + [keep['classes']]
        for i, classes in enumerate(self.head_classes):
            run = classes == list(range(classes[0], classes[0] + len(classes)))
            self.pads.append((classes[0], nc_all - classes[0] - len(classes)) if run else None)
            self.register_buffer(f'scatter{i}', scatter_matrix(classes, nc_all) if not run else torch.zeros(0),
                                 persistent=False)
        self.trainable_only = False
        self.train(self.training)

    @property
    def nc_all(self):
        return len(self.names)

    @property
    def kept_nc(self):
        """Merged classes that a kept head predicts: the checkpoint's (always the first names)."""
        return 1 + max(c for h in self.yaml['keep']['heads'] for c in h['classes'])

    def _build_head(self, head, ch):
        """Layers branch..end of this YAML with ``head``'s classes, as one Sequential named by layer index."""
        d = deepcopy(self.yaml)
        d.pop('keep')
        d['nc'] = head['nc']
        d.pop('class_rows', None)
        if head.get('class_rows'):
            d['class_rows'] = list(head['class_rows'])
        layers, _ = parse_model(d, ch=[ch])
        detect, own = layers[-1], self.model[-1]
        detect.stride.copy_(own.stride)
        detect.anchors.copy_(own.anchors)
        return nn.Sequential(OrderedDict((str(i), layers[i]) for i in range(self.branch, len(layers))))

    def heads(self):
        """Every head as layers branch..end, the kept ones first, the trainable one last."""
        return [*self.kept, self.model[self.branch:]]

    def train(self, mode=True):
        """As ``Model.train``; the kept heads always stay in eval mode."""
        super().train(mode)
        if hasattr(self, 'kept'):
            self.kept.eval()
        return self

    def forward(self, x):
        if self.training or self.trainable_only:
            return super().forward(x)
        return self.forward_merged(x)

    def forward_merged(self, x):
        """Eval: (B, N_all, 5 + nc_all) decoded predictions of every head, and the trainable head's raw maps."""
        nhwc = runs_nhwc(self.fast_path, x) and not x.requires_grad
        if nhwc:  # as the fast path runs a frozen model: every layer but Detect in channels_last order
            x = x.contiguous(memory_format=torch.channels_last)
        y = []
        x = self.run_layers(0, x, y, stop=self.branch)
        if plain_inference():
            return self._merged_into(x, y, nhwc)
        merged, maps = [], None
        for i, head in enumerate(self.heads()):
            det, maps = self._run_head(head, x, list(y), nhwc)
            merged.append(torch.cat((det[..., :5], self._place_classes(i, det[..., 5:])), -1))
        return torch.cat(merged, 1), maps

    def _merged_into(self, x, y, nhwc):
        """``forward_merged``'s numbers, each head's decode written straight into its rows and class columns of
        one output (inference only: no padded copies and no concatenation, so doubling a Detect costs little)."""
        nchw, heads = ({} if nhwc else None), self.heads()  # nchw: each trunk output put in Detect's layout once
        maps = [self._head_maps(head, x, list(y), nchw) for head in heads]
        rows = [sum(p[0].numel() // p.shape[-1] for p in m) for m in maps]
        out = x.new_empty(x.shape[0], sum(rows), 5 + self.nc_all)
        first = 0
        for i, (head, head_maps) in enumerate(zip(heads, maps)):
            part = out[:, first:first + rows[i]]
            if self.pads[i] is not None:  # class columns 5 + left .. : zeros on either side
                left, right = self.pads[i]
                columns = slice(5 + left, out.shape[-1] - right)
                part[..., 5:5 + left] = 0
                part[..., out.shape[-1] - right:] = 0
            else:
                columns = 5 + torch.tensor(self.head_classes[i], device=out.device)
                part[..., 5:] = 0
            head[-1].decode_into(head_maps, out, first, columns)
            first += rows[i]
        return out, maps[-1]

    def _head_maps(self, head, x, y, nchw):
        """One head's raw Detect maps from the trunk's output ``x`` and saved outputs ``y``; ``nchw`` (a dict, or
        None when the layers run in the default layout) keeps each input already made contiguous for Detect."""
        body, detect = head[:-1], head[-1]
        x = run_layers(body, self.save, x, y)
        inputs = [x if j == -1 else y[j] for j in detect.f]
        if nchw is not None:
            inputs = [self._detect_layout(t, nchw) for t in inputs]
        return detect.raw_maps(inputs)

    @staticmethod
    def _detect_layout(t, done):
        """``t`` made contiguous for Detect once per forward, however many heads read it (``done`` keeps each
        source beside its copy, so no id is reused for another tensor while the forward runs)."""
        hit = done.get(id(t))
        if hit is None or hit[0] is not t:
            hit = done[id(t)] = (t, _contiguous(t))
        return hit[1]

    def _place_classes(self, i, scores):
        """Head ``i``'s class scores (..., nc_head) in their merged columns (..., nc_all), zeros elsewhere."""
        if self.pads[i] is not None:
            return nn.functional.pad(scores, self.pads[i])
        return scores @ getattr(self, f'scatter{i}').to(scores.dtype)

    def _run_head(self, head, x, y, nhwc):
        """One head (layers branch..end) on the trunk's output ``x`` and saved outputs ``y``."""
        body, detect = head[:-1], head[-1]
        x = run_layers(body, self.save, x, y)
        if nhwc:
            x = _contiguous(x)
            y = [_contiguous(t) for t in y]
        return run_layers([detect], self.save, x, y)

