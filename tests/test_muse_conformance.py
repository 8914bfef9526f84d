"""Generated MUSE files parse the way the official PixelLM loaders parse MUSE (docs/design.md,
Data formats), and the segmentation encoder gives back every mask pixel for pixel."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from scipy import ndimage

from pixellm.muse import GenConfig, generate_dataset, load_split, render_example
from pixellm.muse import masks as masklib
from pixellm.muse.scene import render_scene
from pixellm.muse.shapes import COLOURS, SHAPES, shape_mask

CONFIG = GenConfig(seed=5, train=3, val=3, test=4, image_size=64)
OFFSETS = {"train": 0, "val": CONFIG.train, "test": CONFIG.train + CONFIG.val}
SPLITS = ("train", "val", "test_less", "test_many", "multi_ref")
SEG = "{seg}"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("conformance")
    generate_dataset(CONFIG, out, workers=1)
    return out


def records(root, split):
    return json.loads((root / f"muse_{split}.json").read_text())


def official_mask(segmentation, height, width) -> np.ndarray:
    """The official loaders' decode step: frPyObjects, decode, sum the polygon parts.

    Returns:
        uint8 (H, W); a pixel covered by two parts would read 2.
    """
    m = mask_utils.decode(mask_utils.frPyObjects(segmentation, height, width))
    return m.sum(axis=2).astype(np.uint8) if m.ndim > 2 else m.astype(np.uint8)


def tight_box(mask: np.ndarray) -> list[float]:
    """[x, y, w, h] of the pixels of an (H, W) bool mask."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def official_parse(record: dict) -> np.ndarray:
    """The official train/val parse of one record (our re-implementation of its steps).

    Returns:
        uint8 (K, H, W): every target mask of the record, questions in order.
    """
    h, w = record["height"], record["width"]
    masks = []
    for q, answers in enumerate(record["answers"]):
        assert record["text_answers"][q].count(SEG) == len(answers)
        for answer in answers:
            x, y, bw, bh = answer["bbox"]  # the val loader turns it into [x0, y0, x1, y1]
            assert x + bw <= w and y + bh <= h and isinstance(answer["rephrased_name"], str)
            masks.append(official_mask(answer["segmentation"], h, w))
    for ann in record["ann_list"]:  # the val prompt lists every instance with its box
        assert len(ann["bbox"]) == 4 and isinstance(ann["category_name"], str)
    assert masks, f"record {record['id']}: no question has a target (np.stack would crash)"
    return np.stack(masks)


@pytest.mark.parametrize("split", SPLITS)
def test_official_parse_steps(dataset, split):
    recs = records(dataset, split)
    assert recs
    for record in recs:
        stacked = official_parse(record)
        assert stacked.shape[1:] == (record["height"], record["width"])
        assert stacked.max() == 1  # polygon parts never overlap: summing them is a union
        answers = [a for qa in record["answers"] for a in qa]
        for answer, mask in zip(answers, stacked, strict=True):
            assert answer["bbox"] == tight_box(mask) and answer["area"] == mask.sum()
        assert (dataset / "images" / record["file_name"]).is_file()


def test_answers_are_copies_of_ann_list_and_match_the_rendered_masks(dataset):
    checked = 0
    for split in SPLITS:
        for record in records(dataset, split):
            h, w = record["height"], record["width"]
            by_id = {a["id"]: a for a in record["ann_list"]}
            source, index = record["file_name"].split("/")[0], record["id"]
            scene = render_example(CONFIG, source, index - OFFSETS[source] - 1)[0]
            for ann in record["ann_list"]:
                obj = scene.objects[ann["id"] % 100]
                np.testing.assert_array_equal(official_mask(ann["segmentation"], h, w), obj.mask)
                np.testing.assert_array_equal(masklib.decode(ann["segmentation"], h, w), obj.mask)
            for answer in (a for qa in record["answers"] for a in qa):
                assert answer == by_id[answer["id"]]
                checked += 1
    assert checked > 30


def test_both_segmentation_forms_are_written(dataset):
    segs = [a["segmentation"] for r in records(dataset, "val") for a in r["ann_list"]]
    polygons = [s for s in segs if isinstance(s, list)]
    rles = [s for s in segs if isinstance(s, dict)]
    assert all(isinstance(s["counts"], list) for s in rles)  # never compressed strings
    assert len(polygons) > 0.6 * len(segs) and rles  # rings keep their hole as RLE


