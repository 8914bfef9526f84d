"""``pixellm-demo --checkpoint DIR [--checkpoint DIR2 ...] [--describer DIR]``: a web demo.

Upload an image, ask a question, and see the answer, the image with one coloured mask per
target (:func:`pixellm.overlay.draw_overlay`), a legend (per target: its number, colour,
phrase, score and, with a describer, its caption) and a downloadable ``prediction.json``
(the fields of ``pixellm-predict``'s, with a COCO RLE per target).

The conversation is multi-turn in the page only: every turn is answered by
``predictor.predict(image, question)``, which answers one question at a time (the models take
no earlier turns as context), and the earlier turns stay visible above it. A new image
starts a new conversation. With several checkpoints, a selector picks the model that answers
(keyed by each checkpoint config's ``name``, e.g. ``pixellm-tiny``). Bad input (no image, an
empty question, a corrupt image) shows the :class:`~pixellm.errors.InputError`'s message on
the page, never a traceback.

Needs ``gradio`` (``pip install -e '.[dev]'``).
"""
from __future__ import annotations

import argparse
import atexit
import html
import json
import logging
import shutil
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError, ConfigError, InputError

log = logging.getLogger(__name__)

# Stable hooks for browser tests and styling.
ANSWER_ID, LEGEND_ID, ERROR_ID, OVERLAY_ID = "answer", "legend", "error", "overlay"
IMAGE_ID, QUESTION_ID, ASK_ID, CLEAR_ID = "image-input", "question", "ask", "clear"
FAMILY_ID, HISTORY_ID, JSON_ID = "family", "history", "prediction-json"
LEGEND_ENTRY_CLASS = "target-legend-entry"

_LEGEND_CSS = """
.target-legend { display: flex; flex-direction: column; gap: 4px; }
.target-legend-entry { display: flex; align-items: center; gap: 8px; padding: 2px 0; }
.target-legend-entry .swatch { width: 14px; height: 14px; border-radius: 3px; flex: none;
  border: 1px solid rgba(0, 0, 0, 0.5); }
.target-legend-entry .score, .target-legend-entry .caption { opacity: 0.75; }
.target-legend-empty { opacity: 0.7; font-style: italic; }
"""


@dataclass
class LegendEntry:
    """One target's row in the legend: ``number`` (1-based, as on the overlay), ``colour``
    (its mask's RGB), ``phrase``, ``score`` and ``caption`` (None without a description)."""

    number: int
    colour: tuple[int, int, int]
    phrase: str
    score: float
    caption: str | None = None

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.colour)


@dataclass
class Rendered:
    """What the page shows of one prediction: ``overlay`` (RGB PIL image), ``entries``
    (one :class:`LegendEntry` per target) and ``legend_html``."""

    overlay: Any
    entries: list[LegendEntry]
    legend_html: str


def legend_entries(prediction) -> list[LegendEntry]:
    """One :class:`LegendEntry` per kept target of ``prediction``, in answer order, coloured
    as :func:`pixellm.overlay.draw_overlay` colours their masks."""
    from .overlay import palette

    colours = palette(len(prediction.targets))
    return [LegendEntry(i + 1, c, t.phrase, float(t.score),
                        t.description.caption if getattr(t, "description", None) is not None else None)
            for i, (t, c) in enumerate(zip(prediction.targets, colours))]


def legend_html(entries: Sequence[LegendEntry]) -> str:
    """The legend as HTML: one ``div.target-legend-entry`` per entry (with ``data-target``,
    its number), text escaped."""
    if not entries:
        return '<div class="target-legend"><div class="target-legend-empty">no target segmented</div></div>'
    rows = []
    for e in entries:
        caption = "" if e.caption is None else f' <span class="caption">— {html.escape(e.caption)}</span>'
        rows.append(
            f'<div class="{LEGEND_ENTRY_CLASS}" data-target="{e.number}" data-colour="{e.hex}">'
            f'<span class="swatch" style="background:{e.hex}"></span>'
            f'<span class="number"><b>{e.number}</b></span>'
            f'<span class="phrase">{html.escape(e.phrase) or "<i>(no phrase)</i>"}</span>'
            f'<span class="score">score {e.score:.2f}</span>{caption}</div>')
    return '<div class="target-legend">' + "".join(rows) + "</div>"


