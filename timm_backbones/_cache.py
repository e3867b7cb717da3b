"""Memoization, owned by the code that needs it: `Memo` (a least-recently-used map of results,
failures included) and `memoize` (a function memoized by its arguments). Every memo registers
itself, so `clear_caches()` is the one call that empties them all (e.g. to time a cold plan).
"""
import functools
from collections import OrderedDict
from typing import Any, Callable, Dict, Hashable, List, Tuple, Type, TypeVar

__all__ = ['Memo', 'memoize', 'clear_caches', 'kwargs_key']

_T = TypeVar('_T')
_MEMOS: List['Memo'] = []


class _Failure:
    """A cached exception (raised again on every lookup)."""
    __slots__ = ('error',)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _result(found: Any) -> Any:
    """`found`, or its exception raised (without the traceback of the first failure)."""
    if isinstance(found, _Failure):
        raise found.error.with_traceback(None)
    return found


class Memo:
    """Results by key, least recently used first out once `size` is reached; exceptions of the
    `failures` types are cached too and raised again on every lookup of their key.

    Args:
        name: What it holds (for `repr`).
        size: Most entries kept.
        failures: Exception types whose outcome is cached like a result.

    Example:
        >>> squares = Memo('squares', size=2)
        >>> squares.get(3, lambda: 9)
        9
    """

    def __init__(self, name: str, size: int,
                 failures: Tuple[Type[BaseException], ...] = ()) -> None:
        self.name = name
        self.size = size
        self.failures = failures
        self._data: 'OrderedDict[Hashable, Any]' = OrderedDict()
        _MEMOS.append(self)

    MISSING = object()

    def get(self, key: Hashable, compute: Callable[[], _T]) -> _T:
        """The result for `key`, computed by `compute()` the first time."""
        found = self.find(key)
        if found is Memo.MISSING:
            try:
                found = compute()
            except self.failures as err:
                found = _Failure(err)
            self._data[key] = found
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return _result(found)

    def find(self, key: Hashable) -> Any:
        """The result for `key` (a cached failure is raised), or `Memo.MISSING`."""
        found = self._data.get(key, Memo.MISSING)
        if found is not Memo.MISSING:
            self._data.move_to_end(key)
        return _result(found)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        """Forget every entry."""
        self._data.clear()

    def __repr__(self) -> str:
        return f'Memo({self.name!r}, {len(self)}/{self.size})'


def memoize(size: int, failures: Tuple[Type[BaseException], ...] = ()
            ) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Memoize a function of hashable positional arguments in a `Memo` (cleared by
    `clear_caches`); the memo is the wrapper's `memo` attribute.

    Example:
        >>> @memoize(size=64)
        ... def double(x):
        ...     return 2 * x
    """
    def decorate(fn: Callable[..., _T]) -> Callable[..., _T]:
        memo = Memo(fn.__qualname__, size, failures)

        @functools.wraps(fn)
        def wrapper(*args: Hashable) -> _T:
            return memo.get(args, lambda: fn(*args))
        wrapper.memo = memo  # type: ignore[attr-defined]
        return wrapper
    return decorate


def kwargs_key(kwargs: Dict[str, Any]) -> Tuple[Tuple[str, str], ...]:
    """A memo key for keyword arguments (values by `repr`, so lists and dicts work).

    Example:
        >>> kwargs_key({'img_size': [224, 224]})
        (('img_size', '[224, 224]'),)
    """
    return tuple(sorted((k, repr(v)) for k, v in kwargs.items()))


def clear_caches() -> None:
    """Empty every memo of the package (probes, input rules, meta models, timm's name lists,
    layer-decay tables, the sweep's detectors)."""
    for memo in _MEMOS:
        memo.clear()
