"""Config wiring: `resolve_config` fills a detector config's `'auto'` channel and stride fields
from its timm backbone. The neck rules (`_necks.py`) and head rules (`_heads.py`) are data; the
resolution that applies them is `_resolve.py`; `_swap.py` replaces a config's backbone by a timm
model (`swap_backbone`, `timm=ARCH` marks).
"""
from ._necks import NECKS, NeckRule, neck_configs, neck_levels, supported_necks
from ._resolve import AUTO, has_timm_backbone, resolve_config
from ._swap import (SWAP_KEY, SwapResult, backbone_strides, config_file, swap_backbone,
                    swap_config_text, swap_marked)

__all__ = ['resolve_config', 'has_timm_backbone', 'AUTO', 'NECKS', 'NeckRule',
           'supported_necks', 'neck_configs', 'neck_levels', 'swap_backbone', 'swap_config_text',
           'swap_marked', 'backbone_strides', 'SwapResult', 'SWAP_KEY', 'config_file']
