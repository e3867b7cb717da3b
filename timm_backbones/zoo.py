"""mmdet's model zoo as the compatibility suite: one representative config per config family
folder of the installed mmdet (`zoo_families`), its backbone swapped for timm models
(`wiring.swap_backbone`), resolved, built, one training step and `predict` on CPU on a tiny
synthetic batch (`check_zoo_config`); the same run with mmdet's own backbone tells failures of
ours from failures mmdet has here too (`zoo_sweep`). `tools/zoo_sweep.py` writes the table
(`docs/zoo.md`, `docs/zoo.csv`).

Both sides run the same way: random weights (every `Pretrained` init_cfg is dropped, no
network), SyncBN replaced by BN (no process group on one CPU process), a batch of one 128x160
image (or the family's smallest size, `SIZES`) with two boxes, masks and a semantic map.
"""
import copy
import csv
import math
import signal
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ['ZooFamily', 'ZooResult', 'ZOO_BACKBONES', 'EXCLUDED', 'REPRESENTATIVE', 'SIZES',
           'BATCHES', 'zoo_configs_root',
           'zoo_families', 'check_zoo_config', 'zoo_sweep', 'write_zoo_csv', 'read_zoo_csv',
           'write_zoo_markdown', 'NATIVE']

# a CNN, a hierarchical transformer, a plain ViT
ZOO_BACKBONES = ('resnet18', 'convnext_atto', 'vit_tiny_patch16_224')
NATIVE = 'native'  # the config's own backbone
STATUSES = ('pass', 'mmdet-fails', 'fail', 'timeout')
# Folders of mmdet's configs that are not detector configs taking images and boxes, and why.
EXCLUDED = {
    '_base_': 'base configs (models, datasets, schedules) that the families inherit',
    'common': 'shared schedules and data recipes (LSJ, multi-scale), no family of their own',
    'bytetrack': 'video multi-object tracking: TrackDataSample video batches, not the detector API',
    'deepsort': 'video multi-object tracking (detector + re-id), video batches',
    'ocsort': 'video multi-object tracking, video batches',
    'qdtrack': 'video multi-object tracking, video batches',
    'sort': 'video multi-object tracking, video batches',
    'strongsort': 'video multi-object tracking, video batches',
    'masktrack_rcnn': 'video instance segmentation, video batches',
    'mask2former_vis': 'video instance segmentation, video batches',
    'reid': 're-identification: a classifier of person crops (mmpretrain), no detector',
    'glip': "grounding: text prompts through a Hugging Face language model (BERT download)",
    'grounding_dino': 'grounding: text prompts through a Hugging Face language model '
                      '(BERT download)',
    'mm_grounding_dino': 'grounding: text prompts through a Hugging Face language model',
    'recognize_anything': 'image tagging with a language model, no detector',
    'soft_teacher': 'semi-supervised: teacher/student branches need multi-branch batches of '
                    'unlabeled data',
    'dsdl': 'dataset description language recipes of other families (needs the dsdl package)',
}
# Where the ranking below would pick a config that misses the family's point or is needlessly
# large: the config that shows the family (its own neck, head or backbone) at its smallest.
REPRESENTATIVE = {
    'dcn': 'faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py',
    'dcnv2': 'faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py',
    'nas_fpn': 'retinanet_r50_nasfpn_crop640-50e_coco.py',
    'libra_rcnn': 'libra-faster-rcnn_r50_fpn_1x_coco.py',
    'hrnet': 'faster-rcnn_hrnetv2p-w18-1x_coco.py',
    'res2net': 'faster-rcnn_res2net-101_fpn_2x_coco.py',
    'regnet': 'faster-rcnn_regnetx-3.2GF_fpn_1x_coco.py',
    'pvt': 'retinanet_pvtv2-b0_fpn_1x_coco.py',
    'rtmdet': 'rtmdet_tiny_8xb32-300e_coco.py',
    'resnest': 'faster-rcnn_s50_fpn_syncbn-backbone+head_ms-range-1x_coco.py',
    'mask2former': 'mask2former_r50_8xb2-lsj-50e_coco-panoptic.py',
    'centernet': 'centernet_r18_8xb16-crop512-140e_coco.py',
}
# Families whose smallest input is larger than the default (H, W): DINO picks its 900 queries
# among the encoder's tokens (top-k), which 128x160 has too few of (426 at strides 8..64).
# SSD300's extra layers end in unpadded 3x3 convolutions sized for its 300x300 input; DDOD's
# deformable convolutions need 3x3 maps at stride 128; HTC with RFP (detectors) gets inverted
# RoIs from its random-weight cascade at 128x160.
SIZES: Dict[str, Tuple[int, int]] = {'dino': (256, 320), 'v3det': (256, 320), 'ssd': (300, 300),
                                     'ddod': (384, 512), 'detectors': (256, 320)}
