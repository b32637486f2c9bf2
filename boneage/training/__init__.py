"""Training, evaluation and model-card writing: never imported to estimate a film.

One module per model, each importing its inference half (network, constants, loader) from
``boneage``: :mod:`~boneage.training.segmenter` (``boneage train segmenter``),
:mod:`~boneage.training.direct` (``boneage train direct``), :mod:`~boneage.training.multistep`
(``boneage train multistep``, ``boneage reference build``), :mod:`~boneage.training.handcheck` with
:mod:`~boneage.training.negatives` (``boneage train handcheck``), and :mod:`~boneage.training.compare`
(``boneage compare``: learning curves of both methods); :mod:`~boneage.training.export`
(``python -m boneage.training.export``: ONNX copies of the networks beside their weights).
"""
