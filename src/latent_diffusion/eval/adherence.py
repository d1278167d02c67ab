"""Caption ↔ picture agreement, with the relation rule of ShapesWorld.

``parse_caption("a red circle above a blue square and a green star")`` →
``CaptionSpec(objects=[("circle", "red"), ("square", "blue"), ("star", "green")], relation="above")``.

A picture adheres to a caption when the judge finds exactly the named objects (each (shape, colour) pair once,
no other object) and, for two or more objects, object 0 stands in the named relation to object 1. The relation
is read from box centres along the dominant axis (ShapesWorld places objects so that the named axis carries more
than 1.5× the offset of the other, so the dominant axis is the named one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..data.shapes import COLOUR_NAMES, RELATIONS, SHAPES
from ..errors import LDMError
from .judge import DetectedObject

_OBJ = rf"an? ({'|'.join(COLOUR_NAMES)}) ({'|'.join(SHAPES)})"
_REL = "|".join(RELATIONS)
_CAPTION = re.compile(rf"^{_OBJ}(?: ({_REL}) {_OBJ}(?: and {_OBJ})?)?$")


@dataclass(frozen=True)
class CaptionSpec:
    objects: tuple[tuple[str, str], ...]  # (shape, colour), main object first
    relation: str | None  # relation of object 0 to object 1


def parse_caption(caption: str) -> CaptionSpec:
    m = _CAPTION.match(caption.strip().lower())
    if m is None:
        raise LDMError(f"not a ShapesWorld caption: {caption!r}; expected e.g. 'a red circle above a blue square "
                       f"and a green star' (colours {list(COLOUR_NAMES)}, shapes {list(SHAPES)}, "
                       f"relations {list(RELATIONS)})")
    g = m.groups()
    objs = [(g[1], g[0])]
    if g[2] is not None:
        objs.append((g[4], g[3]))
    if g[5] is not None:
        objs.append((g[6], g[5]))
    return CaptionSpec(tuple(objs), g[2])


def relation_between(a: DetectedObject, b: DetectedObject) -> str:
    """Relation of ``a`` to ``b`` along the dominant axis of their box centres (image y points down)."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


def find(objs: list[DetectedObject], shape: str, colour: str) -> DetectedObject | None:
    for o in objs:
        if o.shape == shape and o.colour == colour:
            return o
    return None


def check_caption(spec: CaptionSpec, objs: list[DetectedObject]) -> dict[str, bool]:
    """Per-attribute verdicts for one picture; ``all`` is the prompt-adherence verdict."""
    found = [find(objs, s, c) for s, c in spec.objects]
    shapes_detected = sorted(o.shape for o in objs)
    colours_detected = sorted(o.colour for o in objs)
    out = {
        "objects": all(f is not None for f in found),
        "shape": shapes_detected == sorted(s for s, _ in spec.objects),
        "colour": colours_detected == sorted(c for _, c in spec.objects),
        "count": len(objs) == len(spec.objects),
    }
    if spec.relation is not None:
        out["relation"] = found[0] is not None and found[1] is not None and \
            relation_between(found[0], found[1]) == spec.relation
    out["all"] = out["objects"] and out["count"] and out.get("relation", True)
    return out
