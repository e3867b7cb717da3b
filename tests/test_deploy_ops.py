"""deploy/_ops.py: the in-graph NMS equals mmcv's batched_nms (what mmdet's heads call) for every
image of a batch, in PyTorch and as ONNX NonMaxSuppression in onnxruntime; RoIAlign through
torchvision equals mmcv's RoIAlign."""
import pytest
import torch
from mmcv.ops import RoIAlign
from mmcv.ops import batched_nms as mmcv_batched_nms

from timm_backbones.deploy import padded_nms, roi_align
from timm_backbones.deploy._ops import NOT_A_CANDIDATE, translations


def candidates(batch=2, count=600, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, count, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + torch.rand(batch, count, 2, generator=g) * 50 + 1], -1)
    scores = torch.rand(batch, count, generator=g)
    scores[scores < 0.2] = NOT_A_CANDIDATE  # slots without a candidate
    labels = torch.randint(0, classes, (batch, count), generator=g)
    return boxes, scores, labels


def reference(boxes, scores, labels, iou, k, agnostic=False):
    """mmcv's batched_nms per image on the candidates only, best k."""
    out = []
    for b in range(len(boxes)):
        valid = (scores[b] >= 0).nonzero().squeeze(1)
        if not len(valid):
            out.append(valid)
            continue
        _, keep = mmcv_batched_nms(boxes[b, valid], scores[b, valid], labels[b, valid],
                                   dict(type='nms', iou_threshold=iou, class_agnostic=agnostic))
        out.append(valid[keep[:k]])
    return out


@pytest.mark.parametrize('agnostic', [False, True])
def test_padded_nms_equals_mmcv_batched_nms(agnostic):
    # rule: per image, the kept candidates and their order are mmcv's (labels kept apart by
    # mmcv's offsets unless class_agnostic)
    boxes, scores, labels = candidates()
    index, keep = padded_nms(boxes, scores, labels, 0.5, 40, agnostic)
    assert index.shape == keep.shape == (2, 40)
    for b, expected in enumerate(reference(boxes, scores, labels, 0.5, 40, agnostic)):
        assert keep[b].sum() == len(expected) == 40
        assert torch.equal(index[b][keep[b]], expected)


def test_padded_nms_pads_images_with_few_boxes():
    # rule: an image with fewer kept boxes than k (or none) fills its slots from the front
    boxes, scores, labels = candidates(count=30)
    scores[1] = NOT_A_CANDIDATE  # image 1: nothing to keep
    index, keep = padded_nms(boxes, scores, labels, 0.5, 100)
    expected = reference(boxes, scores, labels, 0.5, 100)[0]
    assert keep[0].sum() == len(expected) < 100 and not keep[1].any()
    assert torch.equal(index[0, :len(expected)], expected) and keep[0, :len(expected)].all()


def test_nms_runs_as_onnx_nonmaxsuppression(tmp_path):
    # rule: the exported op (NonMaxSuppression) keeps what the eager op keeps, with dynamic
    # batch and candidate counts
    import onnxruntime

    class Nms(torch.nn.Module):
        def forward(self, boxes, scores, labels):
            return padded_nms(boxes, scores, labels, 0.6, 25)

    boxes, scores, labels = candidates()
    auto = {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}
    program = torch.onnx.export(Nms(), (boxes, scores, labels), dynamo=True,
                                dynamic_shapes=(auto, auto, auto), opset_version=18,
                                custom_translation_table=translations())
    program.save(str(tmp_path / 'nms.onnx'))
    assert 'NonMaxSuppression' in [n.op_type for n in program.model.graph]
    session = onnxruntime.InferenceSession(str(tmp_path / 'nms.onnx'))
    for args in (candidates(), candidates(batch=3, count=900, seed=1)):
        feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
        index, keep = session.run(None, feed)
        expected = Nms()(*args)
        assert (torch.from_numpy(index) == expected[0]).all()
        assert (torch.from_numpy(keep) == expected[1]).all()


def test_roi_align_equals_mmcv_roialign():
    # rule: torchvision's roi_align (exported as ONNX RoiAlign) is mmcv's RoIAlign (aligned,
    # adaptive sampling, avg) on the features of an FPN level
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 16, 40, 48, generator=g)
    xy = torch.rand(50, 2, generator=g) * 150
    rois = torch.cat([torch.randint(0, 2, (50, 1), generator=g).float(), xy,
                      xy + torch.rand(50, 2, generator=g) * 120 + 0.5], 1)
    layer = RoIAlign(output_size=7, spatial_scale=1 / 4, sampling_ratio=0)
    torch.testing.assert_close(roi_align(feats, rois, (7, 7), 1 / 4, 0, True), layer(feats, rois),
                               rtol=1e-5, atol=1e-5)
