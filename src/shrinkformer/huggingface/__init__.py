"""Hugging Face translation models through shrinkformer: load, compress and retrain, translate,
pack, export back (``model.py``, ``translate.py``, ``retrain.py``)."""
