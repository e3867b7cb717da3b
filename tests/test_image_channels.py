"""Images with 1 or 4 channels (`_image_channels.py`): a grayscale image where the data
preprocessor expects 3 channels is the gray colour image (replicated), anything else that does
not fit is refused with an error naming the shape, the expectation and the fixes; a backbone
built with `in_channels` to match takes them. On the tensor route (the preprocessor called as
mmdet calls it) and the file route (mmdet's `LoadImageFromFile(color_type=...)` through mmdet's
`inference_detector`), on the shipped demo config."""
import copy

import cv2
import numpy as np
import pytest
import torch
from mmdet.apis import inference_detector
from mmengine.model import ImgDataPreprocessor

from helpers import DEMO_CONFIG, family_detector, uint8_images
from timm_backbones._image_channels import check_image_channels, expected_channels

REFUSED = r"got an image with 4 channel\(s\) \(RGBA/BGRA.*expects 3: it reorders BGR/RGB.*" \
          r"color_type='color'.*in_channels=4 .*bgr_to_rgb=False " \
          r"and one mean/std value each"
# a backbone for RGBA images (mmengine's preprocessors take 1 or 3 mean/std values)
FOUR = {'model.backbone.in_channels': 4, 'model.data_preprocessor.bgr_to_rgb': False,
        'model.data_preprocessor.mean': [120.0], 'model.data_preprocessor.std': [58.0]}


def _detector(**options):
    """The shipped demo config with `options` (cfg-options), built by mmdet's `init_detector`
    and initialised (no score spreading: it runs 3-channel images)."""
    from mmdet.apis import init_detector
    torch.manual_seed(0)
    model = init_detector(DEMO_CONFIG, cfg_options=options, device='cpu')
    model.init_weights()
    return model.eval()


@pytest.fixture(scope='module')
def demo():
    return family_detector('retinanet-demo')


def _image(channels, seed=0):
    """An HWC uint8 image with `channels` channels (smooth shapes on noise)."""
    image = uint8_images(1, (96, 128), seed=seed)[0].permute(1, 2, 0).numpy()
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if channels == 4:
        alpha = np.linspace(0, 255, image.shape[0] * image.shape[1], dtype=np.float32)
        return np.dstack([image, alpha.reshape(image.shape[:2]).astype(np.uint8)])
    return image


def _infer(model, path, color_type):
    """mmdet's `inference_detector` on the file `path` loaded with `color_type`."""
    model.cfg = copy.deepcopy(model.cfg)
    model.cfg.test_dataloader.dataset.pipeline[0]['color_type'] = color_type
    return inference_detector(model, str(path)).pred_instances


def _same(a, b):
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.bboxes, b.bboxes, rtol=0, atol=0)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)


def test_expected_channels_of_the_preprocessors(demo):
    from mmdet.models import DetDataPreprocessor
    assert expected_channels(demo.data_preprocessor) == 3  # the demo: bgr_to_rgb=True
    # one mean/std value (any channel count), no reordering: nothing to expect
    assert expected_channels(DetDataPreprocessor(mean=[100.], std=[50.])) is None
    assert expected_channels(DetDataPreprocessor(mean=[0.] * 3, std=[1.] * 3)) == 3
    assert expected_channels(DetDataPreprocessor()) is None  # no normalization
    assert 'mmengine.model.ImgDataPreprocessor' in check_image_channels()  # idempotent


def test_tensor_route_grayscale_is_the_gray_colour_image(demo):
    gray = torch.from_numpy(_image(1))[None]  # (1, H, W) as PackDetInputs packs grayscale
    colour = gray.expand(3, -1, -1).clone()
    for inputs in ([gray], gray[None]):  # pseudo_collate (a list) and a stacked batch
        out = demo.data_preprocessor(dict(inputs=inputs), False)['inputs']
        ref = demo.data_preprocessor(dict(inputs=[colour] if isinstance(inputs, list)
                                          else colour[None]), False)['inputs']
        assert out.shape[1] == 3
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_tensor_route_rgba_is_refused(demo):
    rgba = torch.from_numpy(_image(4)).permute(2, 0, 1).contiguous()
    with pytest.raises(ValueError, match=REFUSED):
        demo.data_preprocessor(dict(inputs=[rgba]), False)  # mmengine: alpha dropped silently
    with pytest.raises(ValueError, match=REFUSED):
        demo.data_preprocessor(dict(inputs=rgba[None]), True)
    with pytest.raises(ValueError, match=r"2 channel\(s\) \(shape \(2, 96, 128\)\)"):
        demo.data_preprocessor(dict(inputs=[rgba[:2]]), False)


