"""What each named data source looks like on disk: the text an error shows when a source's
files are missing (training's ``--mix`` sources and the benchmark's, one table for both)."""

LAYOUTS = {
    "shapes": "DIR/muse_<split>.json + DIR/images/ (made by `pixellm-data --out DIR`, or `make data`)",
    "muse": "DIR/muse_<split>.json (official MUSE JSON: file_name or coco_url, ann_list, questions, "
            "answers) + DIR/images/ (COCO train2014/ or train2017/ files)",
    "refcoco": "DIR/<dataset>/refs(<split_by>).p + DIR/<dataset>/instances.json + DIR/images/ "
               "(COCO train2014 files; training reads refcoco/refs(unc).p)",
    "multiref": "the refcoco layout; the expressions of one image are joined into one question",
}
