"""The package layout rules the README states: the core imports nothing from `wiring/`,
`engine/` or `data/`; `wiring/` imports only the core; tools use public names only; every module
says what it owns."""
import ast
import glob
import os

import pytest

from helpers import ROOT

PACKAGE = os.path.join(ROOT, 'timm_backbones')


def _modules(pattern):
    return sorted(glob.glob(os.path.join(PACKAGE, pattern), recursive=True))


def _imported(path, root=ROOT):
    """Absolute names of the package's modules that `path` imports (relative imports resolved),
    in the order written."""
    rel = os.path.relpath(path, root)[:-len('.py')].split(os.sep)
    package = rel[:-1]
    names = []
    for node in sorted((n for n in ast.walk(ast.parse(open(path).read()))
                        if isinstance(n, (ast.Import, ast.ImportFrom))),
                       key=lambda n: (n.lineno, n.col_offset)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                if node.module:
                    names.append('.'.join(base + [node.module]))
                else:  # `from . import wiring`: the names are modules
                    names += ['.'.join(base + [a.name]) for a in node.names]
            elif node.module:
                names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return [n for n in names if n.split('.')[0] == 'timm_backbones']


CORE = [p for p in _modules('_*.py') if not p.endswith('__init__.py')]


@pytest.mark.parametrize('path', CORE, ids=os.path.basename)
def test_core_imports_only_the_core(path):
    outside = [n for n in _imported(path)
               if n.split('.')[1:2] and n.split('.')[1] in ('wiring', 'engine', 'data', 'sweep')]
    assert not outside, f'{path} imports {outside}'


@pytest.mark.parametrize('path', _modules('wiring/*.py'), ids=os.path.basename)
def test_wiring_imports_only_the_core(path):
    outside = [n for n in _imported(path)
               if n.split('.')[1:2] and n.split('.')[1] in ('engine', 'data', 'sweep')]
    assert not outside, f'{path} imports {outside}'


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'tools', '*.py'))),
                         ids=os.path.basename)
def test_tools_use_public_names(path):
    private = [n for n in _imported(path) if any(p.startswith('_') for p in n.split('.')[1:])]
    assert not private, f'{path} imports private modules {private}'


@pytest.mark.parametrize('path', _modules('**/*.py'), ids=lambda p: os.path.relpath(p, PACKAGE))
def test_every_module_says_what_it_owns(path):
    if os.path.basename(path) == 'version.py':
        return
    assert ast.get_docstring(ast.parse(open(path).read())), f'{path} has no module docstring'


def test_imports_are_read_in_every_form(tmp_path):
    # the rules above see `from . import x`, `from .x import y` and `import x` alike
    path = tmp_path / 'timm_backbones' / '_mod.py'
    path.parent.mkdir()
    path.write_text('from . import wiring\nfrom .engine import runner\nimport timm_backbones.data\n'
                    'from ._specs import FeatureSpec\n')
    assert _imported(str(path), root=str(tmp_path)) == [
        'timm_backbones.wiring', 'timm_backbones.engine', 'timm_backbones.data',
        'timm_backbones._specs']


def _all_imported(path):
    """Every module name `path` imports at module level, third-party included (relative imports
    resolved as in `_imported`)."""
    rel = os.path.relpath(path, ROOT)[:-len('.py')].split(os.sep)
    names = []
    for node in ast.parse(open(path).read()).body:  # top-level statements only
        if isinstance(node, ast.ImportFrom):
            base = rel[:-1][:len(rel) - node.level] if node.level else []
            names.append('.'.join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


@pytest.mark.parametrize('path', [p for p in _modules('**/*.py') if os.sep + 'seg' + os.sep
                                  not in p], ids=lambda p: os.path.relpath(p, PACKAGE))
def test_only_seg_imports_mmseg(path):
    # `import timm_backbones` never imports mmseg: only timm_backbones.seg (segmentation configs'
    # custom_imports) does at import time; elsewhere mmseg is imported inside the functions that
    # handle segmentors (tests/test_seg.py checks the import itself)
    found = [n for n in _all_imported(path)
             if n.split('.')[0] == 'mmseg' or n.startswith('timm_backbones.seg')]
    assert not found, f'{path} imports {found} at module level'