def old_format(recs: list[dict]) -> list[dict]:
    """What the previous writer produced: compressed-RLE strings, answers as references."""
    for r in recs:
        for a in r["ann_list"]:
            a["segmentation"] = masklib.encode(masklib.decode(a["segmentation"], r["height"],
                                                              r["width"]))
        r["answers"] = [[{k: a[k] for k in ("id", "category_id", "category_name")} for a in qa]
                        for qa in r["answers"]]
    return recs


def test_reader_gives_the_same_samples_for_old_files(dataset, tmp_path):
    (tmp_path / "images").symlink_to(dataset / "images")
    (tmp_path / "muse_val.json").write_text(json.dumps(old_format(records(dataset, "val"))))
    new, old = load_split(dataset, "val"), load_split(tmp_path, "val")
    assert len(new) == len(old) > 0
    for a, b in zip(new, old, strict=True):
        assert (a.answer, a.phrases, a.target_ids) == (b.answer, b.phrases, b.target_ids)
        np.testing.assert_array_equal(a.masks(), b.masks())


def round_trip(mask: np.ndarray):
    """Encode, check the official decode and ours give the mask back; return the encoding."""
    seg = masklib.encode_exact(mask)
    h, w = mask.shape
    np.testing.assert_array_equal(official_mask(seg, h, w), mask)
    np.testing.assert_array_equal(masklib.decode(seg, h, w), mask)
    assert masklib.check_segmentation(seg, h, w) is None
    json.dumps(seg)  # JSON-ready
    return seg


def test_encoder_polygon_of_a_rectangle_is_its_pixel_corners():
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:4, 2:6] = True
    assert round_trip(mask) == [[2, 1, 6, 1, 6, 4, 2, 4]]


def test_encoder_falls_back_to_uncompressed_rle_for_a_ring():
    ring = shape_mask("ring", 16.0, 16.0, 10.0, 0.0, 32)
    assert (ndimage.binary_fill_holes(ring) != ring).any()  # it really has a hole
    seg = round_trip(ring)
    assert isinstance(seg, dict) and seg["size"] == [32, 32]
    assert isinstance(seg["counts"], list) and sum(seg["counts"]) == 32 * 32


def test_encoder_uncompressed_counts_by_hand():
    mask = np.array([[1, 0, 0], [1, 0, 1]], dtype=bool)  # column-major: 1 1 0 0 0 1
    assert masklib.encode_uncompressed(mask) == {"size": [2, 3], "counts": [0, 2, 3, 1]}
    assert masklib.encode_uncompressed(~mask)["counts"] == [2, 3, 1]
    empty = round_trip(np.zeros((4, 5), dtype=bool))
    assert empty == {"size": [4, 5], "counts": [20]}


def test_encoder_occluded_split_and_concave_masks():
    star = shape_mask("star", 20.0, 20.0, 14.0, 0.3, 40)  # concave
    parts = ndimage.label(star)[1]  # thin tips may hang on by a pixel corner only
    assert len(round_trip(star)) == parts  # one polygon per 4-connected part
    bar = np.zeros_like(star)
    bar[:, 18:22] = True  # an occluder on top cuts the star's body in two
    split = star & ~bar
    assert ndimage.label(split)[1] == parts + 1
    seg = round_trip(split)
    assert isinstance(seg, list) and len(seg) == parts + 1
    touching = np.zeros((5, 5), dtype=bool)
    touching[1, 1] = touching[2, 2] = touching[3, 1] = True  # parts meet at pixel corners
    assert len(round_trip(touching)) == 3


def test_encoder_round_trips_rendered_scenes():
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    kinds = {"polygons": 0, "rle": 0}
    for i in range(12):
        rng = np.random.default_rng([11, i])
        scene = render_scene(rng, size=64, pairs=pairs, num_objects=12)
        for obj in scene.objects:
            seg = round_trip(obj.mask)
            kinds["polygons" if isinstance(seg, list) else "rle"] += 1
    assert kinds["polygons"] > 3 * kinds["rle"] > 0
