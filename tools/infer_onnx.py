"""Run an end-to-end ONNX detector (tools/export.py) on images and draw its detections: what runs
on a deploy target. Needs onnxruntime, numpy and opencv only (no torch, mmdet or this package).

The graph's metadata says how to prepare an image (the config's test pipeline: Resize with its
scale and keep_ratio, Pad) and gives the class names. Each image is read with cv2 (BGR, as
mmdet reads it), resized and padded as the pipeline does, run, and its boxes mapped back to the
image (divided by the resize's scale factors); masks (Mask R-CNN) are pasted into the image as
mmdet pastes them (bilinear, threshold `mask_thr_binary`). Writes one drawn image per input and
`detections.json` (boxes in image pixels, x1 y1 x2 y2) into --out.

Example:
    python tools/infer_onnx.py data/synthetic_shapes/val/*.png --model retinanet.onnx \
        --out vis/ --score-thr 0.3
"""
import argparse
import colorsys
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import onnxruntime

INTERPOLATIONS = {'nearest': cv2.INTER_NEAREST, 'bilinear': cv2.INTER_LINEAR,
                  'bicubic': cv2.INTER_CUBIC, 'area': cv2.INTER_AREA,
                  'lanczos': cv2.INTER_LANCZOS4}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Detect objects with an end-to-end ONNX graph '
                                     '(onnxruntime, numpy, opencv only)')
    parser.add_argument('images', nargs='+', help='image files or folders of images')
    parser.add_argument('--model', required=True, help='end-to-end .onnx of tools/export.py')
    parser.add_argument('--out', required=True, help='folder for drawn images and '
                        'detections.json')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detections at or above this score are drawn and listed')
    parser.add_argument('--threads', type=int, default=0,
                        help='onnxruntime intra-op threads (0: its default)')
    return parser.parse_args(argv)


class Detector:
    """An end-to-end graph with the metadata to prepare images for it.

    Args:
        path: The `.onnx` file.
        threads: onnxruntime intra-op threads (0: its default).

    Example:
        >>> detector = Detector('retinanet.onnx')
        >>> detections = detector(cv2.imread('image.png'))
    """

    def __init__(self, path: str, threads: int = 0) -> None:
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(path, options,
                                                    providers=['CPUExecutionProvider'])
        meta = {k: json.loads(v) for k, v in
                self.session.get_modelmeta().custom_metadata_map.items()}
        outputs = [o.name for o in self.session.get_outputs()]
        if 'pipeline' not in meta or 'num_dets' not in outputs:
            raise SystemExit(f'error: {path} is not an end-to-end graph of tools/export.py '
                             f'(outputs {outputs}, no pipeline metadata); export it without '
                             f'--raw.')
        self.outputs = outputs
        self.input_shape = self.session.get_inputs()[0].shape  # ints where the graph is static
        self.classes: List[str] = list(meta.get('classes') or [])
        self.pipeline: List[Dict[str, Any]] = meta['pipeline']
        self.family = meta.get('family', 'dense')
        self.mask_thr = float(meta.get('mask_thr_binary', 0.5))
        skipped = meta.get('pipeline_skipped') or []
        if skipped:
            print(f'warning: the test pipeline also has {skipped}, which this runtime does not '
                  f'replay', file=sys.stderr)

    def prepare(self, image: np.ndarray) -> Tuple[np.ndarray, Tuple[float, float]]:
        """The pipeline's Resize and Pad on a BGR image: `(3, H, W)` uint8 and the scale
        factors `(w_scale, h_scale)`."""
        scale = (1.0, 1.0)
        for step in self.pipeline:
            if step['type'] == 'Resize':
                image, scale = resize(image, step)
            elif step['type'] == 'Pad':
                image = pad(image, step)
        return np.ascontiguousarray(image.transpose(2, 0, 1)), scale

    def __call__(self, image: np.ndarray) -> Dict[str, np.ndarray]:
        """Detections of one BGR image in its own pixels: boxes, scores, labels (and masks)."""
        tensor, scale = self.prepare(image)
        fixed = self.input_shape[2:]
        if any(isinstance(f, int) and f != s for f, s in zip(fixed, tensor.shape[1:])):
            raise SystemExit(f'error: the graph takes images of exactly {fixed[0]}x{fixed[1]} '
                             f'(fixed when it was exported); the pipeline of its metadata '
                             f'gives {tensor.shape[1]}x{tensor.shape[2]}. Export it with '
                             f'--dynamic all, or with a test pipeline that resizes or pads to '
                             f'that size.')
        results = dict(zip(self.outputs, self.session.run(None, {'images': tensor[None]})))
        count = int(results['num_dets'][0])
        boxes = results['boxes'][0, :count].astype(np.float32)
        factor = np.array(scale * 2, dtype=np.float32)
        out = dict(boxes=boxes / factor, scores=results['scores'][0, :count],
                   labels=results['labels'][0, :count])
        if 'masks' in results:
            out['masks'] = np.stack([paste_mask(m, b, image.shape[:2]) >= self.mask_thr
                                     for m, b in zip(results['masks'][0, :count],
                                                     out['boxes'])]) \
                if count else np.zeros((0, *image.shape[:2]), dtype=bool)
        return out


def resize(image: np.ndarray, step: Dict[str, Any]) -> Tuple[np.ndarray, Tuple[float, float]]:
    """mmdet's `Resize` (mmcv's `imrescale` / `imresize`, cv2 backend) and its scale factors."""
    h, w = image.shape[:2]
    scale = step['scale']
    if step.get('keep_ratio'):
        if isinstance(scale, (int, float)):
            factor = float(scale)
        else:
            factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
        size = (int(w * factor + 0.5), int(h * factor + 0.5))
    else:
        size = (int(scale[0]), int(scale[1]))
    interpolation = INTERPOLATIONS[step.get('interpolation') or 'bilinear']
    resized = cv2.resize(image, size, interpolation=interpolation)
    return resized, (size[0] / w, size[1] / h)


