"""train.py --val-every K: which epochs are validated (utils/train/val_schedule.py), the flag, and runs with it."""
import pytest

from utils.train.val_schedule import is_validated, parse_val_every, schedule_note, val_interval


@pytest.mark.parametrize('epochs, interval', [(1, 1), (3, 1), (10, 1), (11, 1), (19, 1), (20, 2), (35, 3),
                                              (50, 5), (100, 5), (300, 5)])
def test_auto_validates_every_epoch_up_to_10_then_every_min_5_epochs_over_10(epochs, interval):
    assert val_interval('auto', epochs) == interval


def test_a_given_interval_is_kept_whatever_the_length():
    assert val_interval(1, 300) == 1 and val_interval('3', 5) == 3 and val_interval(7, 50) == 7
    assert parse_val_every(' Auto ') == 'auto' and parse_val_every('12') == 12 and parse_val_every(4) == 4


@pytest.mark.parametrize('value', ['0', 0, '-3', -3, 'abc', '', '2.5', 2.5, True, None])
def test_bad_values_are_refused(value):
    with pytest.raises(ValueError, match="expected a positive integer or 'auto'"):
        parse_val_every(value)


def test_validated_epochs_are_every_kth_counted_from_one_and_the_last():
    assert [e for e in range(3) if is_validated(e, 2, 3)] == [1, 2]
    assert [e for e in range(20) if is_validated(e, 2, 20)] == list(range(1, 20, 2))
    assert [e for e in range(12) if is_validated(e, 5, 12)] == [4, 9, 11]
    assert all(is_validated(e, 1, 4) for e in range(4))


def test_the_start_line_says_the_interval_and_how_to_validate_every_epoch():
    assert schedule_note('auto', 20) == ('val: every 2 epochs (--val-every auto for a 20-epoch run; '
                                         '--val-every 1 validates every epoch)')
    assert schedule_note(2, 3) == ('val: every 2 epochs and the last (--val-every 2; '
                                   '--val-every 1 validates every epoch)')
    assert schedule_note('auto', 10) is None and schedule_note(1, 300) is None
