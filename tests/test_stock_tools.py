"""mmdet's own entry points on this project's configs, as users run them: the tools shipped in the
mmdet wheel (`mmdet/.mim/tools/...`: train.py, test.py, analysis_tools/get_flops.py, benchmark.py,
browse_dataset.py, confusion_matrix.py, analyze_results.py) as subprocesses, and mmdet's APIs
(`init_detector` + `inference_detector`, `DetInferencer`), with nothing but the configs'
`custom_imports`. Checkpoints written by training load in mmdet's APIs under torch's weights-only
default, `DetInferencer(weights=...)` alone included (config read from the checkpoint).

The demo config runs with its own settings (workers, persistent workers, pipelines); only the
dataset size (`indices`) and the epochs are cut with `--cfg-options`, as a user trying the tools
would. Its data is generated in a temporary working directory. The `slow` matrix runs every
entry point on every shipped COCO config and on configs `timm-backbones config` prints, over a
tiny COCO-format dataset made here (`make test-slow`; the counts are in the README).
"""
import glob
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.config import Config

from helpers import BUILT_ON_META, ROOT, unsafe_globals

TOOLS = os.path.join(importlib.util.find_spec('mmdet').submodule_search_locations[0], '.mim',
                     'tools')
DEMO = os.path.join(ROOT, 'configs', 'retinanet_timm-resnet18_fpn_8e_synthetic-shapes.py')
SHIPPED = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))
SMALL = ['train_dataloader.dataset.indices=16', 'val_dataloader.dataset.indices=4',
         'test_dataloader.dataset.indices=4']
TIMEOUT = 600


