"""QLoRA domain adapters: data (``finetune.data``), training (``finetune.train``), evaluation
(``finetune.evaluate``) and merging (``finetune.merge``); ``python -m finetune`` drives them."""
