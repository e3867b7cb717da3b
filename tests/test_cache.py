"""`_cache.py`: memos keep the most recently used results (failures of the given types too) and
`clear_caches()` empties every memo of the package."""
import pytest

from timm_backbones import feature_specs
from timm_backbones._cache import _MEMOS, Memo, clear_caches, kwargs_key, memoize


def test_memo_keeps_the_most_recently_used():
    # rule: least recently used out first, a hit counts as a use
    memo = Memo('test', size=2)
    calls = []

    def compute(key):
        return lambda: calls.append(key) or key * 10

    assert memo.get(1, compute(1)) == 10 and memo.get(2, compute(2)) == 20
    assert memo.get(1, compute(1)) == 10  # a hit: 1 is now the most recent
    memo.get(3, compute(3))  # evicts 2, not the whole memo
    assert 1 in memo and 3 in memo and 2 not in memo and len(memo) == 2
    assert calls == [1, 2, 3]


def test_memo_caches_failures_of_the_given_types_only():
    memo = Memo('test', size=4, failures=(ValueError,))
    calls = []

    def fail(error):
        def compute():
            calls.append(error)
            raise error('no')
        return compute

    for _ in range(2):
        with pytest.raises(ValueError, match='no'):
            memo.get('v', fail(ValueError))
    for _ in range(2):
        with pytest.raises(KeyError):
            memo.get('k', fail(KeyError))
    assert calls == [ValueError, KeyError, KeyError]  # ValueError cached, KeyError not


def test_clear_caches_empties_every_memo():
    # rule: one call forgets every memo of the package (probes, models, names, ...)
    feature_specs(dict(type='timm.resnet18'))

    @memoize(size=4)
    def double(x):
        return 2 * x

    double(3)
    assert double.memo.get((3,), lambda: None) == 6  # memoized by its arguments
    assert sum(len(m) for m in _MEMOS) > 1
    clear_caches()
    assert all(len(m) == 0 for m in _MEMOS)
    assert feature_specs.cache_clear is clear_caches


def test_kwargs_key_is_hashable_for_any_values():
    assert hash(kwargs_key({'img_size': [224, 224], 'cfg': {'a': 1}})) is not None
    assert kwargs_key({'b': 1, 'a': 2}) == kwargs_key({'a': 2, 'b': 1})
