"""A test that fails (the known-bad case for constraint 5)."""


def test_arithmetic_is_wrong():
    assert 1 + 1 == 3


def test_this_one_passes():
    assert 2 + 2 == 4
