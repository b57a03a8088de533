"""``_shipfn``: which functions an Executor ships once, without Ray."""

from __future__ import annotations

import functools
import pickle
import threading
from typing import Any

import pytest

from cmlray import _shipfn
from cmlray._shipfn import SHIP_ONCE_BYTES, FunctionShelf, Inline, Shipped


def shelf() -> tuple[FunctionShelf, dict[str, bytes]]:
    attached: dict[str, bytes] = {}
    return FunctionShelf(attached.__setitem__), attached


def test_a_small_function_travels_as_its_pickle_made_once() -> None:
    functions, attached = shelf()

    def small(x: int) -> int:
        return x + 1

    form = functions.form(small)
    assert isinstance(form, Inline)
    assert functions.form(small) is form  # pickled once, for every call
    assert pickle.loads(form.data)(1) == 2
    assert functions.form(len) is len  # (a builtin: by reference, with each call)
    assert attached == {}


def test_a_worker_loads_an_inline_function_once_for_all_its_calls() -> None:
    functions, _ = shelf()
    calls = [pickle.loads(pickle.dumps(functions.form(lambda x: x * 3))) for _ in range(2)]
    assert calls[0] is not calls[1] and calls[0].data == calls[1].data  # as two calls carry it
    loaded = _shipfn.resolve(calls[0])
    assert _shipfn.resolve(calls[1]) is loaded and loaded(2) == 6
    assert calls[1](4) == 12  # (a joblib batch calls it as the function)


def test_an_inline_function_that_does_not_load_raises_in_its_call() -> None:
    broken = Inline(b"not a pickle")
    with pytest.raises(pickle.UnpicklingError):
        _shipfn.resolve(broken)


def test_a_big_function_is_attached_once_and_loads_as_itself() -> None:
    functions, attached = shelf()
    table = bytes(range(256)) * (SHIP_ONCE_BYTES // 128)  # what the function carries along

    def big(i: int) -> int:
        return table[i]

    first = functions.form(big)
    assert isinstance(first, Shipped)
    assert functions.form(big) is first  # pickled and attached once
    assert list(attached) == [first.key] and len(attached[first.key]) > SHIP_ONCE_BYTES
    assert pickle.loads(attached[first.key])(300) == table[300]
    assert pickle.loads(pickle.dumps(first)).key == first.key  # a call carries the key


def test_other_callables_travel_with_their_calls() -> None:
    functions, attached = shelf()
    payload = bytes(2 * SHIP_ONCE_BYTES)
    call = functools.partial(bytes.count, payload)
    assert functions.form(call) is call  # (of a builtin)

    def scaled(factor: Any, x: int) -> int:
        return x * len(factor) if isinstance(factor, list) else x * factor

    changing = [1, 2]
    mutable = functools.partial(scaled, changing)
    assert functions.form(mutable) is mutable  # its list may change before the next call
    fixed = functions.form(functools.partial(scaled, 5))
    assert isinstance(fixed, Inline) and pickle.loads(fixed.data)(2) == 10
    assert attached == {}


def test_an_unpicklable_function_fails_at_submit() -> None:
    functions, _ = shelf()
    lock = threading.Lock()

    def locked() -> bool:
        return lock.locked()

    with pytest.raises(TypeError, match="the call's function cannot be pickled"):
        functions.form(locked)


def test_a_worker_resolves_a_key_once(monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(x: Any) -> Any:
        return ("answered", x)

    assert _shipfn.resolve(answer) is answer  # not a key: the function itself
    monkeypatch.setitem(_shipfn._resolved, "fn-9", answer)  # loaded before
    assert _shipfn.resolve(Shipped("fn-9")) is answer


def test_two_big_functions_are_two_attachments() -> None:
    functions, attached = shelf()
    table = bytes(2 * SHIP_ONCE_BYTES)

    def first(i: int) -> str:
        return f"first {len(table) + i}"

    def second(i: int) -> str:
        return f"second {len(table) + i}"

    one, two = functions.form(first), functions.form(second)
    assert isinstance(one, Shipped) and isinstance(two, Shipped) and one.key != two.key
    assert pickle.loads(attached[one.key])(1) == first(1)
    assert pickle.loads(attached[two.key])(1) == second(1)
