"""Official YOLOv5 weights: found on disk or downloaded on request, read without the official code and without
running anything a pickle asks for; and any ``.pt`` we cannot load named in one line.

Reading official YOLOv5 ``.pt`` files (releases v1.0-v7.0): an official checkpoint is a pickled dict whose
``'model'`` (or ``'ema'``) entry is a whole ``models.yolo.Model`` / ``DetectionModel`` object. We unpickle it with
an allow-list: tensors and storages are rebuilt by torch's own rebuild functions; ``collections.OrderedDict``
and ``set`` are real; every module class (``torch.nn.*``, ``models.common.*``, ``models.yolo.*``, ...) becomes an
inert ``Placeholder`` that only records the attributes the pickle gives it. Any other name (``os.system``,
``builtins.eval``, ...) is refused before it is looked up, so nothing it names can run.

    info = read_official('yolov5n.pt')   # {'yaml', 'state_dict', 'names', 'stride'}

Finding weights: a path on disk, or an official YOLOv5 release file fetched on request.

    resolve_weights('runs/train/exp/weights/best.pt')   # exists -> returned as is
    resolve_weights('yolov5s.pt')                       # missing official name -> downloaded (v7.0 assets)

Weights are downloaded only here, only for the official names, and only when the caller asks for such a file
(through ``utils/fetch.py``, the HTTP download the data sets use too; a failed one leaves no partial file).

Saying in a few words what a ``.pt`` file is when it is not a checkpoint we can load (``describe_*``): used only
on error paths, so that ``--weights``, ``--resume``, val and detect answer a zero-byte, truncated or foreign file
with one line naming the file and what it is (a plain state_dict, a torchvision model, an Ultralytics YOLOv8
file, ...) instead of a loader's traceback. Nothing there unpickles anything.
"""
import collections
import pickle
import re
import types
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from utils.errors import InputError


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (``inside_official``: met inside a YOLOv5 model)."""

    def __init__(self, name, inside_official=False):
        super().__init__(name)
        self.name, self.inside_official = name, inside_official


def _latin1_bytes(text, encoding='latin1'):
    """What protocol-2 pickles call (as ``_codecs.encode``) to rebuild ``bytes``; other codecs are refused."""
    if encoding not in ('latin1', 'latin-1') or not isinstance(text, str):
        raise UnsafePickleError(f'_codecs.encode with encoding {encoding!r}')
    return text.encode('latin1')


# Real objects the unpickler may hand out: torch's tensor rebuilders and plain containers.
SAFE_GLOBALS = {
    ('_codecs', 'encode'): _latin1_bytes,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): set,
    ('__builtin__', 'set'): set,  # protocol-2 pickles use the Python 2 name
    ('torch._utils', '_rebuild_tensor'): torch._utils._rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): torch._utils._rebuild_parameter_with_state,
    ('torch', 'Size'): torch.Size,
}
# Modules whose classes become inert placeholders (with torch.nn.modules.*: layers and the official classes).
OFFICIAL_MODULES = {'models.common', 'models.yolo', 'models.experimental', 'utils.activations'}
# Value types found outside the model in some releases (numpy best_fitness in v3-v5, paths in ``opt``).
PLACEHOLDER_NAMES = {
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('pathlib', 'PosixPath'), ('pathlib', 'WindowsPath'), ('pathlib', 'Path'),
}


class Placeholder:
    """Stands in for a pickled class: keeps its qualified name and whatever state the pickle gives, runs nothing."""

    qualname = ''

    def __init__(self, *args, **kwargs):  # reached by REDUCE (``cls(*args)``)
        self.args, self.state = args, {}

    def __setstate__(self, state):  # reached by BUILD
        self.state = state if isinstance(state, dict) else {'_state': state}

    def __repr__(self):
        return f'Placeholder({self.qualname})'

    def child(self, name):
        return (self.state.get('_modules') or {}).get(name)


def _is_allowed_placeholder(module, name):
    if (module, name) in PLACEHOLDER_NAMES:
        return True
    known_module = module.startswith('torch.nn.modules.') or module in OFFICIAL_MODULES
    return known_module and name.isidentifier() and not name.startswith('_')


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only answers from the allow-lists above."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._placeholders = {}

    def find_class(self, module, name):
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if _is_allowed_placeholder(module, name):
            key = f'{module}.{name}'
            if key not in self._placeholders:
                self._placeholders[key] = type(name, (Placeholder,), {'qualname': key})
            return self._placeholders[key]
        inside = any(k.startswith(('models.yolo.', 'models.common.')) for k in self._placeholders)
        raise UnsafePickleError(f'{module}.{name}', inside)


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load needs from a pickle module: an Unpickler class and a load function.
RESTRICTED_PICKLE = types.SimpleNamespace(__name__='restricted_pickle', Unpickler=RestrictedUnpickler,
                                          load=_restricted_load)


LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError, TypeError, ValueError,
               IndexError, KeyError)


def _torch_load_restricted(path):
    with warnings.catch_warnings():  # pre-1.6 files carry class sources that placeholders cannot match
        warnings.filterwarnings('ignore', message="Couldn't retrieve source code")
        return torch.load(path, map_location='cpu', pickle_module=RESTRICTED_PICKLE, weights_only=False)


def restricted_torch_load(path):
    """``torch.load`` through the allow-list. Raises a one-line ValueError naming the file and what it is (empty,
    truncated, an Ultralytics or torchvision file, a refused class)."""
    try:
        return _torch_load_restricted(path)
    except UnsafePickleError as e:
        raise InputError(f'{path}: {describe_refused(e.name, e.inside_official)}') from None
    except LOAD_ERRORS as e:
        raise InputError(f'{path}: not a readable checkpoint: {describe_unreadable(path, e)}') from None


def describe_pickle(path):
    """What a file that torch's weights_only loader refused is, in a few words (it is loaded with the allow-list)."""
    try:
        obj = _torch_load_restricted(path)
    except UnsafePickleError as e:
        return describe_refused(e.name, e.inside_official)
    except LOAD_ERRORS as e:
        return describe_unreadable(path, e)
    try:
        _model_object(obj, path)
    except ValueError:
        return f'a pickle of {type(obj).__name__} holding no YOLOv5 model'
    return 'an official YOLOv5 checkpoint (a pickled model), not a training checkpoint of this project'