def run(args, cwd, check=True):
    """A command in `cwd` (one OpenMP thread: fast on a busy CPU); its output, or its tail in
    the failure."""
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    proc = subprocess.run(args, cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f'{args} failed ({proc.returncode}):\n{out[-6000:]}'
    return out if check else (proc.returncode, out)


def tool(path, *args, cwd, check=True):
    return run([sys.executable, os.path.join(TOOLS, path), *args], cwd, check)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """mmdet's own tools/train.py on the demo config: one epoch on 16 images (data generated
    in the working directory), checkpoint and resolved config in the work dir."""
    cwd = tmp_path_factory.mktemp('stock')
    tool('train.py', DEMO, '--work-dir', 'work', '--cfg-options', *SMALL,
         'train_cfg.max_epochs=1', cwd=cwd)
    checkpoint = cwd / 'work' / 'epoch_1.pth'
    dumped = cwd / 'work' / os.path.basename(DEMO)
    assert checkpoint.is_file() and dumped.is_file()
    return cwd, str(checkpoint), str(dumped)


@pytest.fixture(scope='module')
def results(trained):
    """mmdet's tools/test.py: the checkpoint evaluated, predictions written with --out."""
    cwd, checkpoint, _ = trained
    out = tool('test.py', DEMO, checkpoint, '--work-dir', 'test', '--out', 'results.pkl',
               '--cfg-options', *SMALL, 'model.test_cfg.score_thr=0.0', cwd=cwd)  # 1 epoch in
    assert 'coco/bbox_mAP:' in out
    with open(cwd / 'results.pkl', 'rb') as f:
        assert len(pickle.load(f)) == 4
    return cwd / 'results.pkl'


def test_training_writes_checkpoints_any_weights_only_reader_loads(trained):
    # rule: the runner's checkpoints hold tensors and plain containers only, and the config it
    # dumps is the resolved one
    _, checkpoint, dumped = trained
    assert unsafe_globals(checkpoint) == []
    assert "'auto'" not in Config.fromfile(dumped).pretty_text


def test_detinferencer_with_the_checkpoint_alone(trained):
    # rule: DetInferencer(weights=ckpt) reads the config from the checkpoint, in a fresh process
    # where nothing imported the plugin before the checkpoint is loaded (mmdet's demo scripts)
    cwd, checkpoint, _ = trained
    out = run([sys.executable, '-c', textwrap.dedent(f"""
        import sys
        import numpy as np
        from mmdet.apis import DetInferencer
        assert 'timm_backbones' not in sys.modules
        inferencer = DetInferencer(weights={checkpoint!r}, device='cpu')
        image = np.random.default_rng(0).integers(0, 255, (200, 240, 3), dtype=np.uint8)
        result = inferencer(image, out_dir='vis', return_datasamples=True)
        assert type(inferencer.model.backbone).__name__ == 'TimmBackbone'
        assert inferencer.model.dataset_meta['classes'][0] == 'circle'
        print('predicted', len(result['predictions'][0].pred_instances))
        """)], cwd)
    assert 'predicted' in out
    assert os.listdir(cwd / 'vis' / 'vis')  # the picture with boxes


@pytest.mark.parametrize('which', ['shipped', 'dumped'])
def test_mmdet_apis_on_the_config_and_the_checkpoint(trained, which):
    # rule: init_detector + inference_detector and DetInferencer(model=config, weights=ckpt)
    # work on the shipped config and on the config the runner dumped
    cwd, checkpoint, dumped = trained
    config = DEMO if which == 'shipped' else dumped
    out = run([sys.executable, '-c', textwrap.dedent(f"""
        import numpy as np
        import torch
        from mmdet.apis import DetInferencer, inference_detector, init_detector
        image = np.random.default_rng(0).integers(0, 255, (200, 240, 3), dtype=np.uint8)
        model = init_detector({config!r}, {checkpoint!r}, device='cpu')
        first = inference_detector(model, image).pred_instances
        inferencer = DetInferencer(model={config!r}, weights={checkpoint!r}, device='cpu')
        second = inferencer(image, return_datasamples=True)['predictions'][0].pred_instances
        assert torch.equal(first.bboxes, second.bboxes), 'the two APIs disagree'
        print('boxes', len(first.bboxes))
        """)], cwd)
    assert 'boxes' in out


def test_analysis_tools(trained, results):
    # rule: mmdet's analysis tools run on the config as shipped
    cwd, checkpoint, _ = trained
    out = tool('analysis_tools/get_flops.py', DEMO, '--num-images', '2', '--cfg-options',
               *SMALL, cwd=cwd)
    assert 'Flops:' in out and 'Params:' in out
    tool('analysis_tools/browse_dataset.py', DEMO, '--output-dir', 'browse', '--not-show',
         '--cfg-options', *SMALL, cwd=cwd)
    assert len(os.listdir(cwd / 'browse')) == 16
    tool('analysis_tools/confusion_matrix.py', DEMO, str(results), 'confusion', '--cfg-options',
         *SMALL, cwd=cwd)
    assert (cwd / 'confusion' / 'confusion_matrix.png').is_file()
    tool('analysis_tools/analyze_results.py', DEMO, str(results), 'analyze', '--topk', '2',
         '--cfg-options', *SMALL, cwd=cwd)
    assert os.listdir(cwd / 'analyze' / 'good') and os.listdir(cwd / 'analyze' / 'bad')
    for task in ('dataset', 'dataloader'):  # at least max-iter batches of 4 test images
        out = tool('analysis_tools/benchmark.py', DEMO, '--task', task, '--max-iter', '3',
                   '--num-warmup', '1', '--log-interval', '1', '--cfg-options',
                   'test_dataloader.dataset.indices=16', cwd=cwd)
        assert 'Overall fps' in out, out[-2000:]


def test_benchmark_inference_builds_and_loads_then_needs_cuda(trained):
    # mmdet 3.3's benchmark.py --task inference calls model.cuda(): on a CPU machine it stops
    # there, after building the model from the config and loading the checkpoint
    cwd, checkpoint, _ = trained
    code, out = tool('analysis_tools/benchmark.py', DEMO, '--checkpoint', checkpoint, '--task',
                     'inference', '--max-iter', '3', '--num-warmup', '1', '--log-interval', '1',
                     '--cfg-options',
                     *SMALL, cwd=cwd, check=torch.cuda.is_available())
    if not torch.cuda.is_available():
        assert code != 0 and 'in cuda' in out and 'model = model.cuda()' in out, out[-3000:]
        assert 'Loads checkpoint' in out or 'load checkpoint' in out.lower()


@pytest.mark.parametrize('path', [p for p in SHIPPED if os.path.basename(p) not in BUILT_ON_META],
                         ids=os.path.basename)
def test_mmdet_init_detector_on_every_shipped_config(path, tmp_path):
    # rule: mmdet.apis.init_detector builds every shipped config and loads a checkpoint of it
    # with mmdet's own loader (weights-only); inference on the config's test pipeline
    from mmdet.apis import inference_detector, init_detector

    from timm_backbones import build_detector
    cfg = Config.fromfile(path)
    cfg.model.backbone.pretrained = False
    source = build_detector(cfg)
    checkpoint = str(tmp_path / 'detector.pth')
    torch.save({'state_dict': source.state_dict(), 'meta': {'epoch': 1}}, checkpoint)
    options = {'model.backbone.pretrained': False}
    model = init_detector(path, checkpoint, device='cpu', cfg_options=options)
    for name, tensor in source.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    if path == DEMO or 'dino' in path:  # a forward through the config's own test pipeline
        image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
        result = inference_detector(model, image)
        assert torch.isfinite(result.pred_instances.bboxes).all()


# ---- the matrix: every entry point x every COCO config (slow) ----------------------------------

def make_tiny_coco(root, num_images=2):
    """data/coco/ as mmdet's COCO configs read it: train2017/val2017 with `num_images` random
    images each and instances with boxes and polygons, all 80 COCO categories declared."""
    import cv2
    from mmdet.datasets import CocoDataset
    classes = CocoDataset.METAINFO['classes']
    rng = np.random.default_rng(0)
    for split in ('train2017', 'val2017'):
        images, annotations = [], []
        os.makedirs(root / 'data' / 'coco' / split, exist_ok=True)
        for i in range(num_images):
            h, w = 240, 320
            cv2.imwrite(str(root / 'data' / 'coco' / split / f'{i:012d}.jpg'),
                        rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            images.append(dict(id=i + 1, file_name=f'{i:012d}.jpg', height=h, width=w))
            for j in range(3):
                x, y, bw, bh = (int(v) for v in (rng.integers(0, 200), rng.integers(0, 140),
                                                 rng.integers(30, 100), rng.integers(30, 90)))
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=int(j * 7 + 1),
                    bbox=[x, y, bw, bh], area=bw * bh, iscrowd=0,
                    segmentation=[[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]))
        categories = [dict(id=k + 1, name=name) for k, name in enumerate(classes)]
        os.makedirs(root / 'data' / 'coco' / 'annotations', exist_ok=True)
        with open(root / 'data' / 'coco' / 'annotations' / f'instances_{split}.json', 'w') as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)


