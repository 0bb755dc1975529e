"""Training a fast model on an output folder's labels (``autolabel train``).

``settings`` (what the user chose), ``data`` (which images and labels, by split),
``base`` (is the base a detector or a classifier), ``detector`` / ``classifier`` (how
each kind of model is fed and measured), ``session`` (model, optimizer, checkpoints),
``model_folder`` (the finished folder), ``charges`` (credits per image-epoch),
``steps`` (the Prefect tasks the ``train-detector`` flow composes) and
``preflight`` (the checks before any training, shared by the CLI and the review page).
"""
