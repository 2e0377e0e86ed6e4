"""The ``pretrain`` stage: the backbone initialisation that ``finetune`` starts from.

One source per run (``pretrain.source``): ``scratch`` (the architecture's own initialisation),
``imagenet`` and ``kinetics`` (torchvision weights fetched by :mod:`.external`, inflated or
adapted by the mapping each backbone declares beside its builder, read by :mod:`.sources`),
``synthetic`` (covariate regression and/or self-supervision on the synthesize stage's volumes)
and ``ssl`` (SimCLR and/or masked reconstruction on the real upstream pool), see
:mod:`.objectives`, trained in Lightning by :mod:`.training`. Every run writes
``models/pretrained/`` (``backbone.safetensors`` + ``meta.json``) and the ridge age probe of
:mod:`.probe` to ``metrics/pretrain.json``; :func:`neurotransfer.stages.pretrain.run_pretrain`
orchestrates.
"""
