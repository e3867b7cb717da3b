"""Config wiring: `resolve_config` fills a detector config's `'auto'` channel and stride fields
from its timm backbone. The neck rules (`_necks.py`) and head rules (`_heads.py`) are data; the
resolution that applies them is `_resolve.py`.
"""
from ._necks import NECKS, NeckRule, neck_configs, neck_levels, supported_necks
from ._resolve import AUTO, has_timm_backbone, resolve_config

__all__ = ['resolve_config', 'has_timm_backbone', 'AUTO', 'NECKS', 'NeckRule',
           'supported_necks', 'neck_configs', 'neck_levels']
