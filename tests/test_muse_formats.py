"""MUSE, LVIS and refCOCO readers on small fixtures written in tmp dirs."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pixellm.muse import (
    DatasetFormatError,
    LvisInstances,
    MuseDataset,
    RefCocoDataset,
    multi_referring,
)
from pixellm.muse import masks as masklib

H, W = 10, 12


def rect(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# Hand-known masks: an axis-aligned polygon covers x in [x0, x1), y in [y0, y1).
POLY_MASK = rect(1, 4, 2, 6)
POLYGON = [[2, 1, 6, 1, 6, 4, 2, 4]]
RLE_MASK = rect(5, 9, 0, 3)
LIST_MASK = rect(6, 10, 8, 12)


def compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}


def uncompressed(mask: np.ndarray) -> dict:
    """Column-major run lengths, starting with a run of zeros (written by hand, not pycocotools)."""
    flat = mask.T.reshape(-1)
    counts, current, run = [], False, 0
    for v in flat:
        if bool(v) != current:
            counts.append(run)
            current, run = bool(v), 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def ann(ann_id, name, seg, bbox, rephrased=None) -> dict:
    out = {"id": ann_id, "category_id": ann_id, "category_name": name, "bbox": bbox,
           "segmentation": seg}
    if rephrased:
        out["rephrased_name"] = rephrased
    return out


def records() -> list[dict]:
    return [
        {  # file_name record with polygon + compressed RLE and explicit text answers
            "file_name": "COCO_train2014_000000000001.jpg", "id": 1, "height": H, "width": W,
            "ann_list": [ann(1, "red_cup", POLYGON, [2, 1, 4, 3]),
                         ann(2, "spoon", compressed(RLE_MASK), [0, 5, 3, 4], "silver spoon")],
            "questions": ["What holds soup?", "What stirs?", "Is there a dog?"],
            "answers": [[{"id": 1}, {"id": 2}], [{"id": 2}], []],
            "text_answers": ["The cup {seg} and the spoon {seg}.", "A spoon {seg}.", "No dog."],
        },
        {  # coco_url record (train2017 folder), plain-id answers, uncompressed RLE, templates
            "coco_url": "http://images.cocodataset.org/train2017/000000000002.jpg",
            "id": 2, "height": H, "width": W,
            "ann_list": [ann(5, "knife", uncompressed(LIST_MASK), [8, 6, 4, 4.5]),
                         ann(6, "fork", POLYGON, [2, 1, 4, 3])],
            "questions": ["Which cut?", "Which tools?"],
            "answers": [[5], [6, 5]],
        },
        {  # coco_url whose file lies directly under the image root
            "coco_url": "http://images.cocodataset.org/val2017/000000000003.jpg",
            "id": 3, "height": H, "width": W, "ann_list": [ann(7, "cup", POLYGON, [2, 1, 4, 3])],
            "questions": ["Find the cup."], "answers": [[7]], "text_answers": ["cup {seg}."],
            "target_phrases": [["the only cup"]],  # optional extension: phrases per target
        },
    ]


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    for rel in ("train2014/COCO_train2014_000000000001.jpg", "train2017/000000000002.jpg",
                "000000000003.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (W, H), (10, 20, 30)).save(root / rel)
    return root


def write(tmp_path, recs, name="muse.json"):
    path = tmp_path / name
    path.write_text(json.dumps(recs))
    return path


def test_reads_all_layouts_and_decodes_masks(tmp_path, image_root):
    ds = MuseDataset(write(tmp_path, records()), image_root)
    assert len(ds) == 6 and ds.num_images == 3 and not ds.skipped
    first = ds[0]
    assert first.image_path == image_root / "train2014" / "COCO_train2014_000000000001.jpg"
    assert first.answer == "The cup {seg} and the spoon {seg}."
    assert first.phrases == ("red cup", "silver spoon") and first.num_targets == 2
    assert first.target_ids == (1, 2) and first.image_id == 1
    np.testing.assert_array_equal(first.masks(), np.stack([POLY_MASK, RLE_MASK]))
    zero = ds[2]
    assert zero.num_targets == 0 and zero.masks().shape == (0, H, W) and zero.answer == "No dog."
    templated = ds[4]
    assert templated.image_path == image_root / "train2017" / "000000000002.jpg"
    assert templated.answer == "fork {seg} and knife {seg}."
    np.testing.assert_array_equal(templated.masks(), np.stack([POLY_MASK, LIST_MASK]))
    assert ds[3].answer == "knife {seg}."
    assert ds[5].image_path == image_root / "000000000003.jpg"
    assert ds[5].phrases == ("the only cup",)
    assert ds[5].load_image().shape == (H, W, 3)


def test_masks_are_decoded_on_access(tmp_path, image_root):
    recs = records()
    recs[0]["ann_list"][1]["segmentation"]["counts"] = "\x7f\x7f"  # corrupt, passes the cheap check
    ds = MuseDataset(write(tmp_path, recs), image_root)
    sample = ds[1]  # loading and indexing never decode
    with pytest.raises(DatasetFormatError) as info:
        sample.masks()
    assert info.value.reason == "bad_rle" and info.value.index == 0


def _set(path, value):
    def mutate(recs):
        target = recs
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return mutate


_DELETE = object()

MALFORMED = {
    "too_few_placeholders": (_set([0, "text_answers", 0], "cup {seg}."), 0, "placeholder_count"),
    "zero_target_with_placeholder": (_set([0, "text_answers", 2], "x {seg}."), 0,
                                     "placeholder_count"),
    "missing_image": (_set([1, "coco_url"], "http://x/train2017/nope.jpg"), 1, "missing_image"),
    "polygon_too_short": (_set([0, "ann_list", 0, "segmentation"], [[1, 1, 3, 1]]), 0,
                          "bad_polygon"),
    "polygon_odd_length": (_set([2, "ann_list", 0, "segmentation"], [[1, 1, 3, 1, 3, 3, 2]]),
                           2, "bad_polygon"),
    "unknown_instance": (_set([1, "answers", 1], [6, 99]), 1, "unknown_instance"),
    "bbox_out_of_bounds": (_set([1, "ann_list", 1, "bbox"], [8, 0, 10, 5]), 1,
                           "bbox_out_of_bounds"),
    "rle_wrong_sum": (_set([1, "ann_list", 0, "segmentation", "counts"], [3, 4]), 1, "bad_rle"),
    "rle_wrong_size": (_set([0, "ann_list", 1, "segmentation", "size"], [W, H]), 0, "bad_rle"),
    "phrase_count": (_set([2, "target_phrases", 0], ["a", "b"]), 2, "phrase_count"),
    "category_zero": (_set([1, "ann_list", 0, "category_id"], 0), 1, "bad_category"),
    "category_not_int": (_set([0, "ann_list", 1, "category_id"], "2"), 0, "bad_category"),
    "category_bool": (_set([2, "ann_list", 0, "category_id"], True), 2, "bad_category"),
    "missing_questions": (_set([2, "questions"], _DELETE), 2, "missing_field"),
    "missing_segmentation": (_set([0, "ann_list", 0, "segmentation"], _DELETE), 0,
                             "missing_field"),
    "missing_image_field": (_set([2, "coco_url"], _DELETE), 2, "missing_field"),
    # full answers are checked like ann_list entries
    "answer_unknown_without_segmentation": (
        _set([1, "answers", 0], [{"id": 99, "bbox": [0, 0, 1, 1]}]), 1, "unknown_instance"),
    "answer_own_bad_rle": (
        _set([0, "answers", 1], [ann(2, "spoon", {"size": [H, W], "counts": [3]}, [0, 5, 3, 4])]),
        0, "bad_rle"),
    "answer_outside_ann_list_lacks_bbox": (
        _set([1, "answers", 0], [{"id": 40, "category_id": 1, "category_name": "plate",
                                  "segmentation": POLYGON}]), 1, "missing_field"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_record_raises_with_location(tmp_path, image_root, case):
    mutate, index, reason = MALFORMED[case]
    recs = records()
    mutate(recs)
    path = write(tmp_path, recs)
    with pytest.raises(DatasetFormatError) as info:
        MuseDataset(path, image_root)
    err = info.value
    assert (err.file, err.index, err.reason) == (str(path), index, reason)
    assert str(err).startswith(f"{path}[record {index}]: ")


def test_bad_full_answer_names_its_question(tmp_path, image_root):
    recs = records()
    MALFORMED["answer_own_bad_rle"][0](recs)
    with pytest.raises(DatasetFormatError, match=r"\[record 0\]: question 1: answer 0 \(id 2\)"):
        MuseDataset(write(tmp_path, recs), image_root)


def full_answers(recs: list[dict]) -> list[dict]:
    """The official MUSE layout: every answer a full copy of its ann_list entry."""
    for r in recs:
        by_id = {a["id"]: a for a in r["ann_list"]}
        r["answers"] = [[dict(by_id[a["id"] if isinstance(a, dict) else a]) for a in qa]
                        for qa in r["answers"]]
    return recs


def test_full_answers_read_like_references(tmp_path, image_root):
    full = full_answers(records())
    assert full[0]["answers"][0][1]["segmentation"] == compressed(RLE_MASK)
    assert full[1]["answers"][0][0]["segmentation"] == uncompressed(LIST_MASK)
    refs = MuseDataset(write(tmp_path, records(), "refs.json"), image_root)
    copies = MuseDataset(write(tmp_path, full, "full.json"), image_root)
    assert len(refs) == len(copies) == 6
    for a, b in zip(refs, copies, strict=True):
        assert (a.answer, a.phrases, a.target_ids) == (b.answer, b.phrases, b.target_ids)
        np.testing.assert_array_equal(a.masks(), b.masks())


def test_full_answer_outside_ann_list_is_its_own_instance(tmp_path, image_root):
    recs = records()
    recs[1]["answers"][0] = [ann(40, "plate", uncompressed(RLE_MASK), [0, 5, 3, 4], "white plate")]
    sample = MuseDataset(write(tmp_path, recs), image_root)[3]
    assert (sample.target_ids, sample.phrases, sample.answer) == ((40,), ("white plate",),
                                                                  "white plate {seg}.")
    np.testing.assert_array_equal(sample.masks(), RLE_MASK[None])


def test_full_answer_fields_win_over_ann_list(tmp_path, image_root):
    recs = records()
    own = {**recs[1]["ann_list"][1], "segmentation": uncompressed(RLE_MASK),
           "bbox": [0, 5, 3, 4], "rephrased_name": "bent fork"}
    recs[1]["answers"] = [[6], [own, 5]]  # id 6 once as a reference, once with its own mask
    ds = MuseDataset(write(tmp_path, recs), image_root)
    np.testing.assert_array_equal(ds[3].masks(), POLY_MASK[None])  # the ann_list entry
    assert ds[4].phrases == ("bent fork", "knife") and ds[4].target_ids == (6, 5)
    np.testing.assert_array_equal(ds[4].masks(), np.stack([RLE_MASK, LIST_MASK]))


@pytest.mark.parametrize("form", ["polygon", "uncompressed", "compressed_str", "compressed_bytes"])
def test_masks_decode_every_segmentation_form(form):
    rle = compressed(RLE_MASK)
    seg = {"polygon": POLYGON, "uncompressed": uncompressed(RLE_MASK), "compressed_str": rle,
           "compressed_bytes": {**rle, "counts": rle["counts"].encode("ascii")}}[form]
    expected = POLY_MASK if form == "polygon" else RLE_MASK
    assert masklib.check_segmentation(seg, H, W) is None
    np.testing.assert_array_equal(masklib.decode(seg, H, W), expected)
    np.testing.assert_array_equal(masklib.decode_checked("f", 0, [seg, seg], H, W),
                                  np.stack([expected, expected]))


def test_bbox_within_one_pixel_is_accepted(tmp_path, image_root):
    recs = records()
    recs[0]["ann_list"][0]["bbox"] = [-0.5, 0, W + 0.5, H + 1]
    assert len(MuseDataset(write(tmp_path, recs), image_root)) == 6


def test_lenient_mode_skips_and_counts(tmp_path, image_root):
    recs = records()
    for case in ("too_few_placeholders", "missing_image", "polygon_odd_length"):
        MALFORMED[case][0](recs)
    with pytest.warns(UserWarning, match="skipped 2 record"):
        ds = MuseDataset(write(tmp_path, recs), image_root, strict=False)
    # Record 0 keeps its two good questions; records 1 and 2 are dropped.
    assert len(ds) == 2 and [s.question_index for s in ds] == [1, 2]
    assert ds.skipped == {"placeholder_count": 1, "missing_image": 1, "bad_polygon": 1}
    report = ds.report()
    assert "1 question(s)" in report and "missing_image: 1" in report


def test_not_a_list_is_a_file_level_error(tmp_path, image_root):
    with pytest.raises(DatasetFormatError) as info:
        MuseDataset(write(tmp_path, {"images": []}), image_root)
    assert info.value.index is None and info.value.reason == "bad_json"


def test_lvis_instances(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W,
                    "not_exhaustive_category_ids": [2], "neg_category_ids": [3]},
                   {"id": 2, "file_name": "b.jpg", "height": H, "width": W}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": POLYGON,
             "area": 12.0, "bbox": [2, 1, 4, 3]},
            {"id": 11, "image_id": 1, "category_id": 2, "segmentation": compressed(RLE_MASK),
             "area": 12.0, "bbox": [0, 5, 3, 4]},
            {"id": 12, "image_id": 2, "category_id": 1, "segmentation": uncompressed(LIST_MASK),
             "area": 16.0, "bbox": [8, 6, 4, 4]},
        ],
        "categories": [{"id": i, "name": n, "frequency": f, "synonyms": [n]}
                       for i, n, f in ((1, "cup", "f"), (2, "spoon", "c"), (3, "dog", "r"))],
    }
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(data))
    lvis = LvisInstances(path)
    assert lvis.image_ids == [1, 2] and len(lvis) == 3
    assert [a["id"] for a in lvis.annotations(1)] == [10, 11]
    np.testing.assert_array_equal(lvis.mask(10), POLY_MASK)
    np.testing.assert_array_equal(lvis.mask(11), RLE_MASK)
    np.testing.assert_array_equal(lvis.mask(12), LIST_MASK)
    assert lvis.frequency(3) == "r" and lvis.categories[2]["name"] == "spoon"
    assert lvis.not_exhaustive_category_ids(1) == [2] and lvis.neg_category_ids(1) == [3]
    assert lvis.neg_category_ids(2) == []
    with pytest.raises(KeyError, match="99"):
        lvis.mask(99)


def refcoco_root(tmp_path):
    """Official refer layout: refs(unc).p + instances.json + images/."""
    root = tmp_path / "refer"
    (root / "refcoco").mkdir(parents=True)
    (root / "images").mkdir()
    images = [{"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": H, "width": W}
              for i in (1, 2)]
    for im in images:
        Image.new("RGB", (W, H)).save(root / "images" / im["file_name"])
    segs = {100: POLYGON, 101: compressed(RLE_MASK), 102: uncompressed(LIST_MASK), 200: POLYGON}
    anns = [{"id": a, "image_id": a // 100, "category_id": 1, "segmentation": s, "area": 1.0,
             "bbox": [0, 0, 1, 1], "iscrowd": 0} for a, s in segs.items()]
    (root / "refcoco" / "instances.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))

    def ref(ref_id, ann_id, split, *sents):
        return {"ref_id": ref_id, "ann_id": ann_id, "image_id": ann_id // 100, "split": split,
                "sentences": [{"sent": s} for s in sents]}

    refs = [ref(0, 100, "val", "left cup", "red cup"), ref(1, 101, "val", "spoon"),
            ref(2, 102, "val", "knife on right", "blade", "sharp thing"),
            ref(3, 200, "val", "other cup"), ref(4, 101, "train", "train only")]
    with open(root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    return root


def test_refcoco_single_targets(tmp_path):
    ds = RefCocoDataset(refcoco_root(tmp_path), split="val")
    assert len(ds) == 7  # one sample per sentence of the val refs
    first = ds[0]
    assert (first.question, first.answer, first.phrases) == ("left cup", "left cup {seg}.",
                                                              ("left cup",))
    assert first.image_path.name == "COCO_train2014_000000000001.jpg"
    np.testing.assert_array_equal(first.masks(), POLY_MASK[None])
    np.testing.assert_array_equal(ds[3].masks(), LIST_MASK[None])
    assert RefCocoDataset(refcoco_root(tmp_path / "t"), split="train")[0].target_ids == (101,)


def test_refcoco_bad_ref_is_located(tmp_path):
    root = refcoco_root(tmp_path)
    with open(root / "refcoco" / "refs(unc).p", "rb") as f:
        refs = pickle.load(f)
    refs[1]["ann_id"] = 999
    with open(root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    with pytest.raises(DatasetFormatError) as info:
        RefCocoDataset(root)
    assert (info.value.index, info.value.reason) == (1, "unknown_instance")
    with pytest.warns(UserWarning):
        lenient = RefCocoDataset(root, strict=False)
    assert len(lenient) == 6 and lenient.skipped == {"unknown_instance": 1}


def test_multi_referring_groups_in_order(tmp_path):
    ds = RefCocoDataset(refcoco_root(tmp_path))
    samples = multi_referring(ds, group_sizes=(2, 1))
    got = [(s.question, s.target_ids) for s in samples]
    assert got == [
        # image 1, round 0: refs 0, 1, 2 cut into groups of 2 then 1
        ("What are left cup and spoon in this image?", (100, 101)),
        ("What is knife on right in this image?", (102,)),
        # round 1: the refs with a second sentence
        ("What are red cup and blade in this image?", (100, 102)),
        ("What is sharp thing in this image?", (102,)),
        ("What is other cup in this image?", (200,)),  # image 2: size 2, cut short
    ]
    assert samples[0].answer == "left cup {seg} and spoon {seg}."
    np.testing.assert_array_equal(samples[2].masks(), np.stack([POLY_MASK, LIST_MASK]))
