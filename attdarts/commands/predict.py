"""`attdarts predict`: the most probable classes of image files, by a trained run or an exported
model."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("predict")
@click.argument("model", metavar="MODEL_OR_RUN")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.option("-k", "--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many classes to show per image (at most the model's class count).")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list: one object per image with its classes' index, name and "
                   "probability.")
def predict(model: str, images: tuple[str, ...], top_k: int, as_json: bool) -> None:
    """Print the TOP-K most probable classes of each IMAGE with their probabilities.

    MODEL_OR_RUN is a training run directory (its last.pt), a training checkpoint (.pt), or a
    file written by `attdarts export-model` (.onnx, .pt2). An IMAGE is any file Pillow reads; it
    is resized and centre-cropped to the model's input size and normalised as the model was
    trained (the checkpoint or the exported file's metadata says how). Every image is read
    before the model runs: an unreadable one stops the command with one line naming it.
    """
    from attdarts import api
    from attdarts.runs.checkpoints import CheckpointError
    from attdarts.runs.predict import PredictError

    try:
        predictions = api.predict(model, [Path(image) for image in images], top_k=top_k)
    except (PredictError, CheckpointError) as error:
        raise click.ClickException(str(error)) from None
    if any(score.name is None for prediction in predictions for score in prediction.top):
        click.echo(f"attdarts predict: {model} has no class names; classes are shown by index",
                   err=True)
    if as_json:
        records = [{"image": prediction.image,
                    "top": [{"index": score.index, "class": score.name,
                             "probability": score.probability} for score in prediction.top]}
                   for prediction in predictions]
        click.echo(json.dumps(records, indent=2))
        return
    for prediction in predictions:
        shown = ", ".join(f"{_name(score)} {score.probability:.3f}" for score in prediction.top)
        click.echo(f"{prediction.image}: {shown}")


def _name(score) -> str:
    return score.name if score.name is not None else f"class {score.index}"
