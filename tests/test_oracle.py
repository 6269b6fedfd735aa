"""Grounding oracle: generated SynthRef expressions single out their target; hand-written cases behave as a
listener would judge them (ambiguous text is not referential, unknown words are ignored)."""

from __future__ import annotations

import numpy as np
import pytest

from pseudo_ris.synthref import SceneConfig, render_scene
from pseudo_ris.synthref.expressions import STYLES, generate_expressions
from pseudo_ris.synthref.oracle import ground_expression, is_referential, parse_expression


def obj(shape, colour, size, cx, cy, r=None):
    """An oracle object centred at (cx, cy) in a 128 px image."""
    r = r if r is not None else (8 if size == "small" else 18)
    return {"shape": shape, "colour": colour, "size": size, "bbox": [cx - r, cy - r, 2 * r, 2 * r]}


# A scene: two circles (red big left, blue small right), two blue stars (left / right), a green square at the bottom
SCENE = [
    obj("circle", "red", "big", 25, 40),     # 0
    obj("circle", "blue", "small", 100, 40),  # 1
    obj("star", "blue", "big", 20, 100),     # 2
    obj("star", "blue", "big", 105, 100),    # 3
    obj("square", "green", "small", 64, 115),  # 4
]


def test_generated_expressions_ground_to_their_target():
    rng = np.random.default_rng(123)
    cfg = SceneConfig()
    checked = 0
    distractor_refs = 0
    for _ in range(120):
        scene = render_scene(rng, cfg)
        objects = [o.as_oracle_object() for o in scene.objects]
        for t in range(len(objects)):
            for style in STYLES:
                for text in generate_expressions(objects, t, style, rng, cfg.image_size):
                    assert ground_expression(text, objects, cfg.image_size) == [t], (style, text, objects)
                    checked += 1
            distractor_refs += sum(o["shape"] == objects[t]["shape"] for o in objects) > 1
    assert checked > 1000
    assert distractor_refs > 100  # the check covers targets that share their shape with another object


@pytest.mark.parametrize("text", ["the circle", "circle", "a circle", "the star", "blue star", "a photo of a star"])
def test_ambiguous_expressions_are_not_referential(text):
    hits = ground_expression(text, SCENE)
    assert len(hits) == 2
    assert not any(is_referential(text, SCENE, t) for t in range(len(SCENE)))


@pytest.mark.parametrize("text,expected", [
    ("the red circle", [0]),
    ("red circle", [0]),
    ("the circle that is red", [0]),
    ("a small blue circle", [1]),
    ("the big circle", [0]),
    ("a small red circle", []),          # no such object
    ("red shape", [0]),                  # generic nouns match any shape
    ("the blue thing", [1, 2, 3]),
    ("green object", [4]),
    ("the square", [4]),
    ("a box", [4]),                      # shape synonym
    ("a photo of a blue star on the left", [2]),
    ("the star on the right", [3]),
    ("the rightmost star", [3]),
    ("the left one", [0, 2]),            # two objects at the very left edge, within the margin of each other
    ("the top circle", [0, 1]),          # both circles at the same height: location cannot decide
    ("the bottom one", [4]),
    ("a lovely blue star glowing on the left in the sunshine", [2]),  # unknown words ignored
    ("the star on the left side of the picture", [2]),  # "left ... of the picture" is a location, not a relation
    ("a red and blue circle", []),       # contradictory colours
    ("the circle above the green square", [0, 1]),  # both circles are above the square
    ("the star left of the green square", [2]),
    ("the star to the right of the green square", [3]),
    ("the star below the red circle", [2]),  # the other star is too far to the side to be "below" it
    ("the blue shape next to the green square", [2, 3]),  # both stars equally close
    ("the circle next to the purple heart", []),  # anchor does not exist
    ("the star under the small blue circle", [3]),
])
def test_hand_written_expressions(text, expected):
    assert ground_expression(text, SCENE) == expected


def test_lone_candidate_location_must_fit_the_image_region():
    # one red circle, placed on the right: "on the right" fits, "on the left" contradicts it
    scene = [obj("circle", "red", "big", 110, 64), obj("star", "blue", "small", 20, 64)]
    assert ground_expression("the red circle on the right", scene) == [0]
    assert ground_expression("the red circle on the left", scene) == []


def test_next_to_picks_the_nearest_candidate():
    scene = [obj("circle", "red", "small", 20, 64), obj("circle", "red", "small", 100, 64),
             obj("star", "green", "small", 80, 64)]
    assert is_referential("the circle next to the green star", scene, 1)
    assert not is_referential("the circle", scene, 1)


def test_parse_reads_relation_and_anchor():
    parsed = parse_expression("the big red circle that is to the left of the small green star")
    assert parsed.shapes == {"circle"} and parsed.colours == {"red"} and parsed.sizes == {"big"}
    assert parsed.relation == "left_of"
    assert parsed.anchor.shapes == {"star"} and parsed.anchor.colours == {"green"}


def test_objects_without_attributes_raise():
    with pytest.raises(KeyError, match="colour"):
        ground_expression("the circle", [{"shape": "circle", "size": "big", "bbox": [0, 0, 4, 4]}])
