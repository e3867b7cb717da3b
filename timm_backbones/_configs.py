"""Reading and writing config dicts: the one place that parses a config's `type` (`type_name`),
recognises timm backbone configs (`timm_model_name`), turns config containers into plain Python
values (`to_plain`), checks plain ints (`is_int`) and fills a field with a log line
(`set_logged`).
"""
import logging
from typing import Any, Mapping, MutableMapping, Optional

from mmengine.logging import print_log

__all__ = ['type_name', 'timm_model_name', 'to_plain', 'to_list', 'AUTO', 'is_auto', 'is_int',
           'set_logged']

AUTO = 'auto'  # a field filled from the timm backbone by resolve_config

BACKBONE_TYPE = 'TimmBackbone'
ARCH_SCOPE = 'timm.'  # `type='timm.<arch>'`


def type_name(cfg: Any) -> Optional[str]:
    """The registry name of a config's `type` without its scope (`'mmdet.FPN'` -> `'FPN'`,
    `'timm.resnet50'` -> `'resnet50'`); the class name if `type` is a class; None without one.

    Example:
        >>> type_name(dict(type='mmdet.FPN'))
        'FPN'
    """
    if not hasattr(cfg, 'get'):
        return None
    kind = cfg.get('type')
    if isinstance(kind, type):
        return kind.__name__
    return kind.split('.')[-1] if isinstance(kind, str) else None


def timm_model_name(cfg: Any) -> Optional[str]:
    """The timm model a backbone config builds, or None if it is not a timm backbone config.

    Args:
        cfg: A config dict (`dict(type='TimmBackbone', model_name=...)` or
            `dict(type='timm.<arch>', ...)`).

    Example:
        >>> timm_model_name(dict(type='timm.resnet50'))
        'resnet50'
    """
    if not hasattr(cfg, 'get'):
        return None
    if type_name(cfg) == BACKBONE_TYPE:
        if 'model_name' not in cfg:
            raise ValueError(f'a TimmBackbone config needs model_name, got {dict(cfg)}')
        return cfg['model_name']
    kind = cfg.get('type')
    if isinstance(kind, str) and kind.startswith(ARCH_SCOPE):
        return kind[len(ARCH_SCOPE):]
    return None


def is_auto(value: Any) -> bool:
    """Whether a config value is `'auto'` (to be filled from the backbone).

    Example:
        >>> is_auto('auto'), is_auto(['auto'])
        (True, False)
    """
    return isinstance(value, str) and value == AUTO


def to_plain(value: Any) -> Any:
    """ConfigDicts to dicts and lists to tuples (recursively), for options and comparisons.

    Example:
        >>> to_plain([1, [2, 3]])
        (1, (2, 3))
    """
    if hasattr(value, 'to_dict'):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(to_plain(v) for v in value)
    return value


def to_list(value: Any) -> Any:
    """ConfigDicts to dicts and tuples/ConfigLists to lists (recursively): values as a config
    file or a message writes them.

    Example:
        >>> to_list((1, (2, 3)))
        [1, [2, 3]]
    """
    plain = to_plain(value)
    if isinstance(plain, tuple):
        return [to_list(v) for v in plain]
    if isinstance(plain, dict):
        return {k: to_list(v) for k, v in plain.items()}
    return plain


def is_int(value: Any) -> bool:
    """An int that is not a bool.

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool)


def set_logged(cfg: MutableMapping, key: str, value: Any, where: str, why: str = '',
               level: int = logging.DEBUG) -> None:
    """`cfg[key] = value`, logged as `resolve_config: where.key = value (why)`.

    Args:
        cfg: The config dict changed in place.
        key: The field.
        value: Its new value.
        where: The config path of `cfg` (e.g. 'model.neck').
        why: Where the value comes from, if worth saying.
        level: The log level (DEBUG: routine fills; INFO: choices a user should see).
    """
    cfg[key] = value
    print_log(f'resolve_config: {where}.{key} = {value!r}' + (f' ({why})' if why else ''),
              logger='current', level=level)
