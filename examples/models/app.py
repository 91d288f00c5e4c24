"""Model serving example: a scikit-learn digit classifier served by the model tier, a task that
calls it through `app.models.digits.predict(...)`, and one that does not.

The whole stack (gateway, a task pod, the model's replicas), wired together:

    neutrino dev examples.models.app:app

or by hand: serve the model (two replicas) and point the tasks' workers at them:

    neutrino-model-server --app examples.models.app:app --model digits --port 8601 &
    neutrino-model-server --app examples.models.app:app --model digits --port 8602 &
    NEUTRINO_MODEL_DIGITS_URL=http://127.0.0.1:8601,http://127.0.0.1:8602 \
        target/release/neutrino-orchestrator --app examples.models.app:app --python .venv/bin/python
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from neutrino import App
from pydantic import Field

app = App("models")

# A handwritten 0 from scikit-learn's digits, 8x8 pixels of 0-16: the example the docs and
# `neutrino dev` show for the tasks and the model.
ZERO = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0]
ZERO += [0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]
Image = Annotated[list[float], Field(examples=[ZERO], min_length=64, max_length=64)]
# One pixel as the model takes it: a number (not a bool or a numeric string) from 0 to 16.
Pixel = Annotated[float, Field(ge=0, le=16, strict=True)]


@app.model(name="digits", max_batch_size=32, batch_wait_ms=2)
class Digits:
    """A handwritten-digit classifier: a small MLP trained at load() on scikit-learn's bundled digits
    (1,797 8x8 images; no download). An input is one image, 64 pixel values 0-16; the output its digit.

    """

    # Open Inference Protocol metadata (GET /v2/models/digits): a batch of rows of 64 pixels in, digits out.
    inputs = [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    outputs = [{"name": "digit", "datatype": "INT64", "shape": [-1]}]
    example = ZERO  # one input, shown by the gateway's docs and `neutrino dev`

    def load(self) -> None:
        import warnings

        from sklearn.datasets import load_digits  # imported here: only model servers pay for scikit-learn
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        digits = load_digits()
        self.classifier = MLPClassifier(hidden_layer_sizes=(64,), max_iter=60, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # 60 epochs reach ~98% on the training set
            self.classifier.fit(digits.data / 16.0, digits.target)

    def validate(self, pixels: list[Pixel]) -> None:
        """Called for each input before it joins a batch: a bad one fails alone (HTTP 422). The hint
        has the server check every pixel with pydantic first (in Rust: a loop over 64 pixels here
        would cost more than the rest of the request); the length is checked here, for a message
        that says what an image is."""
        if len(pixels) != 64:
            raise ValueError(f"an image is a list of 64 pixel values, got {len(pixels)}")

    def predict(self, images: list[list[float]]) -> list[int]:
        import numpy as np

        x = np.asarray(images, dtype=np.float64) / 16.0
        return [int(d) for d in self.classifier.predict(x)]


@app.task()
def ink(pixels: Image) -> float:
    """How much of the image is inked, from 0 to 1: a plain task, no model involved."""
    return round(sum(pixels) / (16 * len(pixels)), 4)


@app.task()
def classify_digit(pixels: Image) -> int:
    """Ask the `digits` model (its replicas from NEUTRINO_MODEL_DIGITS_URL) which digit an image shows."""
    result: int = app.models.digits.predict(pixels)
    return result


@app.task()
async def classify_digits(images: Annotated[list[Image], Field(examples=[[ZERO, ZERO]])]) -> list[int]:
    """The same from an async task, many images at once: the calls meet in the model server's batcher."""
    return list(await asyncio.gather(*(app.models.digits.predict(image) for image in images)))
