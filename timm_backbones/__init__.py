"""timm_backbones: every timm feature-extraction model as a first-class mmdet 3.x backbone."""
from .version import __version__

__all__ = ['__version__']
