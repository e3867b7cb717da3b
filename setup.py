"""Install timm_backbones. The pinned stack it runs on is installed by `make install` (see README)."""
import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r"__version__ = '([^']+)'",
                    Path('timm_backbones/version.py').read_text()).group(1)

setup(
    name='timm_backbones',
    version=version,
    description='Every timm feature-extraction model as a first-class mmdet 3.x backbone',
    long_description=Path('README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['timm_backbones', 'timm_backbones.*']),
    python_requires='>=3.9',
    # Loose ranges here; the exact, tested versions are pinned in requirements/constraints.txt.
    # torch >= 2.5: torch.serialization.safe_globals (weights-only checkpoint loading).
    install_requires=[
        'torch>=2.5', 'timm>=1.0,<1.1', 'mmengine>=0.10,<0.11', 'mmcv>=2.0.0rc4,<2.2.0',
        'mmdet>=3.3,<3.4', 'pycocotools', 'matplotlib',
    ],
    extras_require={
        'tests': ['pytest', 'pytest-timeout'],
        # ONNX export (tools/export.py): torch's dynamo exporter and onnxruntime to check it.
        'export': ['onnx', 'onnxscript', 'onnxruntime'],
        # segmentation (timm_backbones.seg, configs/seg/): mmseg 1.2 and what it imports
        'seg': ['mmsegmentation>=1.2,<1.3', 'prettytable', 'ftfy', 'regex'],
    },
    entry_points={'console_scripts': ['timm-backbones=timm_backbones.cli:console']},
)