DEFAULT_SIZE = (128, 160)
# Families that need more than one image: ResNeSt's split attention pools each block to 1x1
# before a BatchNorm, which cannot train on a single value per channel.
BATCHES: Dict[str, int] = {'resnest': 2}
TIMEOUT = 600  # seconds per check (on a busy 2-core machine at nice 19)
_AVOID = ('caffe', 'dcn', 'mdconv', 'mdpool', 'gn', 'ms-', 'mstrain', 'lsj', 'crop', 'amp',
          'syncbn', 'instaboost', 'albu', 'poly', '2x', '3x', '20e', '24e', 'lvis', 'voc',
          'cityscapes', 'openimages', 'fp16', 'rpn_', 'seesaw')
_SMALL = ('r50', 'tiny', '-t-', '_t_', '-s_', '_s_', 'nano', 'b0', 'small')


@dataclass(frozen=True)
class ZooFamily:
    """One config folder of mmdet's zoo.

    Args:
        name: The folder name.
        config: Its representative config (an `mmdet::` name), or None if excluded.
        excluded: Why the folder is left out ('' if it is not).
    """
    name: str
    config: Optional[str]
    excluded: str = ''


@dataclass(frozen=True)
class ZooResult:
    """One check: `status` 'pass', 'fail' (ours), 'mmdet-fails' (mmdet's own backbone fails
    here too; `reason` is mmdet's failure) or 'timeout'; for the native run 'pass', 'fail' or
    'timeout'."""
    family: str
    config: str
    backbone: str
    status: str
    reason: str = ''
    seconds: float = 0.0


def zoo_configs_root() -> Path:
    """The config folder of the installed mmdet (`mmdet/.mim/configs`)."""
    import mmdet
    root = Path(mmdet.__file__).resolve().parent / '.mim' / 'configs'
    if not root.is_dir():
        raise FileNotFoundError(f"mmdet's configs are not at {root}: mmdet {mmdet.__version__} "
                                f'was installed without them (pip install mmdet ships them).')
    return root


def _rank(name: str) -> Tuple:
    return ('coco' not in name, any(a in name for a in _AVOID),
            not any(s in name for s in _SMALL), 'r50' not in name, len(name), name)


def zoo_families(root: Optional[Union[str, Path]] = None) -> List[ZooFamily]:
    """Every config folder of mmdet's zoo, with its representative config (the base ResNet-50
    one where there is one: a COCO config, not caffe/DCN/GN/multi-scale/longer schedules, the
    shortest name; `REPRESENTATIVE` where that misses the family's point) or the reason it is excluded (`EXCLUDED`, or no config in it).

    Example:
        >>> [f.config for f in zoo_families() if f.name == 'retinanet']
        ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']
    """
    base = Path(root) if root is not None else zoo_configs_root()
    families = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        if folder.name in EXCLUDED:
            families.append(ZooFamily(folder.name, None, EXCLUDED[folder.name]))
            continue
        configs = sorted(p.name for p in folder.glob('*.py') if not p.name.startswith('_'))
        if not configs:
            families.append(ZooFamily(folder.name, None, 'no config files of its own'))
            continue
        best = REPRESENTATIVE.get(folder.name)
        best = best if best in configs else min(configs, key=_rank)
        families.append(ZooFamily(folder.name, f'mmdet::{folder.name}/{best}'))
    return families


# ---- one check ----------------------------------------------------------------------------------
def _walk(node: Any, fn: Callable[[Any], None]) -> None:
    fn(node)
    items = node.values() if isinstance(node, Mapping) else \
        node if isinstance(node, (list, tuple)) else ()
    for child in items:
        _walk(child, fn)


def _pretrained(init: Any) -> bool:
    """An init_cfg that loads weights: `type='Pretrained'`, or (PVT's) a `checkpoint` alone."""
    return isinstance(init, Mapping) and (init.get('type') == 'Pretrained' or
                                          ('checkpoint' in init and 'type' not in init))


