"""Loading weights into models, the one owner of every load, each verified: timm weights
(`create_pretrained`: a file or timm's hub, through timm so it adapts them), a backbone or
detector checkpoint into a backbone (`load_init_checkpoint`, `init_cfg=Pretrained` with an
optional prefix) and a whole detector checkpoint (`load_detector_checkpoint`,
`verify_detector_checkpoint`). Each load reports loaded/total tensors and fails when nothing or
too little matched, showing expected vs found names, the prefix that would make them match and
what to do instead (`ADVICE`: one text per kind of load). Files are read by `_checkpoint.py`.
"""
import collections
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from ._checkpoint import read_checkpoint, state_dict_from
from ._names import full_name
from ._timm import TimmBuildError, create_features

__all__ = ['ADVICE', 'MIN_LOADED', 'LoadReport', 'check_load', 'key_mismatch_hint',
           'verify_state_dict', 'load_verified', 'create_pretrained', 'read_timm_weights',
           'load_init_checkpoint', 'load_detector_checkpoint', 'verify_detector_checkpoint']

# Fewer matched tensors than this fraction of the target's is an error, not a partial load.
MIN_LOADED = 0.5

# What each kind of load takes, and where other weights go instead: the advice of its errors.
ADVICE = {
    'pretrained': (
        "pretrained= takes timm-format weights of this architecture (a timm model's state_dict, "
        '.pth/.bin/.safetensors). For a checkpoint of a TimmBackbone or of a detector use '
        "init_cfg=dict(type='Pretrained', checkpoint=path) (detector: add prefix='backbone.')."),
    'hub': (  # .format(model_name=...)
        "Offline, download the weights elsewhere and pass "
        "pretrained='/path/to/{model_name}.safetensors' (a timm-format state dict), or use "
        "init_cfg=dict(type='Pretrained', checkpoint=...) for a backbone/detector checkpoint. "
        "timm loads pretrained weights when the backbone is built, also where a detector "
        "checkpoint replaces them afterwards (init_detector, DetInferencer): there, set "
        "model.backbone.pretrained=False."),
    'init_cfg': (
        "init_cfg=Pretrained takes a checkpoint of this TimmBackbone (names 'model.*') or of a "
        "detector (add prefix='backbone.'); for a timm model's own weights (a timm state_dict) "
        "use pretrained='/path/to/weights' instead."),
    'detector': (
        'A detector checkpoint (load_from, init_detector, tools/test.py) is one written by '
        'training this model (work_dirs/.../epoch_N.pth). Backbone weights alone go in the '
        "backbone's config: a timm model's weights as model.backbone.pretrained='/path', a "
        "TimmBackbone checkpoint as model.backbone.init_cfg=dict(type='Pretrained', "
        "checkpoint='/path')."),
}


def key_mismatch_hint(expected: Sequence[str], found: Sequence[str]) -> Optional[Tuple[str, str]]:
    """How `found` names would match `expected`: ('strip', p) when found names are p + an
    expected name, ('add', p) when expected names are p + a found name; the prefix explaining
    most names wins. None if no prefix explains at least a quarter of the expected names (a
    few short names such as '0.weight' of another model end many names by chance).

    Example:
        >>> key_mismatch_hint(['conv.weight'], ['backbone.conv.weight'])
        ('strip', 'backbone.')
    """
    expected_set, found_set = set(expected), set(found)
    votes: collections.Counter = collections.Counter()
    for names, targets, how in ((found, expected_set, 'strip'), (expected, found_set, 'add')):
        for name in names:
            parts = name.split('.')
            for i in range(1, len(parts)):
                if '.'.join(parts[i:]) in targets:
                    votes[(how, '.'.join(parts[:i]) + '.')] += 1
                    break
    if not votes:
        return None
    best, count = votes.most_common(1)[0]
    return best if count >= len(expected) * MIN_LOADED / 2 else None


