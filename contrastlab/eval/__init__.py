"""Evaluation of pretrained encoders."""

from contrastlab.eval.knn import knn_accuracy, knn_predict

__all__ = ["knn_accuracy", "knn_predict"]
