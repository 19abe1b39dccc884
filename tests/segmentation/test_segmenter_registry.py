"""The segmenter registry refuses duplicates and unknown names with a hint."""

import pytest

from paperzoo.segmentation.registry import UnknownSegmenterError, create_segmenter, register_segmenter, segmenter_names


def test_unknown_segmenter_is_a_key_error_that_lists_the_known_names():
    with pytest.raises(UnknownSegmenterError, match="unknown segmenter 'nope'"):
        create_segmenter("nope")
    assert isinstance(UnknownSegmenterError("x"), KeyError)
    assert segmenter_names() == sorted(segmenter_names())


def test_a_second_builder_under_a_taken_name_is_refused():
    @register_segmenter(name="_test_seg")
    def one(**kw):
        raise AssertionError

    with pytest.raises(ValueError, match="already registered"):
        @register_segmenter(name="_test_seg")
        def two(**kw):
            raise AssertionError
