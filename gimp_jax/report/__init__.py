"""The run's report: figures (ROC, confusion, t-SNE, attention heatmaps, curves) and the page."""

from gimp_jax.report.figures import confusion_matrix_png
from gimp_jax.report.figures import loss_curves_png
from gimp_jax.report.figures import roc_curve_png
from gimp_jax.report.figures import tsne_embed
from gimp_jax.report.figures import tsne_png
from gimp_jax.report.heatmap import heatmap_png
from gimp_jax.report.heatmap import normalise
from gimp_jax.report.heatmap import rasterise
from gimp_jax.report.page import write_report
