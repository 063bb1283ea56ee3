"""Where train.py's result would differ from upstream YOLOv5 v7.0 given the same command, said in one line.

Options that match upstream (epochs 100, 640 px, batch 16, hyp.scratch-low, SGD, patience 100, ...) say nothing.
Each note names the flag that gives upstream's behaviour, so a command copied from a tutorial never silently
trains something else.
"""


def upstream_differences(opt):
    """Notes for the options as given (before defaults are filled: None means 'not given')."""
    notes = []
    if opt.data is None:
        notes.append('no --data: the built-in shapes demo (upstream: coco128.yaml from yolov5s.pt)')
    elif opt.weights is None and not opt.resume:
        notes.append("no --weights: training from scratch (upstream starts from yolov5s.pt: add --weights "
                     "yolov5s.pt; --weights '' says scratch and silences this)")
    if opt.weights and opt.hyp is None and not opt.resume:
        notes.append('a pretrained start uses the fine-tune recipe data/hyps/hyp.transfer.yaml (upstream: '
                     'hyp.scratch-low.yaml: --hyp hyp.scratch-low.yaml)')
    if opt.weights and not opt.resume and opt.freeze_bn_stats is None:
        notes.append("a pretrained start keeps every BatchNorm layer's statistics as loaded (upstream updates "
                     "them: --freeze-bn-stats false)")
    elif [str(f) for f in opt.freeze] != ['0'] and opt.freeze_bn_stats is None:
        notes.append("frozen layers keep their BatchNorm statistics (upstream lets them drift: "
                     "--freeze-bn-stats false)")
    if opt.image_weights:
        notes.append('--image-weights weighs classes by rarity only (upstream also by (1 - class mAP)^2)')
    return notes


def format_differences(notes):
    """One line, or None when nothing differs."""
    return f"Differs from upstream YOLOv5: {'; '.join(notes)}" if notes else None