def _offline(node: Any) -> None:
    """Drop Pretrained init_cfgs and checkpoint paths; SyncBN -> BN (in place)."""
    if not isinstance(node, Mapping):
        return
    init = node.get('init_cfg')
    if _pretrained(init):
        node['init_cfg'] = None
    elif isinstance(init, (list, tuple)):
        kept = [i for i in init if not _pretrained(i)]
        node['init_cfg'] = kept or None
    if isinstance(node.get('pretrained'), str):
        node['pretrained'] = None if node.get('type') != 'TimmBackbone' else False
    for key in ('norm_cfg', 'conv_cfg'):
        norm = node.get(key)
        if isinstance(norm, Mapping) and norm.get('type') in ('SyncBN', 'MMSyncBN', 'NaiveSyncBN'):
            norm['type'] = 'BN'
    if node.get('type') == 'TimmBackbone':
        node['sync_bn'] = False
        node['pretrained'] = False


def _annotations(cfg: Mapping) -> Dict[str, bool]:
    """What the config's own training pipeline loads: `masks` and `sem_seg` (its
    `LoadAnnotations`; both where it has none) and `proposals` (`LoadProposals`: Fast R-CNN;
    two-stage detectors use given proposals instead of their RPN)."""
    found: List[Mapping] = []
    _walk(cfg.get('train_dataloader', {}),
          lambda n: found.append(n) if isinstance(n, Mapping) and 'type' in n else None)
    kinds = [str(n['type']).split('.')[-1] for n in found]
    loads = [(n, k == 'LoadPanopticAnnotations') for n, k in zip(found, kinds)
             if k in ('LoadAnnotations', 'LoadPanopticAnnotations')]
    return dict(masks=not loads or any(n.get('with_mask', p) for n, p in loads),
                sem_seg=not loads or any(n.get('with_seg', p) for n, p in loads),
                proposals='LoadProposals' in kinds)


def _batch(size: Tuple[int, int], n: int = 1, masks: bool = True, sem_seg: bool = True,
           proposals: bool = False) -> Dict[str, Any]:
    """`n` uint8 images with two boxes each (and masks, a semantic map, proposals where the
    config loads them), no ignored boxes."""
    import numpy as np
    import torch
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData, PixelData
    h, w = size
    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for i in range(n):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen))
        boxes = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.55 * h],
                              [0.4 * w, 0.35 * h, 0.9 * w, 0.9 * h]], dtype=torch.float32)
        bitmaps = np.zeros((2, h, w), dtype=np.uint8)
        for j, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
            bitmaps[j, y0:y1, x0:x1] = 1
        sample = DetDataSample(metainfo=dict(
            img_id=i, img_path=f'{i}.jpg', ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w),
            scale_factor=(1.0, 1.0), flip=False, flip_direction=None, border=(0, 0, 0, 0)))
        sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor([0, 0]))
        if masks:
            sample.gt_instances.masks = BitmapMasks(bitmaps, h, w)
        ignored = InstanceData(bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
        sample.gt_ignore_instances = ignored
        sample.ignored_instances = ignored.clone()  # CrowdDet's name for them
        if sem_seg:
            sample.gt_sem_seg = PixelData(sem_seg=torch.zeros(1, h, w, dtype=torch.long))
        if proposals:
            sample.proposals = InstanceData(bboxes=boxes.clone(), scores=torch.ones(2))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


class _Timeout(Exception):
    pass


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = ' '.join(text[0].split()) if text else ''
    return f'{type(err).__name__}: {line}'[:300]


def _where(err: BaseException) -> str:
    """The innermost frame of mmdet/mmcv/timm/this package the error came from."""
    frames = traceback.extract_tb(err.__traceback__)
    for frame in reversed(frames):
        for part in ('mmdet/', 'mmcv/', 'mmengine/', 'timm/', 'timm_backbones/'):
            if part in frame.filename:
                return f' (at {part}{frame.filename.split(part, 1)[1]}:{frame.lineno})'
    return ''


def check_zoo_config(config: str, arch: Optional[str] = None,
                     size: Tuple[int, int] = DEFAULT_SIZE,
                     timeout: int = TIMEOUT, batch: int = 1) -> Tuple[str, str]:
    """Swap (unless `arch` is None: mmdet's own backbone), resolve, build, one training step
    and `predict` of an mmdet config on CPU on a synthetic batch.

    Args:
        config: A config path or `mmdet::` name.
        arch: The timm model, or None for the config's own backbone.
        size: Image (H, W).
        timeout: Seconds before the check counts as failed.
        batch: Images in the batch.

    Returns:
        ('pass', '') or ('fail', the first line of the error and where it came from).

    Example:
        >>> check_zoo_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 'resnet18')
        ('pass', '')
    """
    import torch
    from mmengine.logging import MessageHub
    from mmengine.optim import OptimWrapper

    from .engine import build_detector, load_config
    from .wiring import resolve_config, swap_backbone

    def alarm(*_: Any) -> None:
        raise _Timeout(f'took more than {timeout} s')

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    try:
        cfg = load_config(config)
        if arch is not None:
            cfg = swap_backbone(cfg, arch, pretrained=False).config
        _walk(cfg['model'], _offline)
        if 'teacher_ckpt' in cfg['model']:  # knowledge distillation: a teacher checkpoint URL
            cfg['model']['teacher_ckpt'] = None
        teacher = cfg['model'].get('teacher_config')
        if isinstance(teacher, str) and teacher.startswith('configs/'):
            # LD names its teacher relative to mmdet's repository root (works from there only)
            cfg['model']['teacher_config'] = str(zoo_configs_root().parent / teacher)
        cfg = resolve_config(cfg)
        torch.manual_seed(0)
        model = build_detector(cfg)
        data = _batch(size, batch, **_annotations(cfg))
        # what the runner sets before a training step: the iteration (YOLOX's batch resize
        # reads it) and the epoch (TOOD's warm-up reads it)
        hub = MessageHub.get_current_instance()
        hub.update_info('iter', 0)
        hub.update_info('epoch', 0)
        model.train()
        optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1e-4))
        losses = model.train_step(copy.deepcopy(data), optim)
        total = float(sum(v.detach() for k, v in losses.items() if 'loss' in k))
        if not math.isfinite(total):
            return 'fail', f'training loss is {total}'
        model.eval()
        with torch.no_grad():
            results = model.test_step(copy.deepcopy(data))
        if len(results) != len(data['inputs']):
            return 'fail', f'predict returned {len(results)} results for {len(data["inputs"])}'
        return 'pass', ''
    except _Timeout as err:
        return 'fail', f'timeout: {err}'
    except Exception as err:  # noqa: BLE001 - every failure is a result of the sweep
        return 'fail', _first_line(err) + _where(err)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---- the sweep ----------------------------------------------------------------------------------
