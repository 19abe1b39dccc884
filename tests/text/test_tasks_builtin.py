"""The built-in dates/numbers task: exact renderings, determinism, held-out values."""

import pytest

from paperzoo.text.tasks_builtin import make_builtin_pairs, render, value_space

SMALL = dict(n_train=300, n_val=50, n_test=100)


def test_issue_examples_render_exactly():
    # 2021-08-12 is day 44418 after 1900-01-01
    assert render(("date_full", 44418), "ko") == ("Thursday, August 12, 2021", "2021년 8월 12일 목요일")
    assert render(("date_long", 44418), "fr") == ("August 12, 2021", "12 août 2021")
    assert render(("date_full", 44418), "de") == ("Thursday, August 12, 2021", "Donnerstag, 12. August 2021")
    assert render(("number", 4096), "fr") == ("four thousand and ninety-six", "quatre mille quatre-vingt-seize")
    assert render(("number", 4096), "ko") == ("four thousand and ninety-six", "사천구십육")


def test_deterministic():
    a, b = make_builtin_pairs("ko", **SMALL), make_builtin_pairs("ko", **SMALL)
    assert a.train == b.train and a.val == b.val and a.test == b.test
    assert make_builtin_pairs("ko", seed=1, **SMALL).test != a.test


def test_held_out_values_are_disjoint():
    s = make_builtin_pairs("fr", **SMALL)
    tr, va, te = (set(s.values[k]) for k in ("train", "val", "test"))
    assert len(tr) == 300 and len(va) == 50 and len(te) == 100
    assert not (tr & va) and not (tr & te) and not (va & te)
    # and as strings: no test source sentence is seen in training
    assert not {x for x, _ in s.test} & {x for x, _ in s.train}
    assert {k for k, _ in s.values["test"]} == {"date_full", "date_long", "number"}


def test_test_set_does_not_depend_on_training_size():
    a = make_builtin_pairs("ko", n_train=100, n_val=20, n_test=50)
    b = make_builtin_pairs("ko", n_train=400, n_val=20, n_test=50)
    assert a.test == b.test and a.val == b.val


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown target language 'es'"):
        make_builtin_pairs("es", **SMALL)
    with pytest.raises(ValueError, match="only .* remain"):
        make_builtin_pairs("ko", n_train=200, n_val=0, n_test=0, max_number=9, p_date=0.0)
    assert value_space(99)["number"] == 100