@dataclass(frozen=True)
class LoadReport:
    """What a weight load matched.

    Args:
        target: What was loaded into (e.g. "TimmBackbone('resnet18')").
        source: Where the weights came from (a file name).
        expected: Tensor names of the target (the ones counted).
        loaded: Those that received a tensor from the source.
        found: Tensor names the source offered (after any prefix was applied).
        mismatched: Names present in both, with different shapes (not loaded).
    """
    target: str
    source: str
    expected: Tuple[str, ...]
    loaded: Tuple[str, ...]
    found: Tuple[str, ...]
    mismatched: Tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """Number of tensors of the target."""
        return len(self.expected)

    @property
    def missing(self) -> Tuple[str, ...]:
        """Tensors of the target that got nothing (kept their previous values)."""
        loaded = set(self.loaded)
        return tuple(k for k in self.expected if k not in loaded)

    def summary(self) -> str:
        """'loaded 102/102 tensors of ... from ...'."""
        return (f'loaded {len(self.loaded)}/{self.total} tensors of {self.target} from '
                f'{self.source}')


def _examples(names: Sequence[str], n: int = 4) -> str:
    names = list(names)
    more = f' ... ({len(names)} in all)' if len(names) > n else ''
    return ', '.join(repr(k) for k in names[:n]) + more if names else '(none)'


def check_load(report: LoadReport, min_fraction: float = MIN_LOADED, advice: str = '') -> None:
    """Log the load (info when complete, a warning naming what is missing otherwise); raise a
    `ValueError` when nothing, or less than `min_fraction` of the target, was loaded, showing a
    few expected and found names, the prefix that would match them and `advice`.

    Example:
        >>> check_load(LoadReport('TimmBackbone', 'w.pth', ('a',), ('a',), ('a',)))
    """
    loaded, total = len(report.loaded), report.total
    if total and loaded >= max(min_fraction * total, 1):
        if loaded == total:
            print_log(f'{report.summary()}', logger='current')
        else:
            print_log(f'{report.summary()}; not in the file (left as they were): '
                      f'{_examples(report.missing, 8)}', logger='current', level=logging.WARNING)
        return
    matched = set(report.loaded) | set(report.mismatched)
    unmatched = [k for k in report.found if k not in matched]
    hint = key_mismatch_hint([k for k in report.expected if k not in matched], unmatched)
    if report.mismatched and not unmatched:
        why = ('the names match but the shapes differ: the file holds weights of another '
               'variant or configuration of the model')
    elif hint is None:
        why = 'no prefix makes the names match: the file holds weights of another model'
    elif hint[0] == 'strip':
        why = (f"the file's names are the expected ones with {hint[1]!r} in front "
               f'(prefix={hint[1]!r})')
    else:
        why = f"the file's names lack the prefix {hint[1]!r} of the expected ones"
    shapes = (f' {len(report.mismatched)} names matched with other shapes: '
              f'{_examples(report.mismatched)}.' if report.mismatched else '')
    raise ValueError(
        f'{report.summary()}: too few matched (at least {min_fraction:.0%} needed). Expected '
        f'names like {_examples(report.expected)}; the file has {_examples(report.found)}: '
        f'{why}.{shapes} {advice}'.rstrip())


Target = Union[nn.Module, Mapping[str, Tensor]]


def _own_state(target: Target) -> Mapping[str, Tensor]:
    """The state a load is checked against: a module's, or a given one (names and shapes, e.g.
    of a model whose parameters are FSDP shards, recorded before it was wrapped)."""
    return target if isinstance(target, Mapping) else target.state_dict()


def verify_state_dict(module: Target, state_dict: Mapping[str, Any], target: str,
                      source: str, scope: str = '', min_fraction: float = MIN_LOADED,
                      advice: str = '') -> LoadReport:
    """`check_load` of loading `state_dict` into `module`, counting the tensors whose names
    start with `scope` (nothing is loaded here).

    Args:
        module: Where the tensors go, or its state (only names and shapes are read).
        state_dict: Name -> tensor, names as in `module.state_dict()`.
        target: What `module` is, for messages.
        source: Where the tensors came from, for messages.
        scope: Count only the target's tensors under this name prefix (e.g. 'backbone.').
        min_fraction: See `check_load`.
        advice: Appended to the error (what to do instead).

    Example:
        >>> verify_state_dict(detector, state, 'the detector', path, scope='backbone.').total
        102
    """
    own = _own_state(module)
    expected = tuple(k for k in own if k.startswith(scope))
    found = tuple(k for k in state_dict if isinstance(k, str))
    shape = {k: tuple(getattr(v, 'shape', ())) for k, v in state_dict.items()}
    loaded = tuple(k for k in expected if k in shape and shape[k] == tuple(own[k].shape))
    mismatched = tuple(k for k in expected if k in shape and shape[k] != tuple(own[k].shape))
    report = LoadReport(target, source, expected, loaded, found, mismatched)
    check_load(report, min_fraction, advice)
    return report