def render_prediction(rgb: np.ndarray, prediction) -> Rendered:
    """The overlay (targets' masks in their colours, labelled ``"N: phrase"``, or ``"N"`` for an
    empty phrase) and the legend
    of ``prediction`` for the (H, W, 3) uint8 image it was asked about."""
    from .overlay import draw_overlay

    targets = prediction.targets
    labels = [f"{i + 1}: {t.phrase}" if t.phrase.strip() else str(i + 1) for i, t in enumerate(targets)]
    overlay = draw_overlay(rgb, [t.mask for t in targets], labels)
    entries = legend_entries(prediction)
    return Rendered(overlay, entries, legend_html(entries))


def prediction_record(prediction, *, image: str, question: str, model: str | None = None) -> dict:
    """``prediction`` as ``pixellm-predict`` writes it to ``prediction.json`` (per target: phrase,
    answer index, score, XYXY box, COCO RLE and any description), plus the model's name."""
    from .cli import _target_json

    record = {"image": image, "question": question, "answer": prediction.answer,
              "targets": [_target_json(t) for t in prediction.targets],
              "duplicates": [_target_json(t) for t in prediction.duplicates],
              "rejected": [_target_json(t) for t in prediction.rejected],
              "malformed_blocks": list(prediction.malformed)}
    if model is not None:
        record["model"] = model
    return record


def error_html(message: str) -> str:
    return f'<div class="pixellm-error" role="alert">⚠ {html.escape(message)}</div>'


def answer_html(answer: str) -> str:
    return f'<p class="answer-text">{html.escape(answer) or "<i>(empty answer)</i>"}</p>'


def _describes(predictor) -> bool:
    return getattr(predictor, "describer", None) is not None


class Session:
    """The demo's logic without the page: answers a turn, or says what went wrong.

    Args:
        predictors: model name -> predictor (``predict(image, question, *, describe=False)``).
        workdir: where each turn's ``prediction.json`` and ``overlay.png`` are written.
    """

    def __init__(self, predictors: Mapping[str, Any], workdir: Path) -> None:
        self.predictors = dict(predictors)
        self.workdir = Path(workdir)

    def answer(self, model: str | None, image_path: str | None, question: str | None):
        """(prediction, rendered, json path, overlay path) of one turn.

        Raises:
            InputError: no image, an empty question, a corrupt image (the predictor's), an
                unknown model. CheckpointError: the predictor's.
        """
        from .image_io import load_image

        if not image_path:
            raise InputError("no image: upload an image first")
        question = question if isinstance(question, str) else ""  # the predictor checks it
        name = model if model is not None else next(iter(self.predictors))
        if name not in self.predictors:
            raise InputError(f"unknown model {name!r}; choose one of {', '.join(self.predictors)}")
        predictor = self.predictors[name]
        rgb = load_image(image_path)  # InputError for a corrupt or zero-size image
        prediction = predictor.predict(rgb, question, describe=_describes(predictor))
        rendered = render_prediction(rgb, prediction)
        turn = self.workdir / uuid.uuid4().hex
        turn.mkdir(parents=True)
        record = prediction_record(prediction, image=Path(image_path).name, question=question.strip(), model=name)
        (turn / "prediction.json").write_text(json.dumps(record, indent=2))
        rendered.overlay.save(turn / "overlay.png")
        return prediction, rendered, turn / "prediction.json", turn / "overlay.png"


