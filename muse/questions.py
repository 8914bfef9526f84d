"""Question families over a procedural scene: each picks a question and its target set."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .records import multi_question, template_answer
from .scene import BASE_SIZE, Scene
from .shapes import COLOURS, CORNERS, PLURALS, POINTY, SHAPES, WITH_HOLE

NO_SHAPE_ANSWER = "No shape matches."
SPATIAL_MARGIN = 3.0  # px at 64: centroids closer than this on the axis make "left of" unclear
SIZE_RATIO = 1.25  # k-th vs (k+1)-th visible area for "the k largest" to be unambiguous


@dataclass(frozen=True)
class Question:
    """A question with its targets.

    Attributes:
        text: the question.
        targets: indices into ``scene.objects``, in answer order.
        phrases: one phrase per target, in answer order.
        answer: text answer with one ``{seg}`` per target.
        family: the question family that produced it.
    """

    text: str
    targets: tuple[int, ...]
    phrases: tuple[str, ...]
    answer: str
    family: str


Draw = tuple[str, list[int]] | None  # (question text, unordered targets) or no valid question


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _present(scene: Scene, attr: str) -> list[str]:
    return sorted({getattr(o, attr) for o in scene.objects})


def _where(scene: Scene, pred: Callable) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if pred(o)]


_COLOUR_Q = ("Which shapes are {c}?", "Find all the {c} shapes.", "Segment every {c} shape.")
_SHAPE_Q = ("Find all the {p}.", "Which shapes are {p}?", "Where are the {p}?")
_PAIR_Q = ("Find the {c} {s}.", "Where is the {c} {s}?", "Segment the {c} {s}.")


def ask_colour(scene: Scene, rng: np.random.Generator) -> Draw:
    """All shapes of one present colour."""
    c = _pick(rng, _present(scene, "colour"))
    return _pick(rng, _COLOUR_Q).format(c=c), _where(scene, lambda o: o.colour == c)


def ask_shape(scene: Scene, rng: np.random.Generator) -> Draw:
    """All objects of one present shape, or of two shapes."""
    present = _present(scene, "shape")
    s = _pick(rng, present)
    if len(present) > 1 and rng.random() < 0.4:
        s2 = _pick(rng, [x for x in SHAPES if x != s])
        text = _pick(rng, ("Find the {a} and the {b}.", "Which shapes are {a} or {b}?"))
        return (text.format(a=PLURALS[s], b=PLURALS[s2]),
                _where(scene, lambda o: o.shape in (s, s2)))
    return _pick(rng, _SHAPE_Q).format(p=PLURALS[s]), _where(scene, lambda o: o.shape == s)


def ask_pair(scene: Scene, rng: np.random.Generator) -> Draw:
    """The single object of a (colour, shape) pair."""
    i = int(rng.integers(len(scene.objects)))
    o = scene.objects[i]
    return _pick(rng, _PAIR_Q).format(c=o.colour, s=o.shape), [i]


def ask_colour_or(scene: Scene, rng: np.random.Generator) -> Draw:
    """Two colours, sometimes restricted to one shape ("the red or yellow triangles")."""
    o = _pick(rng, scene.objects)
    others = [c for c in _present(scene, "colour") if c != o.colour] or [
        c for c in COLOURS if c != o.colour]
    c1, c2 = o.colour, _pick(rng, others)
    if rng.random() < 0.5:
        c1, c2 = c2, c1
    if rng.random() < 0.7:
        text = _pick(rng, ("Which shapes are {a} or {b}?", "Find the {a} and {b} shapes."))
        return text.format(a=c1, b=c2), _where(scene, lambda x: x.colour in (c1, c2))
    text = _pick(rng, ("Find the {a} or {b} {p}.", "Which {p} are {a} or {b}?"))
    return (text.format(a=c1, b=c2, p=PLURALS[o.shape]),
            _where(scene, lambda x: x.colour in (c1, c2) and x.shape == o.shape))


_KNOWLEDGE: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("have no corners", lambda s: CORNERS[s] == 0),
    ("are round", lambda s: CORNERS[s] == 0),
    ("have exactly three corners", lambda s: CORNERS[s] == 3),
    ("have exactly four corners", lambda s: CORNERS[s] == 4),
    ("have six corners", lambda s: CORNERS[s] == 6),
    ("are pointy", lambda s: s in POINTY),
    ("have a hole in the middle", lambda s: s in WITH_HOLE),
    ("have straight sides", lambda s: CORNERS[s] > 0),
)


def ask_knowledge(scene: Scene, rng: np.random.Generator) -> Draw:
    """A property of the shape category, sometimes restricted to a colour."""
    prop, pred = _pick(rng, _KNOWLEDGE)
    if rng.random() < 0.2:
        c = _pick(rng, _present(scene, "colour"))
        targets = _where(scene, lambda o: o.colour == c and pred(o.shape))
        return f"Which {c} shapes {prop}?", targets
    return f"Which shapes {prop}?", _where(scene, lambda o: pred(o.shape))


_RELATIONS = {  # name -> (axis, sign): target when sign * (target - reference) > margin
    "left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1),
}


def ask_spatial(scene: Scene, rng: np.random.Generator) -> Draw:
    """Shapes on one side of a reference object, by centroid with a clear margin.

    Tries (reference, relation) pairs in random order and keeps the first where no other
    object is near the reference on that axis and at least one lies on the asked side.
    """
    margin = SPATIAL_MARGIN * scene.image.shape[0] / BASE_SIZE
    names = list(_RELATIONS)
    for flat in rng.permutation(len(scene.objects) * len(names)):
        ref_i, name = int(flat) // len(names), names[int(flat) % len(names)]
        axis, sign = _RELATIONS[name]
        ref = scene.objects[ref_i]
        offsets = [sign * (o.centroid[axis] - ref.centroid[axis]) for o in scene.objects]
        others = [d for i, d in enumerate(offsets) if i != ref_i]
        if all(abs(d) > margin for d in others) and max(others, default=0) > margin:
            text = _pick(rng, ("Which shapes are {r} the {x}?", "Find the shapes {r} the {x}."))
            return text.format(r=name, x=ref.phrase), [
                i for i, d in enumerate(offsets) if d > margin]
    return None


_ORDINALS = {1: "", 2: "two ", 3: "three "}


def ask_comparative(scene: Scene, rng: np.random.Generator) -> Draw:
    """The k largest / smallest shapes by visible area, for a (k, direction) with a clear cut."""
    n = len(scene.objects)
    for flat in rng.permutation(6):
        k, largest = int(flat) // 2 + 1, bool(flat % 2)
        if k >= n:
            continue
        order = sorted(range(n), key=lambda i: scene.objects[i].area, reverse=largest)
        inside, outside = scene.objects[order[k - 1]].area, scene.objects[order[k]].area
        if max(inside, outside) >= SIZE_RATIO * min(inside, outside):
            word = "largest" if largest else "smallest"
            if k == 1:
                text = _pick(rng, ("Which is the {w} shape?", "Find the {w} shape."))
            else:
                text = _pick(rng, ("What are the {n}{w} shapes?", "Find the {n}{w} shapes."))
            return text.format(w=word, n=_ORDINALS[k]), order[:k]
    return None


def ask_except(scene: Scene, rng: np.random.Generator) -> Draw:
    """Every shape but those of one colour or one shape."""
    if rng.random() < 0.5:
        c = _pick(rng, _present(scene, "colour"))
        text = _pick(rng, ("Everything except the {c} ones.", "Which shapes are not {c}?"))
        return text.format(c=c), _where(scene, lambda o: o.colour != c)
    s = _pick(rng, _present(scene, "shape"))
    text = _pick(rng, ("Find all shapes except the {p}.", "Everything except the {p}."))
    return text.format(p=PLURALS[s]), _where(scene, lambda o: o.shape != s)


def ask_all(scene: Scene, rng: np.random.Generator) -> Draw:
    """Every shape."""
    text = _pick(rng, ("Segment all the shapes.", "Find every shape in the image."))
    return text, list(range(len(scene.objects)))


def ask_absent(scene: Scene, rng: np.random.Generator) -> Draw:
    """A zero-target question: the same templates, about something the scene lacks."""
    colours = [c for c in COLOURS if c not in _present(scene, "colour")]
    shapes = [s for s in SHAPES if s not in _present(scene, "shape")]
    have = {(o.colour, o.shape) for o in scene.objects}
    pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in have]
    for kind in rng.permutation(3):
        if kind == 0 and colours:
            return _pick(rng, _COLOUR_Q).format(c=_pick(rng, colours)), []
        if kind == 1 and shapes:
            return _pick(rng, _SHAPE_Q).format(p=PLURALS[_pick(rng, shapes)]), []
        if kind == 2:
            c, s = _pick(rng, pairs)
            return _pick(rng, _PAIR_Q).format(c=c, s=s), []
    return None


FAMILIES: dict[str, Callable[[Scene, np.random.Generator], Draw]] = {
    "colour": ask_colour, "shape": ask_shape, "pair": ask_pair, "colour_or": ask_colour_or,
    "knowledge": ask_knowledge, "spatial": ask_spatial, "comparative": ask_comparative,
    "except": ask_except, "all": ask_all, "absent": ask_absent,
}
DEFAULT_WEIGHTS: dict[str, float] = {
    "colour": 0.10, "shape": 0.10, "pair": 0.04, "colour_or": 0.14, "knowledge": 0.12,
    "spatial": 0.15, "comparative": 0.05, "except": 0.12, "all": 0.10, "absent": 0.08,
}


def reading_order(scene: Scene, targets: list[int]) -> tuple[int, ...]:
    """Order targets as the answers list them: top to bottom by centroid y (then x, then index).

    Top to bottom follows the row-major order of the image tokens, so the LLM lists objects in
    the order it reads them (see the README for the measured effect against left to right).
    """
    return tuple(sorted(targets, key=lambda i: (scene.objects[i].centroid[1], scene.objects[i].centroid[0], i)))


def make_questions(scene: Scene, rng: np.random.Generator, count: int, *,
                   weights: Mapping[str, float] = DEFAULT_WEIGHTS,
                   max_tries: int = 50) -> list[Question]:
    """Draw up to ``count`` distinct questions (by text) about one scene.

    Args:
        scene: the scene (at least one object).
        rng: the random generator.
        count: number of questions wanted.
        weights: family name -> sampling weight.
        max_tries: draws allowed before giving up on more questions.

    Returns:
        the questions; targets in :func:`reading_order` and phrased "red circle".
    """
    names = list(weights)
    probs = np.array([weights[n] for n in names], dtype=np.float64)
    probs /= probs.sum()
    out: list[Question] = []
    seen: set[str] = set()
    for _ in range(max_tries):
        if len(out) == count:
            break
        family = names[int(rng.choice(len(names), p=probs))]
        drawn = FAMILIES[family](scene, rng)
        if drawn is None or drawn[0] in seen or (family != "absent" and not drawn[1]):
            continue  # non-"absent" families must have targets: zero-target rate stays set
        seen.add(drawn[0])
        targets = reading_order(scene, drawn[1])
        phrases = tuple(scene.objects[i].phrase for i in targets)
        out.append(Question(drawn[0], targets, phrases,
                            template_answer(phrases, empty=NO_SHAPE_ANSWER), family))
    return out


_EXTREMES = (("leftmost", 0, -1), ("rightmost", 0, 1), ("topmost", 1, -1), ("bottommost", 1, 1))


def referring_expressions(scene: Scene) -> list[list[str]]:
    """Expressions that name exactly one object, per object.

    Returns:
        for each object: ``"the red circle"`` always, plus ``"the red shape"`` / ``"the
        circle"`` when its colour / shape is unique, ``"the leftmost shape"`` (etc.) and
        ``"the largest shape"`` / ``"the smallest shape"`` when clearly so.
    """
    objs = scene.objects
    exprs = [[f"the {o.phrase}"] for o in objs]
    for i, o in enumerate(objs):
        if sum(x.colour == o.colour for x in objs) == 1:
            exprs[i].append(f"the {o.colour} shape")
        if sum(x.shape == o.shape for x in objs) == 1:
            exprs[i].append(f"the {o.shape}")
    if len(objs) < 2:
        return exprs
    margin = SPATIAL_MARGIN * scene.image.shape[0] / BASE_SIZE
    for name, axis, sign in _EXTREMES:
        order = sorted(range(len(objs)), key=lambda i: -sign * objs[i].centroid[axis])
        if sign * (objs[order[0]].centroid[axis] - objs[order[1]].centroid[axis]) > margin:
            exprs[order[0]].append(f"the {name} shape")
    by_area = sorted(range(len(objs)), key=lambda i: objs[i].area)
    if objs[by_area[-1]].area >= SIZE_RATIO * objs[by_area[-2]].area:
        exprs[by_area[-1]].append("the largest shape")
    if objs[by_area[1]].area >= SIZE_RATIO * objs[by_area[0]].area:
        exprs[by_area[0]].append("the smallest shape")
    return exprs


def multi_ref_question(scene: Scene, rng: np.random.Generator, group_size: int) -> Question:
    """Join unique expressions of distinct objects: "What are A, B and C in this image?".

    Args:
        scene: the scene (at least one object).
        rng: the random generator.
        group_size: wanted number of expressions (capped by the number of objects).

    Returns:
        a question whose targets follow the expressions' order (not the reading order).
    """
    exprs = referring_expressions(scene)
    k = min(group_size, len(scene.objects))
    targets = tuple(int(i) for i in rng.choice(len(scene.objects), size=k, replace=False))
    phrases = tuple(_pick(rng, exprs[i]) for i in targets)
    return Question(multi_question(phrases), targets, phrases, template_answer(phrases),
                    "multi_ref")