def placeholder_state_dict(module, prefix=''):
    """The ``state_dict`` a pickled module would give: parameters, persistent buffers, then children, in order."""
    out = {}
    state = module.state
    skip = state.get('_non_persistent_buffers_set') or set()
    for name, t in (state.get('_parameters') or {}).items():
        if t is not None:
            out[prefix + name] = t.detach()
    for name, t in (state.get('_buffers') or {}).items():
        if t is not None and name not in skip:
            out[prefix + name] = t
    for name, child in (state.get('_modules') or {}).items():
        if isinstance(child, Placeholder):
            out.update(placeholder_state_dict(child, f'{prefix}{name}.'))
    return out


def iter_placeholders(module):
    """Depth-first walk over a placeholder module tree (the module first)."""
    yield module
    for child in (module.state.get('_modules') or {}).values():
        if isinstance(child, Placeholder):
            yield from iter_placeholders(child)


def _short(obj):
    return obj.qualname.rsplit('.', 1)[-1] if isinstance(obj, Placeholder) else type(obj).__name__


def _activation_name(act, path):
    """Our activation name for a pickled activation module; LeakyReLU must have YOLOv5's slope 0.1."""
    name = _short(act)
    if name == 'LeakyReLU' and abs(act.state.get('negative_slope', 0.1) - 0.1) > 1e-6:
        raise InputError(f"{path}: LeakyReLU slope {act.state['negative_slope']} is not supported (only 0.1)")
    if name not in ('SiLU', 'LeakyReLU', 'Hardswish', 'ReLU', 'Identity'):
        raise InputError(f'{path}: unsupported activation {act.qualname}')
    return name


def detect_activations(model, path=''):
    """(Conv activation, BottleneckCSP post-concat activation or None) as used in the pickled modules.

    Releases v1-v2 use LeakyReLU(0.1) throughout, v3 Hardswish with LeakyReLU after the CSP concat, v4+ SiLU.
    """
    act = csp_act = None
    for m in iter_placeholders(model):
        kind = _short(m)
        if kind == 'Conv' and act is None and m.child('act') is not None:
            act = _activation_name(m.child('act'), path)
        elif kind == 'BottleneckCSP' and csp_act is None and m.child('act') is not None:
            csp_act = _activation_name(m.child('act'), path)
    return act or 'SiLU', csp_act


def _model_object(ckpt, path):
    if isinstance(ckpt, Placeholder):  # a bare pickled model
        return ckpt
    if not isinstance(ckpt, dict):
        raise InputError(f'{path}: not a YOLOv5 checkpoint (top level is {type(ckpt).__name__})')
    for key in ('ema', 'model'):  # official files keep the EMA in 'ema' until stripped, then in 'model'
        if isinstance(ckpt.get(key), Placeholder):
            return ckpt[key]
    raise InputError(f"{path}: not a YOLOv5 checkpoint (no pickled model under 'model' or 'ema')")


def _names(state, nc):
    names = state.get('names')
    if isinstance(names, dict):  # v7.0 stores {index: name}
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, (list, tuple)) or len(names) != nc:
        return [str(i) for i in range(nc)]
    return [str(n) for n in names]


