"""Training objectives, one module per paper or task.

Each module holds pure loss functions (float32, shapes in the docstrings) and builders that return
a `losses.LossFn` = (model, batch) -> (loss, metrics with "loss"), the form `gimp_jax.methods`
names for each method; the pre-training objectives also build the model they train (`build`):

- `gimp`: GiMP's pre-training, L_pre = w_tri L_tri + w_rec L_rec (`make_loss`).
- `supervised`: the bag loss of `config.task` for every method's fine-tuning (`finetune_loss`)
  and the supervised gene stage (`gene_loss`).
- `survival`: discrete-time NLL-surv and the Cox partial likelihood, the risk each head gives.
- `mil`: CLAM's instance clustering loss and DSMIL's two-stream loss (`make_clam_loss`,
  `make_dsmil_loss`).
- `clip`: global symmetric InfoNCE (the BioViL/CLIP row of GiMP's Table 1).
- `mgca`: instance InfoNCE, token-wise cross-attention alignment and Sinkhorn prototype alignment.
- `refers`: multi-view (multi-slide) fusion, contrastive alignment and expression prediction.
- `itm`: binary matching of true vs shuffled image-gene pairs on |e_img - e_gene|.
- `tangle`: TANGLE's slide-expression InfoNCE and its two baselines (`tangle_loss`, `rec_loss`,
  `intra_loss`).
- `heads`: the projection heads the compared objectives add to a GiMP model
  (`build_with_objective`).
"""