def pad(image: np.ndarray, step: Dict[str, Any]) -> np.ndarray:
    """mmdet's `Pad` (bottom/right): to `size` (w, h), to a multiple of `size_divisor`, or to a
    square."""
    h, w = image.shape[:2]
    if step.get('pad_to_square'):
        h = w = max(h, w)
    if step.get('size'):
        w, h = step['size']
    if step.get('size_divisor'):
        divisor = int(step['size_divisor'])
        h, w = -(-h // divisor) * divisor, -(-w // divisor) * divisor
    value = step.get('pad_val', 0)
    value = value.get('img', 0) if isinstance(value, dict) else value
    value = tuple(value) if isinstance(value, (list, tuple)) else (value, ) * 3
    return cv2.copyMakeBorder(image, 0, h - image.shape[0], 0, w - image.shape[1],
                              cv2.BORDER_CONSTANT, value=value)


def _interpolation(coords: np.ndarray, size: int) -> np.ndarray:
    """Bilinear weights `(len(coords), size)` of `grid_sample(align_corners=False)` with zero
    padding, sampling a length-`size` axis at normalized `coords` in [-1, 1]."""
    pixels = ((coords + 1) * size - 1) / 2
    low = np.floor(pixels).astype(np.int64)
    frac = (pixels - low).astype(np.float32)
    weights = np.zeros((len(coords), size), dtype=np.float32)
    rows = np.arange(len(coords))
    for offset, weight in ((0, 1 - frac), (1, frac)):
        index = low + offset
        inside = (index >= 0) & (index < size)
        np.add.at(weights, (rows[inside], index[inside]), weight[inside])
    return weights


def paste_mask(mask: np.ndarray, box: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """A box's `(28, 28)` mask probabilities as an image-sized map: mmdet's `_do_paste_mask`
    (bilinear sampling of the mask at the pixel centres inside the box, 0 elsewhere).

    Args:
        mask: `(h, w)` probabilities.
        box: `(x1, y1, x2, y2)` in the image.
        shape: (H, W) of the image.
    """
    height, width = shape
    x0, y0, x1, y1 = [float(v) for v in box]
    left, top = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
    right, bottom = min(int(np.ceil(x1)) + 1, width), min(int(np.ceil(y1)) + 1, height)
    out = np.zeros((height, width), dtype=np.float32)
    if right <= left or bottom <= top:
        return out
    with np.errstate(divide='ignore', invalid='ignore'):  # empty boxes: mmdet maps inf to 0
        ys = ((np.arange(top, bottom, dtype=np.float32) + 0.5) - y0) / np.float32(y1 - y0) * 2 - 1
        xs = ((np.arange(left, right, dtype=np.float32) + 0.5) - x0) / np.float32(x1 - x0) * 2 - 1
    ys[np.isinf(ys)], xs[np.isinf(xs)] = 0, 0
    out[top:bottom, left:right] = \
        _interpolation(ys, mask.shape[0]) @ mask.astype(np.float32) @ \
        _interpolation(xs, mask.shape[1]).T
    return out


def color(label: int) -> Tuple[int, int, int]:
    """A distinct BGR colour per class."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw(image: np.ndarray, detections: Dict[str, np.ndarray], classes: Sequence[str],
         score_thr: float) -> np.ndarray:
    """The image with the detections at or above `score_thr`: masks, boxes, class and score."""
    canvas = image.copy()
    shown = detections['scores'] >= score_thr
    for i in np.flatnonzero(shown)[::-1]:  # best drawn last, on top
        label = int(detections['labels'][i])
        bgr = color(label)
        if 'masks' in detections:
            canvas[detections['masks'][i]] = (0.5 * canvas[detections['masks'][i]] +
                                              0.5 * np.array(bgr)).astype(np.uint8)
        x1, y1, x2, y2 = [int(round(float(v))) for v in detections['boxes'][i]]
        cv2.rectangle(canvas, (x1, y1), (x2, y2), bgr, 2)
        name = classes[label] if 0 <= label < len(classes) else str(label)
        text = f'{name} {float(detections["scores"][i]):.2f}'
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        top = max(y1 - th - 4, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 4, top + th + 4), bgr, -1)
        cv2.putText(canvas, text, (x1 + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def image_files(paths: Sequence[str]) -> List[str]:
    """The image files named, folders expanded (sorted)."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(path, f) for f in os.listdir(path)
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise SystemExit(f'error: no image or folder at {path}')
    return files


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    detector = Detector(args.model, args.threads)
    os.makedirs(args.out, exist_ok=True)
    report = {}
    for path in image_files(args.images):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f'error: cv2 cannot read {path} as an image')
        detections = detector(image)
        cv2.imwrite(os.path.join(args.out, os.path.basename(path)),
                    draw(image, detections, detector.classes, args.score_thr))
        shown = detections['scores'] >= args.score_thr
        report[path] = [
            dict(box=[round(float(v), 2) for v in box], score=round(float(score), 5),
                 label=int(label), name=detector.classes[int(label)]
                 if 0 <= int(label) < len(detector.classes) else str(int(label)))
            for box, score, label in zip(detections['boxes'][shown],
                                         detections['scores'][shown],
                                         detections['labels'][shown])]
        print(f'{path}: {len(report[path])} detections (score >= {args.score_thr})')
    with open(os.path.join(args.out, 'detections.json'), 'w') as f:
        json.dump(report, f, indent=1)


if __name__ == '__main__':
    main()
