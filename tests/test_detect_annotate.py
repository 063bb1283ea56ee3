"""utils/deploy/annotate.py: palette colours, readable label text, drawing and crops."""
import numpy as np
import torch

from utils.deploy.annotate import (BLACK, PALETTE_HEX, WHITE, annotate, box_label, class_colour, contrast_ratio, crop_box,
                            default_line_width, text_colour)


def test_palette_is_fixed_distinct_and_bgr():
    assert class_colour(0) == (0x4B, 0x19, 0xE6)  # 'E6194B' red, as BGR
    assert class_colour(len(PALETTE_HEX)) == class_colour(0)  # wraps around
    assert len({class_colour(i) for i in range(len(PALETTE_HEX))}) == len(PALETTE_HEX)


def test_text_colour_has_the_better_contrast():
    assert contrast_ratio(WHITE, BLACK) == 21.0  # WCAG maximum
    assert text_colour((25, 225, 255)) == BLACK  # yellow background
    assert text_colour((117, 0, 0)) == WHITE  # navy background
    for i in range(len(PALETTE_HEX)):
        bg = class_colour(i)
        assert contrast_ratio(bg, text_colour(bg)) >= 4.5  # WCAG AA for every palette colour


def test_labels_respect_hide_flags():
    assert box_label('dog', 0.876) == 'dog 0.88'
    assert box_label('dog', 0.876, hide_conf=True) == 'dog'
    assert box_label('dog', 0.876, hide_labels=True) is None


def test_annotate_draws_on_a_copy_in_the_class_colour():
    im = np.full((100, 160, 3), 255, np.uint8)
    det = torch.tensor([[40., 50., 120., 90., 0.9, 3.]])
    out = annotate(im, det, {3: 'bus'}, line_width=2)
    assert (im == 255).all()  # input untouched
    assert tuple(out[70, 40]) == class_colour(3)  # left edge of the box
    assert tuple(out[70, 80]) == (255, 255, 255)  # inside stays clear
    tab = out[32:48, 40:100].reshape(-1, 3)  # label tab above the box, white text on the blue class colour
    assert (tab == class_colour(3)).all(1).mean() > 0.4 and (tab == 255).all(1).any()
    plain = annotate(im, det, ['a', 'b', 'c', 'bus'], line_width=2, hide_labels=True)
    assert (plain[32:48, 40:100] == 255).all()  # no tab without labels
    assert default_line_width((1080, 810)) == 3 and default_line_width((60, 60)) == 2


def test_crop_box_enlarges_and_clips():
    im = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3)
    crop = crop_box(im, [50, 20, 100, 60], gain=1.0, pad=0)
    assert crop.shape == (40, 50, 3) and (crop == im[20:60, 50:100]).all()
    assert crop_box(im, [50, 20, 100, 60]).shape == (51, 61, 3)  # 1.02 gain + 10 px
    assert crop_box(im, [-30, -30, 500, 40], gain=1.0, pad=0).shape == (40, 200, 3)