def zoo_sweep(families: Sequence[ZooFamily], backbones: Sequence[str] = ZOO_BACKBONES,
              done: Optional[Mapping[Tuple[str, str], ZooResult]] = None,
              on_result: Optional[Callable[[ZooResult], None]] = None,
              timeout: int = TIMEOUT) -> List[ZooResult]:
    """`check_zoo_config` of each family's config with its own backbone and with each of
    `backbones`; a swap that fails where mmdet's own backbone fails too is 'mmdet-fails' with
    mmdet's reason.

    Args:
        families: From `zoo_families` (excluded ones are skipped).
        backbones: timm models.
        done: Results already known, by (family, backbone): not run again (resume).
        on_result: Called with each new result (e.g. to append it to a CSV).
        timeout: Seconds per check.

    Example:
        >>> rows = zoo_sweep([f for f in zoo_families() if f.name == 'retinanet'], ['resnet18'])
    """
    done = dict(done or {})
    checked = [f for f in families if f.config is not None]

    def run(family: ZooFamily, arch: Optional[str]) -> ZooResult:
        key = (family.name, arch or NATIVE)
        if key in done:
            return done[key]
        size = SIZES.get(family.name, DEFAULT_SIZE)
        start = time.perf_counter()
        status, reason = check_zoo_config(family.config, arch, size, timeout,
                                          BATCHES.get(family.name, 1))
        if arch is not None and status == 'fail':
            native = run(family, None)
            if native.status != 'pass':
                status, reason = 'mmdet-fails', native.reason
        if reason.startswith('timeout'):
            status = 'timeout'
        done[key] = ZooResult(family.name, family.config, arch or NATIVE, status, reason,
                              round(time.perf_counter() - start, 1))
        if on_result:
            on_result(done[key])
        return done[key]

    # backbone by backbone (each family's native run first), so an interrupted sweep has whole
    # columns
    for arch in backbones:
        for family in checked:
            run(family, None)
            run(family, arch)
    return [done[(f.name, a)] for f in checked for a in (NATIVE, *backbones)
            if (f.name, a) in done]


_FIELDS = [f for f in ZooResult.__dataclass_fields__]


