"""The compression workflow over any model family's adapter: the method vocabulary (``methods``),
retraining with the compression in the loop (``retrain``), budgets (``sensitivity``, the knapsack in
``allocate``, stages from an allocation in ``budget``), the teacher's translations (``teacher``) and
the pipeline that retrains, packs and scores (``pipeline``)."""
