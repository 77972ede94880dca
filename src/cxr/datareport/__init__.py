"""A visual report of a dataset before training (``cxr data report``).

>>> from cxr.datasets import load_dataset
>>> from cxr.datareport import dataset_report, write_dataset_report
>>> report = dataset_report(load_dataset("../shared/datasets/nih14-sample"))
>>> write_dataset_report(report, "report/")           # report.html, report.json, PNGs

Label counts, co-occurrence, labels per image, images per patient, views, age and sex
(when the label CSV has them), prevalence per split with the leakage check, labels known
per source for merged datasets, image sizes and bit depths from file headers, a grid of
sample images per label, and the files that could not be read.
"""

from cxr.datareport.report import (
    DatasetReport,
    dataset_report,
    label_csvs,
    render_html,
    write_dataset_report,
)

__all__ = [
    "DatasetReport",
    "dataset_report",
    "label_csvs",
    "render_html",
    "write_dataset_report",
]
