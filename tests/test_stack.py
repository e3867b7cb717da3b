"""The installed stack really works: mmdet builds a detector, computes a loss and predicts with
mmcv's compiled ops (NMS, RoIAlign) on the CPU."""
import torch


def test_compiled_ops_run_on_cpu():
    from mmcv.ops import RoIAlign, nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]  # the overlapping box is suppressed
    feats = torch.arange(16.).view(1, 1, 4, 4)
    rois = torch.tensor([[0., 0., 0., 4., 4.]])
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feats, rois)
    assert out.shape == (1, 1, 2, 2) and torch.allclose(out.mean(), feats.mean(), atol=0.5)


def test_mmdet_retinanet_loss_and_predict():
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample
    from mmdet.utils import register_all_modules
    from mmengine.hub import get_config
    from mmengine.structures import InstanceData
    register_all_modules()
    cfg = get_config('mmdet::retinanet/retinanet_r18_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None  # no download
    model = MODELS.build(cfg.model)
    model.init_weights()
    samples = []
    for _ in range(2):
        s = DetDataSample(metainfo=dict(img_shape=(128, 128), pad_shape=(128, 128),
                                        scale_factor=(1., 1.), ori_shape=(128, 128)))
        s.gt_instances = InstanceData(bboxes=torch.tensor([[10., 20., 60., 90.]]),
                                      labels=torch.tensor([3]))
        samples.append(s)
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, 128, 128),
                                                              dtype=torch.uint8)] * 2,
                                        data_samples=samples), training=True)
    losses = model(**data, mode='loss')
    total, log_vars = model.parse_losses(losses)
    total.backward()
    assert {'loss_cls', 'loss_bbox'} <= set(log_vars)
    assert torch.isfinite(total)
    model.eval()
    with torch.no_grad():
        preds = model(**data, mode='predict')
    assert len(preds) == 2 and preds[0].pred_instances.bboxes.shape[1] == 4