def test_train_step_on_grayscale_tensors(demo):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    model = copy.deepcopy(demo).train()
    gray = torch.from_numpy(_image(1))[None]
    sample = DetDataSample(metainfo=dict(img_shape=(96, 128), ori_shape=(96, 128),
                                         scale_factor=(1.0, 1.0), pad_shape=(96, 128)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[10., 12., 60., 70.]]),
                                       labels=torch.tensor([1]))
    data = model.data_preprocessor(dict(inputs=[gray], data_samples=[sample]), True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert model.backbone.model.conv1.weight.grad.abs().sum() > 0  # RGB-trained stem, gray input


def test_file_route_grayscale(demo, tmp_path):
    path = tmp_path / 'gray.png'
    cv2.imwrite(str(path), _image(1))
    # mmdet's LoadImageFromFile(color_type='grayscale') gives one channel: replicated, it is
    # what mmcv makes of the same file loaded as 'color'
    _same(_infer(demo, path, 'grayscale'), _infer(demo, path, 'color'))


def test_file_route_rgba(demo, tmp_path):
    path = tmp_path / 'rgba.png'
    cv2.imwrite(str(path), _image(4))
    with pytest.raises(ValueError, match=REFUSED):
        _infer(demo, path, 'unchanged')  # 4 channels kept by the loader: refused, not truncated
    # 'color': mmcv drops alpha on load (asked for by the config); same as the BGR file
    bgr = tmp_path / 'bgr.png'
    cv2.imwrite(str(bgr), _image(4)[..., :3])
    _same(_infer(demo, path, 'color'), _infer(demo, bgr, 'color'))


def test_four_channel_backbone_takes_rgba(tmp_path):
    model = _detector(**FOUR)
    assert model.backbone.in_channels == 4
    path = tmp_path / 'rgba.png'
    cv2.imwrite(str(path), _image(4))
    seen = []
    hook = model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    _infer(model, path, 'unchanged')
    hook.remove()
    assert seen[0][1] == 4  # alpha reached the backbone
    # the same backbone behind a preprocessor that reorders 3 channels: refused, naming it
    reorder = _detector(**{**FOUR, 'model.data_preprocessor.bgr_to_rgb': True})
    with pytest.raises(ValueError, match=r'4 channel.*expects 3: it reorders BGR/RGB'):
        _infer(reorder, path, 'unchanged')


def test_one_channel_backbone_takes_grayscale(tmp_path):
    model = _detector(**{
        'model.backbone.in_channels': 1, 'model.data_preprocessor.bgr_to_rgb': False,
        'model.data_preprocessor.mean': [120.0], 'model.data_preprocessor.std': [58.0]})
    path = tmp_path / 'gray.png'
    cv2.imwrite(str(path), _image(1))
    seen = []
    hook = model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    _infer(model, path, 'grayscale')
    hook.remove()
    assert seen[0][1] == 1
    # a colour file for this backbone: the backbone names its in_channels and the fix
    colour = tmp_path / 'colour.png'
    cv2.imwrite(str(colour), _image(3))
    with pytest.raises(ValueError, match=r"built for in_channels=1 but got images with 3 .*"
                                         r"color_type='grayscale'"):
        _infer(model, colour, 'color')


def test_seg_preprocessor():
    from mmseg.models import SegDataPreProcessor
    check_image_channels()
    pre = SegDataPreProcessor(mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4],
                              bgr_to_rgb=True, size=(96, 128))
    with pytest.raises(ValueError, match=r'SegDataPreProcessor got an image with 4 channel'):
        pre(dict(inputs=[torch.from_numpy(_image(4)).permute(2, 0, 1)]), False)
    gray = torch.from_numpy(_image(1))[None]
    out = pre(dict(inputs=[gray]), False)['inputs']
    ref = pre(dict(inputs=[gray.expand(3, -1, -1).clone()]), False)['inputs']
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_mmengine_alone_drops_or_fails(demo):
    # why the check exists: mmengine's own forward, unchecked
    unchecked = ImgDataPreprocessor.forward.__wrapped__
    rgba = torch.from_numpy(_image(4)).permute(2, 0, 1).contiguous()
    out = unchecked(demo.data_preprocessor, dict(inputs=[rgba]), False)['inputs']
    assert out.shape[1] == 3  # the alpha channel is gone, without a word
    with pytest.raises(IndexError):
        unchecked(demo.data_preprocessor, dict(inputs=[rgba[:1]]), False)