def build_app(predictors: Mapping[str, Any], describer=None):
    """The demo page.

    Args:
        predictors: model name (its config's ``name``, e.g. ``"pixellm-tiny"``) -> predictor of
            any segmenting family (``load_predictor(dir)``); with more than one, a dropdown
            (``#family``) picks the one that answers.
        describer: a DynRefer predictor (or checkpoint directory) attached to the predictors
            that have none; a predictor with a describer describes every target (``predict(...,
            describe=True)``) and the legend shows the captions.
    Returns:
        ``gradio.Blocks``; launch it with ``app.launch(server_name=..., server_port=...)``.
        Element ids: ``#image-input``, ``#question``, ``#ask``, ``#clear``, ``#family``,
        ``#history`` (the conversation), ``#answer``, ``#overlay``, ``#legend`` (one
        ``.target-legend-entry`` per target), ``#prediction-json`` and ``#error``.

    The models answer one question at a time: each turn calls ``predictor.predict(image,
    question)`` alone; the conversation keeps the earlier turns on the page, and a new image
    starts a new one.
    """
    import gradio as gr

    if not predictors:
        raise ValueError("build_app needs at least one predictor")
    if describer is not None:
        for p in predictors.values():
            if hasattr(p, "attach_describer") and not _describes(p):
                p.attach_describer(describer)
    names = list(predictors)
    workdir = Path(tempfile.mkdtemp(prefix="pixellm-demo-"))  # each turn's JSON and overlay
    atexit.register(shutil.rmtree, workdir, True)
    session = Session(predictors, workdir)

    def ask(model, image_path, question, history):
        history = list(history or [])
        try:
            pred, rendered, json_path, png_path = session.answer(model, image_path, question)
        except (InputError, CheckpointError) as e:
            return (gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                    gr.HTML(value=error_html(str(e)), visible=True))
        except Exception as e:  # noqa: BLE001 - never a traceback on the page; the log has it
            log.exception("pixellm-demo: the prediction failed")
            return (gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                    gr.HTML(value=error_html(f"the prediction failed ({type(e).__name__}: {e})"), visible=True))
        who = f"**{model}**: " if len(names) > 1 else ""
        n = len(pred.targets)
        summary = f" ({n} target{'s' if n != 1 else ''})"
        history += [{"role": "user", "content": question.strip()},
                    {"role": "assistant", "content": who + (pred.answer or "(empty answer)") + summary},
                    {"role": "assistant", "content": {"path": str(png_path), "mime_type": "image/png"}}]
        return (history, history, answer_html(pred.answer), rendered.overlay, rendered.legend_html,
                str(json_path), "", gr.HTML(value="", visible=False))

    def reset():
        return [], [], "", None, "", None, gr.HTML(value="", visible=False)

    with gr.Blocks(title="PixelLM demo", analytics_enabled=False) as app:
        gr.Markdown("## PixelLM: ask about an image, get one mask per target\n"
                    "Upload an image and ask a question. Each question is answered on its own "
                    "(the model sees the image and that question only); earlier turns stay below. "
                    "A new image starts a new conversation.")
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                family = gr.Dropdown(names, value=names[0], label="Model", elem_id=FAMILY_ID,
                                     visible=len(names) > 1, interactive=True)
                image = _TolerantImage(type="filepath", image_mode=None, label="Image", elem_id=IMAGE_ID,
                                       sources=["upload", "clipboard"])
                question = gr.Textbox(label="Question", elem_id=QUESTION_ID, lines=1, max_lines=4,
                                      placeholder="e.g. Which shapes are left of the green star?")
                with gr.Row():
                    ask_btn = gr.Button("Ask", variant="primary", elem_id=ASK_ID)
                    clear_btn = gr.Button("New conversation", elem_id=CLEAR_ID)
                error = gr.HTML(value="", visible=False, elem_id=ERROR_ID, js_on_load=None)
                chat = gr.Chatbot(label="Conversation", elem_id=HISTORY_ID, height=440,
                                  feedback_options=None)
            with gr.Column(scale=1):
                gr.Markdown("**Answer**")
                answer = gr.HTML(value="", elem_id=ANSWER_ID, js_on_load=None)
                overlay = gr.Image(label="Targets", type="pil", format="png", interactive=False,
                                   elem_id=OVERLAY_ID)
                gr.Markdown("**Legend**")
                legend = gr.HTML(value="", elem_id=LEGEND_ID, js_on_load=None, css_template=_LEGEND_CSS)
                download = gr.File(label="prediction.json", interactive=False, elem_id=JSON_ID)
        outputs = [chat, history, answer, overlay, legend, download, question, error]
        inputs = [family, image, question, history]
        ask_btn.click(ask, inputs, outputs, concurrency_id="predict", concurrency_limit=1)
        question.submit(ask, inputs, outputs, concurrency_id="predict", concurrency_limit=1)
        reset_outputs = [chat, history, answer, overlay, legend, download, error]
        image.change(reset, None, reset_outputs)
        clear_btn.click(reset, None, reset_outputs)
    return app


