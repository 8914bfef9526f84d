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
# A question family whose natural target set is larger than this fraction of the scene is
# narrowed by a colour ("which red shapes ..."), so that guessing many objects does not pay.
MAX_TARGET_FRACTION = 0.4


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


def _narrow(scene: Scene, rng: np.random.Generator, targets: list[int],
            always: bool = False) -> tuple[str | None, list[int]]:
    """Restrict a large target set to one colour present in it.

    Returns:
        (the colour, or None when the set was kept, the targets). The set is narrowed when
        ``always`` or when it holds more than :data:`MAX_TARGET_FRACTION` of the objects.
    """
    if not targets or not (always or len(targets) > MAX_TARGET_FRACTION * len(scene.objects)):
        return None, targets
    c = _pick(rng, sorted({scene.objects[i].colour for i in targets}))
    return c, [i for i in targets if scene.objects[i].colour == c]


def ask_knowledge(scene: Scene, rng: np.random.Generator) -> Draw:
    """A property of the shape category, restricted to a colour when it holds many shapes."""
    prop, pred = _pick(rng, _KNOWLEDGE)
    c, targets = _narrow(scene, rng, _where(scene, lambda o: pred(o.shape)),
                         always=rng.random() < 0.2)
    return (f"Which {c} shapes {prop}?" if c else f"Which shapes {prop}?"), targets


_RELATIONS = {  # name -> (axis, sign): target when sign * (target - reference) > margin
    "left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1),
}


def ask_spatial(scene: Scene, rng: np.random.Generator) -> Draw:
    """Shapes on one side of a reference object, by centroid with a clear margin; restricted
    to one colour when many shapes lie on that side.

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
            c, targets = _narrow(scene, rng, [i for i, d in enumerate(offsets) if d > margin])
            what = f"{c} shapes" if c else "shapes"
            text = _pick(rng, ("Which {w} are {r} the {x}?", "Find the {w} {r} the {x}."))
            return text.format(w=what, r=name, x=ref.phrase), targets
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
    """The shapes of one colour but one shape, or of one shape but one colour."""
    o = _pick(rng, scene.objects)
    if rng.random() < 0.5:
        text = _pick(rng, ("Which {c} shapes are not {p}?", "Find the {c} shapes except the {p}."))
        return (text.format(c=o.colour, p=PLURALS[o.shape]),
                _where(scene, lambda x: x.colour == o.colour and x.shape != o.shape))
    text = _pick(rng, ("Which {p} are not {c}?", "Find all the {p} except the {c} one."))
    return (text.format(c=o.colour, p=PLURALS[o.shape]),
            _where(scene, lambda x: x.shape == o.shape and x.colour != o.colour))


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


REFERRING_SIZES = (1, 2, 3, 4, 5, 6)  # expressions joined in one referring question ...
REFERRING_PROBS = (0.3, 0.15, 0.15, 0.15, 0.125, 0.125)  # ... drawn with these probabilities


def ask_referring(scene: Scene, rng: np.random.Generator) -> Question:
    """Referring data: 1 to 6 unique expressions joined as the multi-referring split asks them.

    Returns:
        a :class:`Question` whose targets follow the expressions' order and whose phrases are
        the expressions themselves (``"the leftmost shape {seg}"``), as in ``multi_ref``.
    """
    size = int(rng.choice(REFERRING_SIZES, p=REFERRING_PROBS))
    return multi_ref_question(scene, rng, size, family="referring")


FAMILIES: dict[str, Callable[[Scene, np.random.Generator], Draw]] = {
    "colour": ask_colour, "shape": ask_shape, "pair": ask_pair, "colour_or": ask_colour_or,
    "knowledge": ask_knowledge, "spatial": ask_spatial, "comparative": ask_comparative,
    "except": ask_except, "absent": ask_absent,
}
# "referring" draws a whole Question (its order is the expressions', not the reading order).
DEFAULT_WEIGHTS: dict[str, float] = {
    "colour": 0.11, "shape": 0.11, "pair": 0.04, "colour_or": 0.14, "knowledge": 0.12,
    "spatial": 0.12, "comparative": 0.05, "except": 0.06, "absent": 0.10, "referring": 0.15,
}


def reading_order(scene: Scene, targets: list[int]) -> tuple[int, ...]:
    """Order targets as the answers list them: top to bottom by centroid y (then x, then index).

    Top to bottom follows the row-major order of the image tokens, so the LLM lists objects in
    the order it reads them (see the README for the measured effect against left to right).
    """
    return tuple(sorted(targets, key=lambda i: (scene.objects[i].centroid[1], scene.objects[i].centroid[0], i)))


def _stackable(questions: list[Question], cap: int | None) -> bool:
    """Whether a zero-target question, if any, has a companion with 1 to ``cap`` (None: any
    number of) targets."""
    return (all(q.targets for q in questions)
            or any(q.targets and (cap is None or len(q.targets) <= cap) for q in questions))


def make_questions(scene: Scene, rng: np.random.Generator, count: int, *,
                   weights: Mapping[str, float] = DEFAULT_WEIGHTS,
                   max_tries: int = 50, companion_cap: int | None = None) -> list[Question]:
    """Draw up to ``count`` distinct questions (by text) about one scene.

    A zero-target question always has a companion question with 1 to ``companion_cap`` (None:
    any number of) targets: the official MUSE loader stacks every target mask of a record and cannot stack
    none, and a test image's questions are split by count (``companion_cap`` = the test_less
    cap), so each part must hold a target. The last draw is refused when it would break this;
    if the draws run out first, the zero-target questions are left out.

    Args:
        scene: the scene (at least one object).
        rng: the random generator.
        count: number of questions wanted.
        weights: family name -> sampling weight (names of :data:`FAMILIES` or "referring").
        max_tries: draws allowed before giving up on more questions.

    Returns:
        the questions; targets in :func:`reading_order` and phrased "red circle", except the
        referring ones (expression order, phrased as the expressions).
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
        if family == "referring":
            question = ask_referring(scene, rng)
        else:
            drawn = FAMILIES[family](scene, rng)
            if drawn is None or (family != "absent" and not drawn[1]):
                continue  # non-"absent" families must have targets: zero-target rate stays set
            targets = reading_order(scene, drawn[1])
            phrases = tuple(scene.objects[i].phrase for i in targets)
            question = Question(drawn[0], targets, phrases,
                                template_answer(phrases, empty=NO_SHAPE_ANSWER), family)
        last = len(out) == count - 1
        if question.text in seen or (last and not _stackable([*out, question], companion_cap)):
            continue
        seen.add(question.text)
        out.append(question)
    return out if _stackable(out, companion_cap) else [q for q in out if q.targets]


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


def multi_ref_question(scene: Scene, rng: np.random.Generator, group_size: int, *,
                       family: str = "multi_ref") -> Question:
    """Join unique expressions of distinct objects: "What are A, B and C in this image?".

    Args:
        scene: the scene (at least one object).
        rng: the random generator.
        group_size: wanted number of expressions (capped by the number of objects).
        family: the family name the question carries.

    Returns:
        a question whose targets follow the expressions' order (not the reading order) and
        whose answer names each target by its expression: ``"the leftmost shape {seg} and
        the red ring {seg}."``.
    """
    exprs = referring_expressions(scene)
    k = min(group_size, len(scene.objects))
    targets = tuple(int(i) for i in rng.choice(len(scene.objects), size=k, replace=False))
    phrases = tuple(_pick(rng, exprs[i]) for i in targets)
    return Question(multi_question(phrases), targets, phrases, template_answer(phrases), family)
