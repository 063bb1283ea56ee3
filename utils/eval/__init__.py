"""The evaluation wing: predictions against ground truth.

Owns ``evaluate(model, loader, config) -> EvalResult`` (``evaluator``), AP, P/R and the confusion matrix
(``metrics``), the pycocotools bridge (``coco``), the VOC devkit rule (``voc_eval``), val's printed table and speed
lines (``report``), --save-txt/--save-json and batch plots (``outputs``), every figure (``plots``) and
``results.csv`` by column name (``report`` too), mAP and speed over image sizes (``study``), and how sure a
change in VOC AP50 is (``bootstrap``).
"""