def official_to_weights(ckpt, path=''):
    """Turn an unpickled official checkpoint into {'yaml', 'state_dict' (fp32), 'names', 'stride'}."""
    model = _model_object(ckpt, path)
    state = model.state
    cfg = state.get('yaml', state.get('md'))  # v1.0 called the model dict ``md``
    if not isinstance(cfg, dict) or 'backbone' not in cfg or 'head' not in cfg:
        raise InputError(f'{path}: the pickled model carries no YAML dict to rebuild it from')
    cfg = dict(cfg)
    weights = placeholder_state_dict(model)
    if not weights:
        raise InputError(f'{path}: the pickled model holds no tensors')
    cfg['activation'], csp_act = detect_activations(model, path)
    cfg.pop('csp_activation', None)
    if csp_act and csp_act != cfg['activation']:
        cfg['csp_activation'] = csp_act
    cfg['anchor_grid_buffer'] = any(k.endswith('.anchor_grid') for k in weights)
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    stride = state.get('stride')
    return {'yaml': cfg, 'state_dict': state_dict, 'names': _names(state, int(cfg['nc'])),
            'stride': stride.float() if isinstance(stride, torch.Tensor) else None}


def read_official(path):
    """Read an official YOLOv5 ``.pt`` file safely: {'yaml', 'state_dict', 'names', 'stride'}."""
    return official_to_weights(restricted_torch_load(path), path)


# ---------------------------------------------------------------- finding weights
RELEASE_URL = 'https://github.com/ultralytics/yolov5/releases/download/v7.0/{name}'
OFFICIAL_NAME = re.compile(r'yolov5[nsmlx]6?\.pt')  # yolov5n.pt ... yolov5x6.pt


def is_official_name(name):
    return bool(OFFICIAL_NAME.fullmatch(Path(name).name))


def fetch(url, path):
    """The one HTTP download (utils/fetch.py: progress bar, atomic rename), loaded only when a file is missing;
    a module name tests replace."""
    from utils.fetch import fetch as http_fetch  # lazy: a run on weights already on disk never needs HTTP
    return http_fetch(url, path)


def resolve_weights(name_or_path):
    """An existing weights path, or an official release file downloaded to that path (bare name: working dir).

    Raises FileNotFoundError (one line) for any other missing path, or when the download fails.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    if not is_official_name(path):
        raise FileNotFoundError(f'{path}: weights file not found')
    url = RELEASE_URL.format(name=path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fetch(url, path)
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
        reason = str(getattr(e, 'reason', e)).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f'{path}: not on disk and the download from {url} failed ({reason}); '
                                f'download it yourself and put it at {path.resolve()}') from None
    return path


# ---------------------------------------------------------------- naming a file we cannot load
STATE_DICT_KEYS = ('state_dict', 'model_state_dict', 'model', 'ema', 'net', 'weights')


def first_line(error):
    """The first line of an exception's text (loaders write paragraphs), at most 160 characters."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return (lines[0] if lines else type(error).__name__)[:160]


def _is_state_dict(obj):
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def describe_object(obj):
    """What a plain (weights_only-loadable) object that is not one of our checkpoints is."""
    if _is_state_dict(obj):
        return (f'a plain state_dict ({len(obj)} tensors, first {next(iter(obj))!r}) with no model YAML to '
                f'rebuild the model from')
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return (f"another tool's checkpoint: a state_dict of {len(obj[key])} tensors under {key!r}, "
                        f'no model YAML to rebuild the model from')
        keys = ', '.join(repr(k) for k in list(obj)[:5]) + (', ...' if len(obj) > 5 else '')
        return f'a dict without model weights (keys {keys})' if obj else 'an empty dict'
    return f'a saved {type(obj).__name__}, not a checkpoint'


def describe_unreadable(path, error):
    """Why ``path`` could not be loaded at all: empty, truncated, damaged or not a PyTorch file."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return 'an empty file (0 bytes)'
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.startswith(b'PK\x03\x04'):  # torch.save's zip archive
        if not zipfile.is_zipfile(path):
            return f'truncated: the zip archive torch.save writes ends early ({size:,} bytes, no directory)'
        return f'a damaged PyTorch zip archive ({first_line(error)})'
    if head[:1] == b'\x80':  # a pickle: the legacy (pre-1.6) torch format
        text = str(error).lower()
        if isinstance(error, EOFError) or 'eof' in text or 'truncated' in text:
            return f'truncated: a legacy PyTorch pickle that ends early ({size:,} bytes)'
        return f'a damaged legacy PyTorch pickle ({first_line(error)})'
    if all(32 <= b < 127 or b in b'\t\r\n' for b in head):
        return f'not a PyTorch file (it starts with text {head[:24].decode()!r})'
    return f'not a PyTorch file ({first_line(error)})'


def describe_refused(name, inside_official=False):
    """What a pickle naming the refused global ``name`` is; ``inside_official``: found within a YOLOv5 model."""
    if not inside_official and name.startswith('ultralytics.'):
        return (f'an Ultralytics (YOLOv8-style) checkpoint, its pickle names {name}: refused, only official '
                f'YOLOv5 v1.0-v7.0 files and our own are read')
    if not inside_official and name.startswith('torchvision.'):
        return f'a pickled torchvision model ({name}), not a YOLOv5 detector: refused'
    return (f'refused to load, the pickle names {name}, which is not a known YOLOv5 or torch class '
            f'(the file may contain code)')
