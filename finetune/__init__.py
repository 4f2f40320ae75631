"""QLoRA domain adapters: data (``finetune.data``), reading pairs written from any knowledge base
(``finetune.reading``), training (``finetune.train``), evaluation (``finetune.evaluate``) and merging
(``finetune.merge``); ``python -m finetune`` drives them."""
