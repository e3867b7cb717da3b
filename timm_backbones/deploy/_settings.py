"""Reading a head's `test_cfg` for the end-to-end graph: the thresholds, the fixed numbers of
kept boxes a graph needs and the NMS settings, each checked once with an error naming the field,
the value, what the export supports and the fix. Also `ExportError`, the one error the export
raises for a detector or operation it cannot put in a graph.
"""
from typing import Any, Mapping, Tuple

__all__ = ['ExportError', 'nms_settings', 'positive_int', 'test_cfg_of']


class ExportError(RuntimeError):
    """A detector, head setting or operation that the end-to-end export cannot put in a graph.

    The message names the family (detector and head classes), the operation or setting and the
    fix (often `--raw`, which exports the head tensors without post-processing).
    """


def test_cfg_of(module: Any, where: str) -> Mapping:
    """`module.test_cfg`, which must be a mapping.

    Args:
        module: A head (`bbox_head`, `rpn_head`, `roi_head`).
        where: Its name in messages (e.g. `'RetinaNet.bbox_head'`).
    """
    cfg = getattr(module, 'test_cfg', None)
    if not isinstance(cfg, Mapping):
        raise ExportError(f'{where} has no test_cfg (got {cfg!r}): the end-to-end graph takes its '
                          f'thresholds and the number of boxes it keeps from the test_cfg. Set '
                          f"model.test_cfg in the config as mmdet's configs do.")
    return cfg


def positive_int(cfg: Mapping, key: str, where: str) -> int:
    """`cfg[key]` as a positive int (the graph's fixed output sizes).

    Args:
        cfg: A `test_cfg`.
        key: `'max_per_img'`, `'nms_pre'`, ...
        where: The `test_cfg`'s place in the config, for messages.
    """
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ExportError(f'{where}.{key}={value!r}: the end-to-end graph has fixed-size outputs '
                          f'and needs a positive int here (mmdet treats -1 or a missing value as '
                          f"'no limit', which has no fixed size). Set it, e.g. --cfg-options "
                          f'{where}.{key}=100.')
    return value


def nms_settings(nms: Any, where: str) -> Tuple[float, bool]:
    """`(iou_threshold, class_agnostic)` of a `test_cfg.nms` dict; only mmcv's plain `nms` has an
    in-graph equivalent (ONNX NonMaxSuppression).

    Args:
        nms: The `nms` dict, e.g. `dict(type='nms', iou_threshold=0.5)`.
        where: Its place in the config, for messages.
    """
    if not isinstance(nms, Mapping):
        raise ExportError(f'{where}={nms!r}: the end-to-end graph needs an nms dict such as '
                          f"dict(type='nms', iou_threshold=0.5).")
    kind = nms.get('type', 'nms')
    if kind != 'nms':
        raise ExportError(f"{where}.type={kind!r}: the end-to-end graph has mmcv's 'nms' only "
                          f'(ONNX NonMaxSuppression); {kind!r} has no in-graph equivalent. Set '
                          f"{where}.type='nms', or export the head tensors with --raw.")
    unknown = sorted(set(nms) - {'type', 'iou_threshold', 'class_agnostic', 'split_thr',
                                 'offset', 'score_threshold', 'max_num'})
    if unknown:
        raise ExportError(f'{where} has {unknown}: not nms settings the end-to-end graph knows '
                          f'(iou_threshold, class_agnostic, split_thr).')
    if nms.get('offset', 0) != 0 or nms.get('score_threshold', 0) != 0 or \
            nms.get('max_num', -1) != -1:
        raise ExportError(f'{where}={dict(nms)!r}: offset, score_threshold and max_num of mmcv\'s '
                          f'nms are not in the end-to-end graph; use test_cfg.score_thr and '
                          f'max_per_img instead.')
    iou = nms.get('iou_threshold')
    if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0 <= iou <= 1:
        raise ExportError(f'{where}.iou_threshold={iou!r}: must be a number in [0, 1].')
    return float(iou), bool(nms.get('class_agnostic', False))