# configs `timm-backbones config FAMILY ARCH` prints: one architecture of another kind per family
PRINTED = {'retinanet': 'vit_tiny_patch16_224', 'faster-rcnn': 'resnet18',
           'dino': 'convnext_atto', 'rtmdet': 'efficientnet_b0', 'yolof': 'mobilenetv3_large_100',
           'mask-rcnn': 'swin_tiny_patch4_window7_224', 'fcos': 'regnety_002', 'atss': 'resnet18',
           'cascade-rcnn': 'resnet18'}
# (the ViT-L FSDP config is left to test_flexible_runner: 308 M parameters and a launcher)
COCO_CONFIGS = [os.path.basename(p) for p in SHIPPED
                if p != DEMO and os.path.basename(p) not in BUILT_ON_META] + [
    f'config {family} {arch}' for family, arch in PRINTED.items()]


@pytest.mark.slow
@pytest.mark.parametrize('name', COCO_CONFIGS)
def test_every_entry_point_on_coco_configs(name, tmp_path):
    # rule: every mmdet entry point that builds a detector from a config works on every shipped
    # config and on configs `timm-backbones config` prints (tiny COCO-format data made here);
    # training writes plain checkpoints and a resolved config, which work there too
    from timm_backbones.families import family_config_text
    make_tiny_coco(tmp_path)
    if name.startswith('config '):
        _, family, arch = name.split()
        path = str(tmp_path / f'{family}_{arch}.py')
        with open(path, 'w') as f:
            f.write(family_config_text(family, arch, pretrained=False))
    else:
        path = os.path.join(ROOT, 'configs', name)
    weights = ['model.backbone.pretrained=False']
    tool('train.py', path, '--work-dir', 'work', '--cfg-options', 'train_cfg.max_epochs=1',
         *weights, cwd=tmp_path)
    checkpoint = str(tmp_path / 'work' / 'epoch_1.pth')
    dumped = str(tmp_path / 'work' / os.path.basename(path))
    assert unsafe_globals(checkpoint) == []
    tool('test.py', path, checkpoint, '--work-dir', 'test', '--out', 'results.pkl',
         '--cfg-options', *weights, cwd=tmp_path)
    # DetInferencer takes no cfg-options: offline, a config with pretrained=True (timm loads the
    # hub weights when the backbone is built, before the checkpoint replaces them) is given with
    # pretrained=False, as the hub error says; the dumped config has it from training
    offline = str(tmp_path / 'offline.py')
    with open(offline, 'w') as f:
        f.write(f"_base_ = [{path!r}]\nmodel = dict(backbone=dict(pretrained=False))\n")
    for config, inferencer_config in ((path, offline), (dumped, dumped)):
        run([sys.executable, '-c', textwrap.dedent(f"""
            import numpy as np
            from mmdet.apis import DetInferencer, inference_detector, init_detector
            image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
            options = {{'model.backbone.pretrained': False}}
            model = init_detector({config!r}, {checkpoint!r}, device='cpu', cfg_options=options)
            inference_detector(model, image)
            DetInferencer(model={inferencer_config!r}, weights={checkpoint!r}, device='cpu')(image)
            DetInferencer(weights={checkpoint!r}, device='cpu')(image)
            """)], tmp_path)
    out = tool('analysis_tools/get_flops.py', path, '--num-images', '1', '--cfg-options',
               *weights, cwd=tmp_path)
    assert 'Flops:' in out
    tool('analysis_tools/benchmark.py', path, '--task', 'dataset', '--max-iter', '2',
         '--num-warmup', '1', '--log-interval', '1', cwd=tmp_path)
    tool('analysis_tools/browse_dataset.py', path, '--output-dir', 'browse', '--not-show',
         cwd=tmp_path)
    tool('analysis_tools/confusion_matrix.py', path, 'results.pkl', 'confusion', cwd=tmp_path)
    tool('analysis_tools/analyze_results.py', path, 'results.pkl', 'analyze', '--topk', '1',
         '--cfg-options', *weights, cwd=tmp_path)  # it builds a runner, hence the model
