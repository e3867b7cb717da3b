"""`python -m timm_backbones ...`: the `timm-backbones` command (see `cli.py`)."""
from .cli import console

if __name__ == '__main__':
    console()