def load_verified(module: nn.Module, state_dict: Mapping[str, Any], target: str, source: str,
                  scope: str = '', min_fraction: float = MIN_LOADED, advice: str = ''
                  ) -> LoadReport:
    """`verify_state_dict`, then load (strict=False, with mmengine's `load_state_dict`, which
    logs what did not match).

    Example:
        >>> report = load_verified(backbone, state_dict_from(read_checkpoint(path)),
        ...                        'TimmBackbone', path)
    """
    from mmengine.runner import load_state_dict
    report = verify_state_dict(module, state_dict, target, source, scope, min_fraction, advice)
    load_state_dict(module, dict(state_dict), strict=False, logger='current')
    return report


# ---- timm weights (pretrained=) ----------------------------------------------------------------

def read_timm_weights(path: Union[str, os.PathLike]) -> Dict[str, Tensor]:
    """The tensors of a timm-format weight file (torch or safetensors), read weights-only; a
    detector checkpoint (whose names timm would silently fail to match) is refused with the
    option that takes it.

    Example:
        >>> state = read_timm_weights('resnet18.safetensors')
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f'pretrained={path!r}: no such file. Pass the path of a timm-format weight file '
            f'(.pth/.bin/.safetensors, e.g. saved with torch.save(model.state_dict(), path)), '
            f'or pretrained=False.')
    # the file is inspected first: empty, truncated, a directory, no checkpoint at all
    checkpoint = read_checkpoint(path, option='pretrained=')
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get('state_dict'), Mapping):
        names = [k for k in checkpoint['state_dict'] if isinstance(k, str)]
        if names and sum(k.startswith('backbone.') for k in names) >= len(names) / 2:
            raise ValueError(
                f'pretrained={path!r} is a detector checkpoint (names like {names[0]!r}), not '
                f"timm-format weights: use init_cfg=dict(type='Pretrained', checkpoint={path!r}, "
                f"prefix='backbone.') instead of pretrained=.")
    return dict(state_dict_from(checkpoint, path))


def create_pretrained(model_name: str, kwargs: Dict[str, Any],
                      out_indices: Optional[Tuple[int, ...]], pretrained: Union[bool, str]
                      ) -> nn.Module:
    """timm's feature extractor with pretrained weights: timm's hub (`True`) or a timm-format
    file. timm adapts the weights (classifier dropped, stem for other `in_chans`, position
    embeddings) and loads them before wrapping the model. A file's load is verified: the
    extractor's tensors that hold the file's values (by name, or by value where timm renamed
    them) are counted and logged; fewer than `MIN_LOADED` is a `ValueError` showing expected vs
    found names.

    Example:
        >>> model = create_pretrained('resnet18', timm_kwargs(), (1, 2, 3, 4), 'resnet18.pth')
    """
    target = f'timm {model_name!r} (feature extractor)'
    if pretrained is True:
        try:
            model = create_features(model_name, kwargs, out_indices, pretrained=True)
        except Exception as err:  # noqa: BLE001 - hub, network and file errors of many kinds
            raise RuntimeError(
                f"could not load pretrained weights for {model_name!r} from timm's hub (network "
                f'access needed): {type(err).__name__}: {err}. '
                f'{ADVICE["hub"].format(model_name=model_name)}') from err
        print_log(f"{target}: timm's pretrained weights loaded from its hub", logger='current')
        return model
    state = read_timm_weights(pretrained)
    source = f'the file {pretrained!r}'
    try:
        model = create_features(model_name, kwargs, out_indices, pretrained=state)
    except TimmBuildError as err:
        raise ValueError(f'could not load pretrained weights for {model_name!r} from {source}: '
                         f"{err}. {ADVICE['pretrained']}") from err
    check_load(_timm_load_report(model, state, target, source), advice=ADVICE['pretrained'])
    return model


def _timm_load_report(model: nn.Module, state: Mapping[str, Any], target: str,
                      source: str) -> LoadReport:
    """Which tensors of the feature extractor hold the file's values: under their full-model
    name (`_names.full_name`), or, for tensors timm renamed while adapting the file, a file
    tensor of the same shape and values. Constant tensors (fresh norm statistics, zero biases)
    count by name only: their values say nothing about where they came from."""
    files = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, Tensor)}
    by_value: Dict[Tuple[Any, ...], List[Tensor]] = collections.defaultdict(list)
    for tensor in files.values():
        if not _constant(tensor):
            by_value[_fingerprint(tensor)].append(tensor)
    loaded = []
    own = model.state_dict()
    for name, tensor in own.items():
        named = full_name(name, lambda k: k in files and files[k].shape == tensor.shape)
        if named is not None and torch.equal(files[named], tensor):
            loaded.append(name)
        elif not _constant(tensor) and any(torch.equal(t, tensor) for t in
                                           by_value.get(_fingerprint(tensor), ())):
            loaded.append(name)
    return LoadReport(target, source, tuple(own), tuple(loaded), tuple(files))


def _constant(tensor: Tensor) -> bool:
    return tensor.numel() <= 1 or bool((tensor == tensor.reshape(-1)[0]).all())


def _fingerprint(tensor: Tensor) -> Tuple[Any, ...]:
    flat = tensor.detach().reshape(-1)
    return (tuple(tensor.shape), tensor.dtype, float(flat.double().sum()),
            tuple(flat[:4].tolist()))


# ---- checkpoints of a backbone or detector -----------------------------------------------------

def load_init_checkpoint(module: nn.Module, cfg: Mapping[str, Any], target: str) -> LoadReport:
    """Load an `init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)` into `module`,
    verified (see `load_verified`): with a prefix (`'backbone.'` for a detector checkpoint) only
    the names under it, without it.

    Example:
        >>> load_init_checkpoint(backbone, dict(type='Pretrained', checkpoint='epoch_8.pth',
        ...                                     prefix='backbone.'), 'TimmBackbone')
    """
    path, prefix = cfg['checkpoint'], cfg.get('prefix')
    state = state_dict_from(read_checkpoint(path, cfg.get('map_location', 'cpu'),
                                            option="init_cfg=dict(type='Pretrained') checkpoint"),
                            path)
    where = f'{path} (prefix={prefix!r})' if prefix else path
    if prefix:
        names = list(state)[:4]
        state = collections.OrderedDict((k[len(prefix):], v) for k, v in state.items()
                                        if isinstance(k, str) and k.startswith(prefix))
        if not state:
            raise ValueError(
                f'init_cfg checkpoint {path!r} has no tensor named {prefix}...: it holds '
                f"names like {names}. Set prefix to the part before the backbone's own names "
                f"(model.*), e.g. prefix='backbone.' for a detector checkpoint, or leave it out "
                f'for a TimmBackbone checkpoint.')
    return load_verified(module, state, target, where, advice=ADVICE['init_cfg'])


def _detector_scope(model: Target) -> str:
    """Detector loads are judged by the backbone's tensors (the heads may be re-initialised)."""
    return 'backbone.' if any(k.startswith('backbone.') for k in _own_state(model)) else ''


