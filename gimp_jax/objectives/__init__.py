"""Training objectives of the compared methods, one module per paper.

Each module holds pure loss functions (float32, shapes in the docstrings) and a builder
`make_*_loss(<its config block>, ...) -> LossFn` with LossFn = (model, batch) -> (loss, metrics
with "loss"), the form `gimp_jax.methods` registers:

- `mil`: CLAM's instance clustering loss (smooth top-1 SVM or cross-entropy) and DSMIL's two-stream
  loss, for fine-tuning the MIL baselines.
- `clip`: global symmetric InfoNCE (the BioViL/CLIP role of GiMP's Table 1).
- `mgca`: instance InfoNCE, token-wise cross-attention alignment and Sinkhorn prototype alignment.
- `refers`: multi-view (multi-slide) fusion, contrastive alignment and expression prediction.
- `itm`: binary matching of true vs shuffled image-gene pairs on |e_img - e_gene|.
"""