@lru_cache(maxsize=1)
def _tolerant_image_class():
    import gradio as gr
from gradio.events import Dependency

    class TolerantImage(gr.Image):
        """``gr.Image`` (same front end) that hands an undecodable upload's path on, so that
        the predictor's image loader reports it as an :class:`InputError` on the page instead
        of gradio failing before the handler runs."""

        is_template = True  # render with the image component's front end

        def preprocess(self, payload):
            try:
                return super().preprocess(payload)
            except Exception:  # noqa: BLE001 - the loader says what is wrong with the file
                path = getattr(payload, "path", None)
                if path is None:
                    raise
                return str(path)

    return TolerantImage


def _TolerantImage(**kw):  # noqa: N802 - a component constructor
    return _tolerant_image_class()(**kw)


def load_predictors(checkpoints: Sequence[str], *, describer: str | None = None,
                    device: str | None = None) -> dict[str, Any]:
    """Name (the checkpoint config's ``name``; a repeated one gets the directory appended) ->
    predictor of each checkpoint, all sharing one describer (a DynRefer checkpoint) if given.

    Raises:
        CheckpointError, ConfigError: a bad checkpoint, or a describer on a family that does
            not segment targets.
    """
    from .checkpoint import check_checkpoint_dir, load_predictor, read_config

    shared = None if describer is None else load_predictor(describer, device=device)
    if shared is not None and not hasattr(shared, "describe"):
        raise CheckpointError(f"--describer {describer}: not a region describer (a DynRefer checkpoint)")
    out: dict[str, Any] = {}
    for d in checkpoints:
        config, _ = read_config(check_checkpoint_dir(d))
        name = getattr(config, "name", None) or Path(d).name
        if name in out:
            name = f"{name} ({d})"
        out[name] = load_predictor(d, device=device, describer=shared)
        if hasattr(out[name], "describe") and not hasattr(out[name], "attach_describer"):
            raise CheckpointError(f"--checkpoint {d}: a region describer answers no questions; "
                                  "pass it as --describer")
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pixellm-demo",
                                description="Web demo: ask about an image, see one mask per target.")
    p.add_argument("--checkpoint", action="append", required=True, metavar="DIR",
                   help="a checkpoint directory (repeat for several models; a dropdown picks one)")
    p.add_argument("--describer", default=None, metavar="DIR",
                   help="a DynRefer checkpoint: caption every target in the legend")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Load the checkpoints and serve the demo until interrupted. Exit 2 on a bad checkpoint."""
    args = _parser().parse_args(argv)
    try:
        predictors = load_predictors(args.checkpoint, describer=args.describer, device=args.device)
    except (CheckpointError, ConfigError, InputError) as e:
        print(f"pixellm-demo: error: {e}", file=sys.stderr)
        return 2
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("pixellm-demo: error: needs gradio (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    app = build_app(predictors)
    print(f"pixellm-demo: serving {', '.join(predictors)} on http://{args.host}:{args.port}")
    app.launch(server_name=args.host, server_port=args.port, ssr_mode=False, show_error=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())