def write_zoo_csv(results: Iterable[ZooResult], path: Union[str, Path],
                  append: bool = False) -> None:
    """Write (or append) results as CSV rows (`ZooResult` fields)."""
    path = Path(path)
    new = not append or not path.exists()
    with open(path, 'a' if append else 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=_FIELDS)
        if new:
            writer.writeheader()
        for r in results:
            writer.writerow(asdict(r))


def read_zoo_csv(path: Union[str, Path]) -> List[ZooResult]:
    """The results of a CSV `write_zoo_csv` wrote ([] if there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline='') as f:
        return [ZooResult(**{**row, 'seconds': float(row['seconds'] or 0)})
                for row in csv.DictReader(f)]


def _cell(result: Optional[ZooResult]) -> str:
    if result is None:
        return 'not run'
    if result.status == 'pass':
        return 'pass'
    reason = ' '.join(result.reason.split()).replace('|', '\\|')
    label = {'mmdet-fails': 'fails in mmdet too', 'timeout': 'timeout'}.get(result.status, 'fail')
    return f'{label}: {reason}'


def write_zoo_markdown(results: Sequence[ZooResult], families: Sequence[ZooFamily],
                       path: Union[str, Path], backbones: Sequence[str] = ZOO_BACKBONES,
                       command: str = '', environment: str = '') -> None:
    """The family x backbone table, its summary and the excluded folders, as Markdown."""
    by_key = {(r.family, r.backbone): r for r in results}
    checked = [f for f in families if f.config is not None]
    lines = ["# mmdet's model zoo with timm backbones", '']
    lines += ['One representative config per config folder of the installed mmdet '
              '(`timm_backbones.zoo.zoo_families`), its backbone swapped for each timm model with '
              '`swap_backbone` (levels by stride, derived fields `auto`), resolved, built, one '
              'training step and `predict` on CPU on a synthetic batch of one 128x160 image '
              '(`SIZES`, `BATCHES`: larger or more images where a family needs them) with two '
              'boxes, and masks, a semantic map or proposals where the config\'s own training '
              'pipeline loads them; the iteration and epoch set as the runner sets them; random '
              'weights (`Pretrained` init_cfgs dropped; SyncBN replaced by BN on both sides, no '
              'process group here). The same run with mmdet\'s own backbone (`native`) '
              'separates failures of mmdet here from ours.', '',
              '"Fails in mmdet too" means mmdet\'s own config fails this check, for the reason '
              'shown: CPU-only ops (CARAFE, masked convolution), optional packages not installed '
              '(mmpretrain, scikit-image, scikit-learn, Detectron2), bugs of mmdet 3.3.0 (Cascade '
              'RPN\'s config lacks `num_classes`; `SSDHead.predict` reads a `loss_cls` it does '
              'not have), or a detector whose random-weight boxes break mmdet\'s own post-'
              'processing (QueryInst\'s mask paste).', '']
    if command:
        lines += [f'Regenerate: `{command}`', '']
    if environment:
        lines += [environment, '']
    lines += ['## Summary', '',
              '| backbone | pass | fails in mmdet too | fail | timeout | not run |',
              '|---|---|---|---|---|---|']
    for arch in backbones:
        cells = [by_key.get((f.name, arch)) for f in checked]
        count = {s: sum(1 for c in cells if c is not None and c.status == s) for s in STATUSES}
        lines.append(f"| {arch} | {count['pass']} | {count['mmdet-fails']} | {count['fail']} | "
                     f"{count['timeout']} | {sum(1 for c in cells if c is None)} |")
    native = [by_key.get((f.name, NATIVE)) for f in checked]
    lines += ['', f'{len(checked)} families checked; mmdet\'s own backbone passes in '
              f"{sum(1 for n in native if n is not None and n.status == 'pass')}.", '',
              '## Families', '',
              '| family | config | native | ' + ' | '.join(backbones) + ' |',
              '|---|---|---|' + '---|' * len(backbones)]
    for f in checked:
        row = [f.name, f'`{f.config.split("::", 1)[-1]}`',
               _cell(by_key.get((f.name, NATIVE)))]
        row += [_cell(by_key.get((f.name, a))) for a in backbones]
        lines.append('| ' + ' | '.join(row) + ' |')
    lines += ['', '## Folders left out', '', '| folder | why |', '|---|---|']
    for f in families:
        if f.config is None:
            lines.append(f'| {f.name} | {f.excluded} |')
    Path(path).write_text('\n'.join(lines) + '\n')
