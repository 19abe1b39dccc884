"""DALL-E's attention masks (Appendix B.1, Fig. 11) against brute-force double loops over (query, key)."""

import pytest
import torch

from paperzoo.dalle.masks import column_mask, conv_mask, draw_masks, layer_kinds, make_mask, row_mask


def brute_force(kind: str, text_len: int, grid: tuple[int, int], *, kernel: int = 3, image_first: bool = False,
                lead: int = 0) -> torch.Tensor:
    """The masks written the slow way: walk every (query, key) pair and apply the rule in words."""
    h, w = grid
    n = h * w
    img_start = lead if image_first else lead + text_len
    t = lead + text_len + n
    m = torch.zeros(t, t, dtype=torch.bool)
    for i in range(t):
        for j in range(t):
            if j > i:  # never the future
                continue
            i_img, j_img = img_start <= i < img_start + n, img_start <= j < img_start + n
            if not (i_img and j_img):  # text / lead tokens: plain causal attention
                m[i, j] = True
                continue
            ki, kj = i - img_start, j - img_start
            (ri, ci), (rj, cj) = divmod(ki, w), divmod(kj, w)
            if kind == "causal":
                m[i, j] = True
            elif kind == "row":  # the w previous image tokens and itself
                m[i, j] = ki - kj <= w
            elif kind == "column":  # same column, above or itself
                m[i, j] = ci == cj
            elif kind == "conv":  # inside the kernel window
                m[i, j] = abs(ri - rj) <= kernel // 2 and abs(ci - cj) <= kernel // 2
    return m


@pytest.mark.parametrize("kind", ["causal", "row", "column", "conv"])
@pytest.mark.parametrize("image_first", [False, True])
@pytest.mark.parametrize("text_len,grid,lead", [(6, (4, 4), 0), (3, (3, 5), 1), (0, (2, 2), 0)])
def test_masks_equal_brute_force(kind, image_first, text_len, grid, lead):
    got = make_mask(kind, text_len, grid, image_first=image_first, lead=lead)
    torch.testing.assert_close(got, brute_force(kind, text_len, grid, image_first=image_first, lead=lead))


@pytest.mark.parametrize("kernel", [1, 5])
def test_conv_mask_kernel_sizes_equal_brute_force(kernel):
    got = conv_mask(4, (5, 6), kernel=kernel, lead=1)
    torch.testing.assert_close(got, brute_force("conv", 4, (5, 6), kernel=kernel, lead=1))


def test_row_mask_matches_the_papers_4x4_figure():
    """Fig. 11a (6 text tokens, 4 x 4 grid): image token 5 (row 1, column 1) sees image tokens 1..5, i.e. the
    token right above it (1) and everything between, plus all 6 text tokens."""
    m = row_mask(6, (4, 4))
    row = m[6 + 5]
    assert row[:6].all()
    assert row[6:].nonzero().flatten().tolist() == [1, 2, 3, 4, 5]


def test_column_mask_sees_the_column_above_and_all_text():
    m = column_mask(6, (4, 4))
    assert m[6 + 14][6:].nonzero().flatten().tolist() == [2, 6, 10, 14]
    assert m[6 + 14][:6].all()


def test_text_after_image_sees_every_image_token_in_image_first_order():
    m = row_mask(3, (3, 3), image_first=True, lead=1)
    assert m[-1].all()  # the last text token: the lead, all 9 image tokens, the text before it and itself


def test_layer_kinds_follow_the_papers_cycle():
    # layer i (1-based) is column when (i - 2) % 4 == 0, else row; the last is conv
    assert layer_kinds("sparse", 8) == ["row", "column", "row", "row", "row", "column", "row", "conv"]
    assert layer_kinds("causal", 3) == ["causal"] * 3
    with pytest.raises(ValueError, match="mask_pattern"):
        layer_kinds("dense", 2)


def test_bad_mask_arguments_raise_one_line():
    with pytest.raises(ValueError, match="odd kernel"):
        conv_mask(2, (3, 3), kernel=4)
    with pytest.raises(ValueError, match="unknown mask kind"):
        make_mask("diagonal", 2, (3, 3))


def test_draw_masks_writes_a_png(tmp_path):
    out = draw_masks(tmp_path / "masks.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