def verify_detector_checkpoint(model: Target, checkpoint: Any, filename: str) -> LoadReport:
    """`verify_state_dict` of a whole-model checkpoint read by a runner (`load_from`,
    `tools/test.py`, resume): loaded/total backbone tensors, an error when too few matched.
    `model` may be the model's state (names and shapes) instead of the model.

    Example:
        >>> verify_detector_checkpoint(detector, torch.load(path), path)
    """
    return verify_state_dict(model, state_dict_from(checkpoint, filename), 'the model',
                             filename, scope=_detector_scope(model), advice=ADVICE['detector'])


def load_detector_checkpoint(model: nn.Module, filename: str,
                             option: str = 'init_detector checkpoint') -> Dict[str, Any]:
    """Read a detector checkpoint weights-only and load it into `model`, verified (backbone
    tensors counted); returns the checkpoint (its `meta` holds the dataset's classes).

    Example:
        >>> meta = load_detector_checkpoint(detector, 'work_dirs/x/epoch_8.pth').get('meta', {})
    """
    checkpoint = read_checkpoint(filename, option=option)
    load_verified(model, state_dict_from(checkpoint, filename), 'the detector', filename,
                  scope=_detector_scope(model), advice=ADVICE['detector'])
    return checkpoint if isinstance(checkpoint, dict) else {}
